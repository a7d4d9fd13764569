"""Nothing published from a refused batch, nothing applied twice, nothing sent twice: on the real components."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from devstack import processes, start_services
from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.clock import VirtualClock
from lifecycle.events import Event
from lifecycle.kafka import make_consumer
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from services.stager.worker import StagerStore, rule_config
from tests.support.kafka import end_offsets

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


def _signup(customer_id: str, email: str, event_id: str) -> dict[str, Any]:
    return {"event_id": event_id, "type": "customer_signed_up", "customer_id": customer_id,
            "occurred_at": START.isoformat(), "traits": {"email": email, "consent": "opted_in"}}


def _emails_to(settings: Settings, address: str) -> list[Any]:
    return [m for m in read_messages(mail_dir(settings)) if str(m["To"]) == address]


@pytest.fixture
async def fresh(runner: ScenarioRunner) -> AsyncIterator[ScenarioRunner]:
    await runner.configure(HERE, {})
    await runner.reset(START)
    yield runner


async def test_a_batch_with_one_bad_event_publishes_nothing(pipeline: Settings, fresh: ScenarioRunner) -> None:
    before = await end_offsets(pipeline, pipeline.events_topic)
    batch = {"events": [_signup(f"c-batch-{i}", f"b{i}@example.com", f"batch-{i}") for i in range(5)]}
    batch["events"][3]["properties"] = {"unexpected": 1}
    response = await fresh.http.post("/v1/events", json=batch)
    assert response.status_code == 422
    assert [e["index"] for e in response.json()["errors"]] == [3]
    assert await end_offsets(pipeline, pipeline.events_topic) == before
    await fresh.watch.wait_idle()
    assert read_messages(mail_dir(pipeline)) == []


async def test_redelivery_after_a_stager_crash_changes_nothing_twice(pipeline: Settings,
                                                                   fresh: ScenarioRunner) -> None:
    run_dir = pipeline.run_dir
    assert processes.stop(run_dir, "stager")
    response = await fresh.http.post("/v1/events", json=_signup("c-crash-1", "crash@example.com", "crash-1"))
    assert response.status_code == 202
    # with the stager down, the pipeline is not idle: the event waits in Kafka
    look = await fresh.watch.look()
    assert "1 events not yet consumed by the stager" in look.busy
    # Play the stager up to the crash: read the event in its group, commit the database
    # transaction, then die before the offset commit.
    consumer = make_consumer(pipeline, pipeline.events_topic, pipeline.stager_group)
    await consumer.start()
    events: list[Event] = []
    try:
        for _ in range(100):
            batch = await consumer.getmany(timeout_ms=200)
            events += [Event.from_message(m.value) for msgs in batch.values() for m in msgs]
            if events:
                break
        store = StagerStore(fresh.engine, VirtualClock(fresh.engine), rule_config(pipeline))
        assert await store.apply_events(events) == 1
    finally:
        await consumer.stop()  # no commit: the crash
    await asyncio.to_thread(start_services, pipeline)
    await fresh.watch.wait_idle()
    async with fresh.engine.connect() as conn:
        handled_triggers = (await conn.execute(text(
            "SELECT count(*) FROM processed_triggers WHERE trigger_id LIKE 'crash-1:%'"))).scalar()
        applied = (await conn.execute(text(
            "SELECT count(*) FROM processed_events WHERE event_id = 'crash-1'"))).scalar()
    assert applied == 1
    assert handled_triggers == 3  # signed_up, consent_changed, stage_changed: once each
    delivered = _emails_to(pipeline, "crash@example.com")
    assert [(m["X-Lifecycle-Journey"], m["X-Lifecycle-Step"]) for m in delivered] == [("prospect_welcome", "1")]


async def _black_hole() -> tuple[asyncio.Server, int]:
    """An SMTP server that accepts connections and never answers: a send stays in flight."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_dispatcher_killed_mid_send_sends_each_step_exactly_once(pipeline: Settings,
                                                                        fresh: ScenarioRunner) -> None:
    server, port = await _black_hole()
    try:
        # a lease long enough for one whole attempt (2 x 3 s + 5 s): the send starts, and hangs
        await fresh.configure(HERE, {"smtp_port": port, "smtp_timeout_seconds": 3, "send_lease_seconds": 12})
        response = await fresh.http.post("/v1/events", json=_signup("c-kill-1", "kill@example.com", "kill-1"))
        assert response.status_code == 202
        async with fresh.engine.connect() as conn:
            for _ in range(300):
                in_flight = (await conn.execute(text("SELECT count(*) FROM sends WHERE status = 'sending'"))).scalar()
                if in_flight:
                    break
                await asyncio.sleep(0.05)
        assert in_flight == 1, "the send never reached SMTP"
        pid = processes.read_pid(pipeline.run_dir, "dispatcher")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        processes.wait_gone(pid, 10)
    finally:
        server.close()
    # the restarted dispatcher takes the send over once its lease ran out
    await fresh.configure(HERE, {"smtp_timeout_seconds": 3, "send_lease_seconds": 12}, drain=False)
    await fresh.watch.wait_idle()
    async with fresh.engine.connect() as conn:
        rows = (await conn.execute(text("SELECT status, message_id FROM sends WHERE customer_id = 'c-kill-1'"))).all()
    delivered = _emails_to(pipeline, "kill@example.com")
    assert len(rows) == 1 and rows[0].status == "sent"
    assert [m["Message-ID"] for m in delivered] == [rows[0].message_id]
    # and nothing more comes later
    await asyncio.sleep(3)
    await fresh.watch.wait_idle()
    assert len(_emails_to(pipeline, "kill@example.com")) == 1
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{pipeline.dispatcher_port}/metrics")).text
    assert "lifecycle_dispatcher_sends_reclaimed_total 1.0" in metrics
