"""SIGTERM under load: every service stops cleanly, and after a restart nothing is lost or sent twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from devstack import SERVICES, processes, start_services
from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration
START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)
CUSTOMERS = 300


async def test_sigterm_under_load_loses_nothing_and_sends_nothing_twice(pipeline: Settings,
                                                                       runner: ScenarioRunner) -> None:
    await runner.configure(Path(__file__), {})
    await runner.reset(START)
    # explicit event ids: a client that retries after a cut connection sends the same events again
    batches = [
        {"events": [{"event_id": f"term-{i}", "type": "customer_signed_up", "customer_id": f"c-term-{i}",
                     "occurred_at": START.isoformat(),
                     "traits": {"email": f"term{i}@example.com", "consent": "opted_in"}}
                    for i in range(start, start + 25)]}
        for start in range(0, CUSTOMERS, 25)
    ]

    async def post_all() -> None:
        for batch in batches:
            for _ in range(600):  # a client's retry loop while ingest restarts
                try:
                    response = await runner.http.post("/v1/events", json=batch)
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
                    continue
                if response.status_code == 202:
                    break
                assert response.status_code == 503, response.text
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("ingest never came back")

    posting = asyncio.create_task(post_all())
    await asyncio.sleep(0.3)  # work is in flight in every service
    # every service gets SIGTERM mid-stream
    stopped = await asyncio.gather(*(asyncio.to_thread(processes.stop, pipeline.run_dir, name, 20.0)
                                     for name in SERVICES))
    assert all(stopped)
    for name in SERVICES:
        log = processes.log_file(pipeline.run_dir, name).read_text()
        ending = {"ingest": "ingest stopped", "stager": "stager stopping",
                  "dispatcher": "dispatcher stopping"}[name]
        assert ending in log[-3000:], log[-3000:]
        assert "Traceback" not in log[-4000:], log[-4000:]
    await asyncio.to_thread(start_services, pipeline)
    await posting
    await runner.watch.wait_idle(timeout=180)
    async with runner.engine.connect() as conn:
        applied = (await conn.execute(text(
            "SELECT count(*) FROM processed_events WHERE customer_id LIKE 'c-term-%'"))).scalar()
    assert applied == CUSTOMERS
    delivered = Counter(str(m["To"]) for m in read_messages(mail_dir(pipeline))
                        if str(m["X-Lifecycle-Journey"]) == "prospect_welcome")
    assert len(delivered) == CUSTOMERS
    assert set(delivered.values()) == {1}
