"""Bounces and complaints as mail reports them, through the whole pipeline.

Real sends go out with their own VERP envelope sender (the sink keeps it); the tests then build the
reports a mailbox provider would send back (DSNs and ARF reports, with the email package) and hand them
over SMTP to `lifecycle bounces`, started here as its own process beside the stack.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from devstack import service_env, wait_http_ok
from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from lifecycle.verp import bounce_address
from tests.support.kafka import end_offsets
from tests.support.reports import arf, dsn, send_report

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


@pytest.fixture(scope="module")
def bounces(pipeline: Settings) -> Iterator[Settings]:
    """`lifecycle bounces` on the stack's settings; stopped with SIGTERM at the end, which it must take cleanly."""
    log_path = Path(pipeline.run_dir) / "logs" / "bounces.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "bounces"], env=service_env(pipeline),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http_ok(f"http://127.0.0.1:{pipeline.bounces_metrics_port}/healthz", timeout=60, log=log_path)
        yield pipeline
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=40)
    assert code == 0, f"lifecycle bounces did not stop cleanly (exit {code}); see {log_path}"


@pytest.fixture
async def fresh(runner: ScenarioRunner, bounces: Settings) -> ScenarioRunner:
    await runner.configure(HERE, {})
    await runner.reset(START)
    return runner


async def _signup(runner: ScenarioRunner, customer_id: str, email: str) -> None:
    response = await runner.http.post("/v1/events", json={
        "event_id": f"signup-{customer_id}", "type": "customer_signed_up", "customer_id": customer_id,
        "occurred_at": START.isoformat(), "traits": {"email": email, "consent": "opted_in"}})
    assert response.status_code == 202, response.text


async def _rows(runner: ScenarioRunner, sql: str, **params: Any) -> list[Any]:
    async with runner.engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def _sent(runner: ScenarioRunner, customer_id: str) -> list[Any]:
    return await _rows(runner, "SELECT send_id, step, status, message_id FROM sends WHERE customer_id = :c"
                       " AND status = 'sent' ORDER BY step", c=customer_id)


async def _suppressed(runner: ScenarioRunner, customer_id: str, address: str) -> tuple[str | None, str | None]:
    [(customer,)] = await _rows(runner, "SELECT suppressed FROM customers WHERE customer_id = :c", c=customer_id)
    listed = await _rows(runner, "SELECT reason FROM suppressions WHERE address = :a", a=address)
    return customer, listed[0][0] if listed else None


def _envelope_sender(settings: Settings, address: str) -> str:
    """The MAIL FROM of the one email the sink took for `address`."""
    [message] = [m for m in read_messages(mail_dir(settings)) if str(m["To"]) == address][-1:]
    return str(message["X-Sink-Mail-From"])


async def _report(settings: Settings, raw: bytes, rcpt: str) -> aiosmtplib.SMTPResponse | Exception:
    return await send_report("127.0.0.1", settings.bounces_port, raw, [rcpt])


async def _metric(settings: Settings, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{settings.bounces_metrics_port}/metrics")).text
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


async def test_a_dsn_at_a_sends_verp_address_suppresses_the_customer(bounces: Settings,
                                                                     fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-hard", "ana@example.com")
    await fresh.watch.wait_idle()
    [send] = await _sent(fresh, "c-hard")
    verp = _envelope_sender(bounces, "ana@example.com")
    assert verp == bounce_address(SigningKeys.from_settings(bounces), send.send_id, "shop.example")
    before = await _metric(bounces, "lifecycle_bounces_reports_total", outcome="hard_bounce")

    answer = await _report(bounces, dsn("ana@example.com", verp, message_id=send.message_id), verp)
    assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    await fresh.watch.wait_idle()
    assert await _suppressed(fresh, "c-hard", "ana@example.com") == ("bounced", "bounced")
    # the same report delivered twice counts once
    again = await _report(bounces, dsn("ana@example.com", verp, message_id=send.message_id), verp.upper())
    assert isinstance(again, aiosmtplib.SMTPResponse) and again.code == 250
    await fresh.watch.wait_idle()
    assert await _rows(fresh, "SELECT kind, message_id, journey, step FROM email_events WHERE customer_id = 'c-hard'") \
        == [("bounced", send.message_id, "prospect_welcome", 1)]
    assert await _metric(bounces, "lifecycle_bounces_reports_total", outcome="hard_bounce") - before == 2

    # the journey's next email is not sent: the address is suppressed
    await fresh.watch.advance_to(START + timedelta(days=2))
    steps = await _rows(fresh, "SELECT step, status, reason FROM sends WHERE customer_id = 'c-hard' ORDER BY step")
    assert [(s.step, s.status) for s in steps][:2] == [(1, "sent"), (2, "skipped")]
    assert str(steps[1].reason).startswith("suppressed:bounced")


async def test_soft_bounces_suppress_after_three_sends_in_a_row(bounces: Settings, fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-soft", "bob@example.com")
    await fresh.watch.wait_idle()
    # the welcome series' three emails (day 0, 1 and 3), each reported delayed then failed for a full mailbox
    for number, day in enumerate((0, 1, 3), start=1):
        await fresh.watch.advance_to(START + timedelta(days=day, minutes=1))
        sent = await _sent(fresh, "c-soft")
        assert len(sent) == number
        verp = bounce_address(SigningKeys.from_settings(bounces), sent[-1].send_id, "shop.example")
        for action, status in (("delayed", "4.4.1"), ("failed", "4.2.2")):
            answer = await _report(bounces, dsn("bob@example.com", verp, action=action, status=status), verp)
            assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
        await fresh.watch.wait_idle()
        expected = (None, None) if number < 3 else ("bounced", "bounced")
        assert await _suppressed(fresh, "c-soft", "bob@example.com") == expected, f"after send {number}"
    # one soft bounce per send, none of them a bounce of the email in the report
    assert [row.kind for row in await _rows(fresh, "SELECT kind FROM email_events WHERE customer_id = 'c-soft'")] \
        == ["soft_bounced"] * 3


async def test_an_arf_complaint_suppresses_the_customer(bounces: Settings, fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-spam", "cleo@example.com")
    await fresh.watch.wait_idle()
    [send] = await _sent(fresh, "c-spam")
    verp = _envelope_sender(bounces, "cleo@example.com")
    answer = await _report(bounces, arf("cleo@example.com", verp, message_id=send.message_id), verp)
    assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    await fresh.watch.wait_idle()
    assert await _suppressed(fresh, "c-spam", "cleo@example.com") == ("complained", "complained")
    assert await _rows(fresh, "SELECT kind, message_id FROM email_events WHERE customer_id = 'c-spam'") \
        == [("complained", send.message_id)]


async def test_a_forged_or_unsigned_bounce_address_publishes_nothing(bounces: Settings,
                                                                     fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-forged", "dan@example.com")
    await fresh.watch.wait_idle()
    [send] = await _sent(fresh, "c-forged")
    genuine = _envelope_sender(bounces, "dan@example.com")
    forged = [
        bounce_address(SigningKeys.from_secret("an attacker's guess"), send.send_id, "shop.example"),
        genuine.replace(f"+{send.send_id}-", f"+{send.send_id + 1}-"),  # the MAC of another send
        f"bounces+{send.send_id}@shop.example",  # unsigned
        genuine.replace("@shop.example", "@other.example"),
    ]
    refused = await _metric(bounces, "lifecycle_bounces_refused_recipients_total")
    before = await end_offsets(bounces, bounces.events_topic)
    for address in forged:
        answer = await _report(bounces, dsn("dan@example.com", address), address)
        assert isinstance(answer, aiosmtplib.SMTPRecipientsRefused), address
        assert [r.code for r in answer.recipients] == [550]
    assert await end_offsets(bounces, bounces.events_topic) == before, "a forged report published an event"
    assert await _metric(bounces, "lifecycle_bounces_refused_recipients_total") - refused == len(forged)
    await fresh.watch.wait_idle()
    assert await _suppressed(fresh, "c-forged", "dan@example.com") == (None, None)


async def test_a_report_about_an_address_the_customer_has_changed_since_suppresses_nothing(
        bounces: Settings, fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-moved", "eve@example.com")
    await fresh.watch.wait_idle()
    verp = _envelope_sender(bounces, "eve@example.com")
    response = await fresh.http.post("/v1/events", json={
        "event_id": "moved-c-moved", "type": "customer_updated", "customer_id": "c-moved",
        "occurred_at": (START + timedelta(minutes=5)).isoformat(), "traits": {"email": "eve@new.example"}})
    assert response.status_code == 202, response.text
    await fresh.watch.wait_idle()
    moved = await _metric(bounces, "lifecycle_bounces_reports_total", outcome="address_changed")
    answer = await _report(bounces, dsn("eve@example.com", verp), verp)
    assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    await fresh.watch.wait_idle()
    assert await _suppressed(fresh, "c-moved", "eve@new.example") == (None, None)
    assert await _metric(bounces, "lifecycle_bounces_reports_total", outcome="address_changed") - moved == 1
