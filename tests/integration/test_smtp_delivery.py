"""What the SMTP server answers, through the whole pipeline: retries, bounces, lost connections, DKIM.

The stack's sink picks its answer from the recipient's local part (docs/sending.md): `tempfail-N-`
answers 451 the first N times, `bounce` answers 550, `drop` closes the connection. Retries are
durable rows whose due time is wall time (PostgreSQL's now()), so these tests wait for the
pipeline to be idle (no send `sending` any more) rather than move the virtual clock.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from devstack.smtp_sink import _message_files, mail_dir, read_messages
from lifecycle.dkim import dns_txt_record
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
HERE = Path(__file__)

# Few attempts, and a short backoff where the settings for it exist (the default, 2 s then 4 s, works too).
FAST: dict[str, Any] = {"smtp_max_attempts": 3, **{
    name: value for name, value in {"smtp_retry_base_seconds": 0.2, "smtp_retry_max_seconds": 1.0}.items()
    if name in Settings.model_fields}}


@pytest.fixture(scope="module")
async def configured(runner: ScenarioRunner) -> AsyncIterator[ScenarioRunner]:
    await runner.configure(HERE, FAST)
    yield runner
    await runner.configure(HERE, {})  # the services as the other tests expect them


@pytest.fixture
async def fresh(configured: ScenarioRunner) -> ScenarioRunner:
    await configured.configure(HERE, FAST)
    await configured.reset(START)
    return configured


async def _signup(runner: ScenarioRunner, customer_id: str, email: str) -> None:
    response = await runner.http.post("/v1/events", json={
        "event_id": f"signup-{customer_id}", "type": "customer_signed_up", "customer_id": customer_id,
        "occurred_at": START.isoformat(), "traits": {"email": email, "consent": "opted_in"}})
    assert response.status_code == 202, response.text


async def _sends(runner: ScenarioRunner, customer_id: str) -> list[Any]:
    async with runner.engine.connect() as conn:
        return list((await conn.execute(
            text("SELECT step, status, reason, attempts, delivered_at, next_attempt_at, lease_until, message_id"
                 " FROM sends WHERE customer_id = :c ORDER BY step"), {"c": customer_id})).all())


async def _suppression(runner: ScenarioRunner, address: str) -> str | None:
    async with runner.engine.connect() as conn:
        reason = (await conn.execute(text("SELECT reason FROM suppressions WHERE address = :a"),
                                     {"a": address})).scalar()
    return None if reason is None else str(reason)


def _emails_to(settings: Settings, address: str) -> list[Any]:
    return [m for m in read_messages(mail_dir(settings)) if str(m["To"]) == address]


async def _metric(settings: Settings, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{settings.dispatcher_port}/metrics")).text
    total = 0.0
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_a_tempfailed_address_gets_its_email_after_retries(pipeline: Settings, fresh: ScenarioRunner) -> None:
    retried_before = await _metric(pipeline, "lifecycle_dispatcher_sends_total", result="retried")
    await _signup(fresh, "c-tempfail", "tempfail-2-ana@example.com")
    await fresh.watch.wait_idle()  # idle: no send is `sending` any more
    [send] = await _sends(fresh, "c-tempfail")
    assert (send.status, send.attempts) == ("sent", 3)  # 451, 451, 250
    assert send.reason == "smtp 451: 4.3.0 try again later"  # the last problem met on the way
    assert send.delivered_at is not None and send.lease_until is None and send.next_attempt_at is None
    delivered = _emails_to(pipeline, "tempfail-2-ana@example.com")
    assert [m["Message-ID"] for m in delivered] == [send.message_id]
    assert await _metric(pipeline, "lifecycle_dispatcher_sends_total", result="retried") - retried_before == 2
    assert await _metric(pipeline, "lifecycle_dispatcher_smtp_accepted_total") >= 1


async def test_a_bounce_fails_the_send_and_suppresses_the_address(pipeline: Settings, fresh: ScenarioRunner) -> None:
    suppressed_before = await _metric(pipeline, "lifecycle_dispatcher_suppressions_total", reason="bounced")
    await _signup(fresh, "c-bounce", "bounce-bob@example.com")
    await fresh.watch.wait_idle()
    [send] = await _sends(fresh, "c-bounce")
    assert (send.status, send.reason, send.attempts) == ("failed", "bounced: 550 5.1.1 no such user", 1)
    assert await _suppression(fresh, "bounce-bob@example.com") == "bounced: 550 5.1.1 no such user"
    assert _emails_to(pipeline, "bounce-bob@example.com") == []
    assert await _metric(pipeline, "lifecycle_dispatcher_suppressions_total", reason="bounced") \
        - suppressed_before == 1
    assert await _metric(pipeline, "lifecycle_dispatcher_sends_total", journey="prospect_welcome", step="1",
                         result="bounced") >= 1
    # the journey's next email is not even tried: the address is suppressed
    await fresh.watch.advance_to(START + timedelta(days=2))
    sends = await _sends(fresh, "c-bounce")
    assert [(s.step, s.status) for s in sends][:2] == [(1, "failed"), (2, "skipped")]
    assert str(sends[1].reason).startswith("suppressed:bounced")
    assert _emails_to(pipeline, "bounce-bob@example.com") == []


async def test_a_lost_connection_is_retried_until_the_attempts_run_out(pipeline: Settings,
                                                                       fresh: ScenarioRunner) -> None:
    await _signup(fresh, "c-drop", "drop-carl@example.com")
    await _signup(fresh, "c-fine", "fine-fay@example.com")  # sent over the same pool meanwhile
    await fresh.watch.wait_idle()
    [send] = await _sends(fresh, "c-drop")
    assert (send.status, send.attempts) == ("failed", 3)
    assert str(send.reason).startswith("gave up after 3 attempts: connection:")
    assert await _suppression(fresh, "drop-carl@example.com") is None  # not the address's fault
    assert _emails_to(pipeline, "drop-carl@example.com") == []
    assert [(s.status, s.attempts) for s in await _sends(fresh, "c-fine")] == [("sent", 1)]
    assert len(_emails_to(pipeline, "fine-fay@example.com")) == 1


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed (Debian: apt-get install openssl)"
    directory = tmp_path_factory.mktemp("dkim")
    directory.chmod(0o755)
    key = directory / "dkim.pem"
    subprocess.run([openssl, "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    return key


async def test_delivered_messages_carry_a_dkim_signature_that_verifies(pipeline: Settings, fresh: ScenarioRunner,
                                                                      dkim_key: Path) -> None:
    signing = {**FAST, "dkim_selector": "it2026", "dkim_domain": "shop.example",
               "dkim_private_key_file": str(dkim_key)}
    await fresh.configure(HERE, signing)
    try:
        await fresh.reset(START)
        await _signup(fresh, "c-dkim", "dana@example.com")
        await _signup(fresh, "c-dkim-retry", "tempfail-1-dan@example.com")  # signed again when retried
        await fresh.watch.wait_idle()
    finally:
        await fresh.configure(HERE, FAST)
    record = dns_txt_record(dkim_key.read_bytes()).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name == b"it2026._domainkey.shop.example." else None

    raw = {}
    for path in _message_files(mail_dir(pipeline)):
        data = path.read_bytes()
        for address in ("dana@example.com", "tempfail-1-dan@example.com"):
            if f"X-Sink-Rcpt-To: {address}\r\n".encode() in data:
                raw[address] = data
    assert sorted(raw) == ["dana@example.com", "tempfail-1-dan@example.com"]
    for data in raw.values():
        assert b"\r\nDKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example;" in data
        assert dkim.verify(data, dnsfunc=dns)  # the sink's X-Sink-* lines in front are not signed
        assert not dkim.verify(data.replace(b"Subject: ", b"Subject: [changed] ", 1), dnsfunc=dns)
