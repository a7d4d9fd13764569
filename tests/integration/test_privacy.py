"""A customer's rights through the real stack: the export holds their consent proof, the erasure leaves
nothing but salted hashes, a replay of their old events brings nothing back, their address is never
mailed again, each consumer erases again at the tombstone, and retention ages the reports' history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from lifecycle.db.retention import PRUNE_EMAIL_EVENTS, PRUNE_SENDS, prune
from lifecycle.events import parse_event
from lifecycle.kafka import make_producer, read_topic
from lifecycle.privacy import CUSTOMER_TABLES, publish_tombstones
from lifecycle.scenario import ScenarioRunner

pytestmark = pytest.mark.integration
HERE = Path(__file__)
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def _rows_of(runner: ScenarioRunner, customer_id: str) -> dict[str, int]:
    async with runner.engine.connect() as conn:
        return {table: int((await conn.execute(text(f"SELECT count(*) FROM {table} WHERE customer_id = :id"),
                                               {"id": customer_id})).scalar_one())
                for table in CUSTOMER_TABLES}


async def _tombstones(runner: ScenarioRunner, topic: str, customer_id: str) -> int:
    return sum(1 for r in await read_topic(runner.settings, topic) if r.key == customer_id.encode() and r.value is None)


async def test_export_then_erase_leaves_only_hashes(runner: ScenarioRunner) -> None:
    await runner.configure(HERE, {})
    await runner.reset(START)
    signed_up = await runner._event({
        "type": "customer_signed_up", "customer_id": "priv-1",
        "traits": {"email": "priv@example.com", "first_name": "Pia", "consent": "opted_in"},
        "origin": {"source": "import", "ip": "203.0.113.7", "user_agent": "Shop importer"}})
    assert (await runner.http.post("/v1/events", json=signed_up)).status_code == 202
    await runner.watch.advance_to(START + timedelta(minutes=1))
    assert [(d.to, d.journey) for d in runner.new_emails()] == [("priv@example.com", "prospect_welcome")]

    # the unsubscribe link, from a browser: its address and user agent are the proof kept
    header = str(runner.delivered[-1].message["List-Unsubscribe"]).strip("<>")
    answer = await runner.http.post(header, content=b"List-Unsubscribe=One-Click",
                                    headers={"Content-Type": "application/x-www-form-urlencoded",
                                             "User-Agent": "Mail/1.0 (one-click)", "Authorization": ""})
    assert answer.status_code == 200
    await runner.watch.wait_idle()

    answer = await runner.http.get("/v1/admin/customers/priv-1/export")
    assert answer.status_code == 200, answer.text
    exported = answer.json()
    assert exported["customer_id"] == "priv-1" and exported["profile"]["email"] == "priv@example.com"
    proof = [(f["kind"], f.get("value"), f["source"], f.get("ip"), f.get("user_agent"))
             for f in exported["consent_proof"]]
    assert proof == [("trait", "opted_in", "import", "203.0.113.7", "Shop importer"),
                     ("unsubscribed", None, "link", "127.0.0.1", "Mail/1.0 (one-click)")]
    [send] = exported["sends"]
    assert send["to_address"] == "priv@example.com" and send["status"] == "sent"
    assert "Subject:" in send["message"]  # the stored email itself
    assert exported["journey_runs"] and exported["processed_events"]

    erased = await runner.http.delete("/v1/admin/customers/priv-1")
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["removed"]["customers"] == 1 and body["removed"]["sends"] == 1
    assert body["removed"]["addresses_suppressed"] == 1
    assert body["tombstones"] == [runner.settings.events_topic, runner.settings.triggers_topic]
    await runner.watch.wait_idle()

    assert set((await _rows_of(runner, "priv-1")).values()) == {0}
    assert (await runner.http.get("/v1/admin/customers/priv-1/export")).status_code == 404
    assert (await runner.http.get("/v1/customers/priv-1")).status_code == 404
    async with runner.engine.connect() as conn:
        suppressions = (await conn.execute(text("SELECT address, reason FROM suppressions"))).all()
        erasures = (await conn.execute(text("SELECT customer_hash FROM erasures"))).scalars().all()
    assert [reason for _, reason in suppressions] == ["erased"]
    assert suppressions[0][0].startswith("sha256:") and "priv" not in suppressions[0][0].lower()
    assert len(erasures) == 1 and "priv" not in erasures[0]
    for topic in (runner.settings.events_topic, runner.settings.triggers_topic):
        assert await _tombstones(runner, topic, "priv-1") == 1

    # a replay of the topic (their sign-up as first received) brings nothing back
    old = parse_event({**signed_up, "origin": None}, START, lambda: "unused")
    producer = make_producer(runner.settings)
    await producer.start()
    try:
        await producer.send_and_wait(runner.settings.events_topic, old.to_message(), key=b"priv-1")
    finally:
        await producer.stop()
    await runner.watch.wait_idle()
    assert set((await _rows_of(runner, "priv-1")).values()) == {0}

    # the address, under another id and in another case, is never mailed again
    again = await runner._event({"type": "customer_signed_up", "customer_id": "priv-2",
                                 "traits": {"email": "priv@example.COM", "consent": "opted_in"}})
    assert (await runner.http.post("/v1/events", json=again)).status_code == 202
    await runner.watch.advance_to(START + timedelta(minutes=3))
    assert runner.new_emails() == []
    async with runner.engine.connect() as conn:
        skipped = (await conn.execute(text("SELECT status, reason FROM sends WHERE customer_id = 'priv-2'"))).all()
    assert [(row.status, row.reason) for row in skipped] == [("skipped", "suppressed:erased")]


async def test_each_consumer_erases_again_at_the_tombstone(runner: ScenarioRunner) -> None:
    """What an event already on its way wrote after the erasure goes when the tombstone is read."""
    await runner.configure(HERE, {})
    await runner.reset(START)
    event = await runner._event({"type": "customer_signed_up", "customer_id": "priv-3",
                                 "traits": {"email": "p3@example.com", "consent": "pending"}})
    assert (await runner.http.post("/v1/events", json=event)).status_code == 202
    await runner.watch.advance_to(START + timedelta(minutes=1))
    rows = await _rows_of(runner, "priv-3")
    assert rows["customers"] == 1 and rows["journey_runs"] == 1  # the double opt-in
    producer = make_producer(runner.settings)
    await producer.start()
    try:
        await publish_tombstones(producer, [runner.settings.events_topic, runner.settings.triggers_topic], "priv-3")
    finally:
        await producer.stop()
    await runner.watch.wait_idle()
    assert set((await _rows_of(runner, "priv-3")).values()) == {0}


async def test_retention_ages_email_events_and_sends_on_the_services_clock(runner: ScenarioRunner) -> None:
    await runner.configure(HERE, {})
    await runner.reset(START)
    async with runner.engine.begin() as conn:
        run_id = (await conn.execute(text(
            "INSERT INTO journey_runs (customer_id, journey, status, entry_key, started_at, context, clicks)"
            " VALUES ('r-1', 'win_back', 'exited', 'k', :t, '{}', '[]') RETURNING run_id"), {"t": START})).scalar_one()
        for step, (days, status) in enumerate(((400, "sent"), (10, "sent"), (400, "sending")), start=1):
            at = START - timedelta(days=days)
            await conn.execute(text(
                "INSERT INTO sends (run_id, step, customer_id, journey, marketing, status, message_id, due_at,"
                " created_at, attempts, links, lease_until)"
                " VALUES (:r, :step, 'r-1', 'win_back', true, :s, :m, :t, :t, 1, '[]', :lease)"),
                {"r": run_id, "step": step, "s": status, "m": f"m-{days}-{status}", "t": at,
                 "lease": START + timedelta(days=1) if status == "sending" else None})
            await conn.execute(text(
                "INSERT INTO email_events (event_id, customer_id, message_id, kind, occurred_at)"
                " VALUES (:e, 'r-1', :m, 'opened', :t)"), {"e": f"e-{days}-{status}", "m": f"m-{days}", "t": at})
    # the stager's housekeeping does this every few seconds; here once, on the virtual clock
    assert await prune(runner.engine, "sends", 395, now=START) == 1  # the one in flight stays
    assert await prune(runner.engine, "email_events", 395, now=START) == 2
    async with runner.engine.connect() as conn:
        left = (await conn.execute(text("SELECT status, created_at FROM sends WHERE customer_id = 'r-1'"
                                        " ORDER BY created_at"))).all()
        opens = (await conn.execute(text("SELECT count(*) FROM email_events WHERE customer_id = 'r-1'"))).scalar_one()
        await conn.execute(text("SET enable_seqscan = off"))  # what the planner does once the tables are big
        plans = ["\n".join(row[0] for row in (await conn.execute(text(f"EXPLAIN {statement.text}"),
                                                                {"days": 395, "n": 5, "now": START})).all())
                 for statement in (PRUNE_EMAIL_EVENTS, PRUNE_SENDS)]
    assert [row.status for row in left] == ["sending", "sent"] and opens == 1
    assert "Index Scan using email_events_retention " in plans[0] and "Index Scan using sends_retention " in plans[1]
    with pytest.raises(ValueError):
        await prune(runner.engine, "sends", 395)
    async with runner.engine.begin() as conn:  # the send made "in flight" above would hold the pipeline busy
        await conn.execute(text("DELETE FROM sends WHERE customer_id = 'r-1'"))
