"""`lifecycle report`: what each journey, step and variant sent and earned, and each campaign and variant
(a campaign's journey is `campaign:<name>`: its rows have `campaign` set and one step)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.core.campaigns import campaign_of
from lifecycle.core.stats import rate, two_proportion_test

NO_VARIANT = "-"


@dataclass
class ReportRow:
    journey: str
    step: int
    variant: str
    sent: int = 0
    skipped: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    bounced: int = 0
    opened: int = 0
    clicked: int = 0
    unsubscribed: int = 0
    converted: int = 0
    revenue: float = 0.0
    click_rate: float | None = None
    conversion_rate: float | None = None
    lift: float | None = None  # conversion rate against the step's first variant
    p_value: float | None = None
    verdict: str = ""
    campaign: str | None = None  # the campaign's name, on a campaign's row

    def __post_init__(self) -> None:
        self.campaign = campaign_of(self.journey)


QUERY = """
WITH s AS (
    SELECT journey, step, coalesce(variant, '-') AS variant, status, reason, message_id, send_id
    FROM sends WHERE created_at >= :since AND (CAST(:journey AS text) IS NULL OR journey = :journey)
), e AS (
    SELECT message_id, kind FROM email_events WHERE message_id IS NOT NULL GROUP BY message_id, kind
), o AS (
    SELECT attributed_send_id, count(*) AS orders, sum(value) AS revenue FROM orders
    WHERE NOT voided AND attributed_send_id IS NOT NULL GROUP BY attributed_send_id
)
SELECT s.journey, s.step, s.variant,
    count(*) FILTER (WHERE s.status = 'sent') AS sent,
    count(*) FILTER (WHERE s.status = 'failed' OR EXISTS (
        SELECT 1 FROM e WHERE e.message_id = s.message_id AND e.kind = 'bounced')) AS bounced,
    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM e WHERE e.message_id = s.message_id AND e.kind = 'opened'))
        AS opened,
    count(*) FILTER (WHERE EXISTS (SELECT 1 FROM e WHERE e.message_id = s.message_id AND e.kind = 'clicked'))
        AS clicked,
    count(*) FILTER (WHERE EXISTS (
        SELECT 1 FROM e WHERE e.message_id = s.message_id AND e.kind = 'unsubscribed')) AS unsubscribed,
    coalesce(sum(o.orders), 0) AS converted,
    coalesce(sum(o.revenue), 0) AS revenue
FROM s LEFT JOIN o ON o.attributed_send_id = s.send_id
GROUP BY s.journey, s.step, s.variant
ORDER BY s.journey, s.step, s.variant
"""

SKIPS = """
SELECT journey, step, coalesce(variant, '-') AS variant, reason, count(*) AS n FROM sends
WHERE status = 'skipped' AND created_at >= :since AND (CAST(:journey AS text) IS NULL OR journey = :journey)
GROUP BY journey, step, variant, reason
"""


async def build_report(engine: AsyncEngine, since: datetime, journey: str | None = None) -> list[ReportRow]:
    params = {"since": since, "journey": journey}
    async with engine.connect() as conn:
        rows = (await conn.execute(text(QUERY), params)).all()
        skips = (await conn.execute(text(SKIPS), params)).all()
    report = {
        (r.journey, r.step, r.variant): ReportRow(
            r.journey, r.step, r.variant, sent=r.sent, bounced=r.bounced, opened=r.opened, clicked=r.clicked,
            unsubscribed=r.unsubscribed, converted=int(r.converted), revenue=float(r.revenue),
        )
        for r in rows
    }
    for s in skips:
        row = report.setdefault((s.journey, s.step, s.variant), ReportRow(s.journey, s.step, s.variant))
        reason = str(s.reason).split(":")[0]
        row.skipped += s.n
        row.skipped_by_reason[reason] = row.skipped_by_reason.get(reason, 0) + s.n
    # journeys first, then campaigns
    ordered = sorted(report.values(), key=lambda r: (r.campaign is not None, r.journey, r.step, r.variant))
    for row in ordered:
        row.click_rate = rate(row.clicked, row.sent)
        row.conversion_rate = rate(row.converted, row.sent)
    _compare_variants(ordered)
    return ordered


def _compare_variants(rows: list[ReportRow]) -> None:
    """Each variant against the step's first one (the control), on conversions per email sent."""
    steps: dict[tuple[str, int], list[ReportRow]] = {}
    for row in rows:
        if row.variant != NO_VARIANT:
            steps.setdefault((row.journey, row.step), []).append(row)
    for variants in steps.values():
        control, *others = variants
        control.verdict = "control"
        for row in others:
            result = two_proportion_test(control.converted, control.sent, row.converted, row.sent)
            row.lift, row.p_value = result.lift, result.p_value
            row.verdict = "significant" if result.significant else "not significant yet"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


COLUMNS = ("journey", "step", "variant", "sent", "skipped", "bounced", "opened", "clicked", "unsubscribed",
           "converted", "revenue", "click rate", "conversion rate", "lift", "p-value", "verdict")


def _cells(row: ReportRow) -> list[str]:
    skipped = str(row.skipped)
    if row.skipped_by_reason:
        skipped += " (" + ", ".join(f"{k} {v}" for k, v in sorted(row.skipped_by_reason.items())) + ")"
    name = f"campaign {row.campaign}" if row.campaign is not None else row.journey
    step = "-" if row.campaign is not None else str(row.step)
    return [name, step, row.variant, str(row.sent), skipped, str(row.bounced), str(row.opened),
            str(row.clicked), str(row.unsubscribed), str(row.converted), f"{row.revenue:.2f}",
            _percent(row.click_rate), _percent(row.conversion_rate),
            "" if row.lift is None else f"{row.lift:+.1%}",
            "" if row.p_value is None else f"{row.p_value:.3f}", row.verdict]


def render(rows: list[ReportRow], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(r) for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows(_cells(r) for r in rows)
        return out.getvalue()
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Journeys and campaigns: sends, engagement and revenue (opens are indicative: privacy proxies"
                        " open mail)")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name not in ("journey", "variant", "skipped", "verdict") else "left")
    for row in rows:
        table.add_row(*_cells(row))
    console = Console(record=True, width=220)
    with console.capture() as capture:
        console.print(table if rows else "Nothing sent in this period.")
    return capture.get()
