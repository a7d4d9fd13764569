"""campaign_seconds, campaign_raw_seconds, campaign_ratio: a campaign to CAMPAIGN_CUSTOMERS customers, from
its start to the last send, against the raw SMTP ceiling for as many messages.

The customers are written straight into `customers` by one INSERT … SELECT (opted-in profiles with an
address, a first name and one of four time zones: a campaign reads nothing else of them), and the campaign
is saved by the services' code (lifecycle/campaign_catalog.py) with an instant `send_at` a few seconds
ago, so everyone is due at its start. Then one dispatcher starts: the figure runs from its first /healthz
answer (its loop starts the campaign right after) to the last arrival in the sink, and includes writing
the audience as runs (one INSERT … SELECT) and claiming, composing, recording and sending every email.

The ceiling is a plain aiosmtplib loop over smtp_pool_size connections sending as many messages right
after, cycling over the first CAMPAIGN_RAW_SAMPLE the dispatcher composed (from `sends`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from bench.common import CAMPAIGN_CUSTOMERS, CAMPAIGN_RAW_SAMPLE, Results, Row, Scale, say
from bench.dispatcher import deliver_all, raw_smtp
from bench.stack import BenchStack, reset
from lifecycle.campaign_catalog import check_campaign, save
from lifecycle.journey_catalog import definition_text
from lifecycle.templates import Templates

ZONES = ("Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC")

_CUSTOMERS_SQL = (
    "INSERT INTO customers (customer_id, state, stage, consent, email, orders_count, total_spent, updated_at)"
    " SELECT 'cmp-' || n, jsonb_build_object('traits', jsonb_build_object("
    "  'email', 'cmp-' || n || '@example.com', 'first_name', 'Bench', 'consent', 'opted_in',"
    "  'timezone', (CAST(:zones AS text[]))[n % 4 + 1])),"
    " 'prospect', 'opted_in', 'cmp-' || n || '@example.com', 0, 0, now()"
    " FROM generate_series(1, :n) AS n"
)


async def run(stack: BenchStack, scale: Scale, results: Results) -> None:
    settings = stack.settings
    count = scale.count(CAMPAIGN_CUSTOMERS, 20)
    connections = settings.smtp_pool_size
    say(f"campaign: {count} customers in PostgreSQL and a campaign due now to all of them; one dispatcher starts"
        f" it and sends it; then the raw baseline, {count} messages by a plain aiosmtplib loop over {connections}"
        " connections")
    stack.only((), phase="campaign")
    await reset(stack)
    engine = await stack.database()
    templates = Templates(settings.journeys_dir, settings.default_locale)
    value = {"name": "bench_sale", "category": "offers", "segment": "never_ordered", "template": "winter_sales",
             "send_at": (datetime.now(UTC) - timedelta(seconds=5)).isoformat()}
    campaign = check_campaign(value, templates, settings.segments_dir)
    async with engine.begin() as conn:
        await conn.execute(text(_CUSTOMERS_SQL), {"n": count, "zones": list(ZONES)})
        await save(conn, campaign, definition_text(value), "api", "bench", datetime.now(UTC))
    delivered = await deliver_all(stack, count, None, "campaign")
    seconds = count / delivered.from_ready
    say(f"  {seconds:.1f} s from the start to the last send ({delivered.from_ready:.1f} emails/s)")
    sent, raw_seconds = await raw_smtp(stack, connections, total=count, sample=CAMPAIGN_RAW_SAMPLE)
    say(f"  {raw_seconds:.1f} s for {sent} messages by the raw loop ({sent / raw_seconds:.1f} emails/s)")
    results.set("campaign_seconds", seconds)
    results.set("campaign_raw_seconds", raw_seconds)
    results.set("campaign_ratio", raw_seconds / seconds)
    results.rows.append(Row(f"campaign to {count} customers, emails/s from its start to the last send",
                            delivered.from_ready, sent / raw_seconds, "/s"))
    if delivered.duplicates:
        results.notes.append(f"campaign phase: {delivered.duplicates} duplicate deliveries")
