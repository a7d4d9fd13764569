"""lifecycle/smtp.py: rate limits on virtual time, outcome classes, the pool, TLS and AUTH against aiosmtpd."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from devstack.smtp_sink import MessageStore, _Handler, read_messages
from lifecycle.settings import Settings
from lifecycle.smtp import (
    After,
    Outcome,
    RateLimiter,
    Sender,
    SmtpConfig,
    SmtpPool,
    TokenBucket,
    classify,
    retry_delay,
)

MESSAGE = b"From: Shop <hello@shop.example>\r\nTo: x@example.com\r\nSubject: Hi\r\n\r\nHello\r\n"


# --- virtual time -----------------------------------------------------------------------------


class VirtualTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)  # let the sends already started run


@dataclass(frozen=True)
class Item:
    to_address: str
    message: bytes = MESSAGE


class RecordingTransport:
    """Answers every send with `answer(rcpt)` and notes the virtual time of each."""

    def __init__(self, clock: VirtualTime, answer: Any = None, ticks: int = 1) -> None:
        self.clock = clock
        self.ticks = ticks  # event loop turns a send takes
        self.sent: list[tuple[float, str]] = []
        self.answer = answer or (lambda rcpt: Outcome("sent"))
        self.in_flight = 0
        self.most_in_flight = 0

    async def send(self, mail_from: str, recipient: str, message: bytes, *, timeout: float | None = None,
                   after: After | None = None) -> Outcome:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.sent.append((self.clock.now, recipient))
        try:
            async with asyncio.timeout(timeout):
                for _ in range(self.ticks):
                    await asyncio.sleep(0)
                outcome: Outcome = self.answer(recipient)
        except TimeoutError:
            outcome = Outcome("retry", "timeout")
        if after is not None:
            await after(outcome)  # the "connection" is still this send's
        self.in_flight -= 1
        return outcome

    async def close(self) -> None:
        pass


def _sender(clock: VirtualTime, rate: float = 0.0, domain_rate: float = 0.0, pool_size: int = 2,
            transport: RecordingTransport | None = None) -> tuple[Sender, RecordingTransport]:
    transport = transport or RecordingTransport(clock)
    config = SmtpConfig("127.0.0.1", 25, pool_size=pool_size, rate_per_second=rate,
                        domain_rate_per_second=domain_rate)
    return Sender(config, "hello@shop.example", transport, clock=clock, sleep=clock.sleep), transport


async def _run(sender: Sender, items: list[Item], budget: float | None = None) -> tuple[
        list[tuple[Item, Outcome]], list[tuple[Item, float]]]:
    outcomes: list[tuple[Item, Outcome]] = []

    async def record(item: Item, outcome: Outcome, seconds: float) -> None:
        outcomes.append((item, outcome))

    postponed = await sender.run(items, record, budget=budget)
    return outcomes, postponed


def _most_in_window(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if start <= t < start + window - 1e-9) for start in times)


# --- token buckets ----------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    bucket = TokenBucket(2.0, now=0.0)
    for _ in range(2):
        assert bucket.wait(0.0) == 0
        bucket.take(0.0)
    assert bucket.wait(0.0) == pytest.approx(0.5)
    assert bucket.wait(0.25) == pytest.approx(0.25)
    assert bucket.wait(0.5) == 0
    bucket.take(0.5)
    assert bucket.wait(0.5) == pytest.approx(0.5)


def test_a_bucket_of_rate_zero_is_unlimited_and_a_slow_one_holds_one_token() -> None:
    unlimited = TokenBucket(0.0, now=0.0)
    for _ in range(1000):
        unlimited.take(0.0)
    assert unlimited.wait(0.0) == 0
    slow = TokenBucket(0.2, now=0.0)  # one every 5 s, no burst beyond one
    slow.take(0.0)
    assert slow.wait(0.0) == pytest.approx(5.0)
    assert slow.wait(100.0) == 0
    slow.take(100.0)
    assert slow.wait(100.0) == pytest.approx(5.0)


def test_the_limiter_needs_a_token_from_both_the_global_and_the_domain_bucket() -> None:
    clock = VirtualTime()
    limiter = RateLimiter(10.0, 1.0, clock)
    limiter.take("gmail.com")
    assert limiter.wait("gmail.com") == pytest.approx(1.0)
    assert limiter.wait("example.org") == 0  # another domain has its own bucket
    for _ in range(9):
        limiter.take("example.org")
    assert limiter.wait("yahoo.com") == pytest.approx(0.1)  # the global bucket is empty now


# --- the sender: pacing, concurrency, the time budget -----------------------------------------


async def test_the_global_rate_paces_sends_without_dropping_any() -> None:
    clock = VirtualTime()
    sender, transport = _sender(clock, rate=5.0)
    items = [Item(f"c{i}@example{i % 3}.com") for i in range(20)]
    outcomes, postponed = await _run(sender, items)
    assert postponed == []
    assert sorted(o[0].to_address for o in outcomes) == sorted(i.to_address for i in items)
    times = [t for t, _ in transport.sent]
    assert times[:5] == [times[0]] * 5  # the burst (one second's worth) at once
    assert [b - a for a, b in itertools.pairwise(times[5:])] == pytest.approx([0.2] * 14)  # then 5 a second
    assert all(_most_in_window(times, w) <= 5 + 5 * w for w in (0.5, 1.0, 2.0))


async def test_a_slow_domain_does_not_hold_up_the_others() -> None:
    clock = VirtualTime()
    sender, transport = _sender(clock, domain_rate=1.0)
    items = [Item(f"g{i}@gmail.com") for i in range(4)] + [Item(f"o{i}@other{i}.org") for i in range(4)]
    await _run(sender, items)
    sent_at = {rcpt: t for t, rcpt in transport.sent}
    start = min(sent_at.values())
    assert all(sent_at[f"o{i}@other{i}.org"] == start for i in range(4))
    gmail = sorted(sent_at[f"g{i}@gmail.com"] - start for i in range(4))
    assert gmail == pytest.approx([0.0, 1.0, 2.0, 3.0])


async def test_no_more_sends_at_once_than_the_pool_has_connections() -> None:
    clock = VirtualTime()
    sender, transport = _sender(clock, pool_size=3, transport=RecordingTransport(clock, ticks=10))
    await _run(sender, [Item(f"c{i}@example.com") for i in range(12)])
    assert len(transport.sent) == 12
    assert transport.most_in_flight == 3


async def test_what_the_budget_leaves_no_time_for_comes_back_with_its_delay() -> None:
    clock = VirtualTime()
    sender, _ = _sender(clock, rate=1.0)
    items = [Item(f"c{i}@example.com") for i in range(8)]
    outcomes, postponed = await _run(sender, items, budget=3.0)
    assert len(outcomes) + len(postponed) == 8
    assert [o[0] for o in outcomes] == items[:len(outcomes)]
    assert 3 <= len(outcomes) <= 4
    delays = [d for _, d in postponed]
    assert [i for i, _ in postponed] == items[len(outcomes):]
    assert [b - a for a, b in itertools.pairwise(delays)] == pytest.approx([1.0] * (len(delays) - 1))
    assert 0 <= delays[0] <= 1  # in their order, a second apart, the first about when the next token is there


async def test_the_limits_carry_over_from_one_batch_to_the_next() -> None:
    clock = VirtualTime()
    sender, transport = _sender(clock, rate=2.0)
    await _run(sender, [Item("a@example.com"), Item("b@example.com")])
    await _run(sender, [Item("c@example.com")])
    assert [t for t, _ in transport.sent][-1] - transport.sent[0][0] == pytest.approx(0.5)


async def test_every_started_send_is_recorded_even_when_one_record_fails() -> None:
    clock = VirtualTime()
    sender, _ = _sender(clock)
    recorded: list[str] = []

    async def record(item: Item, outcome: Outcome, seconds: float) -> None:
        if item.to_address.startswith("boom"):
            raise RuntimeError("database gone")
        recorded.append(item.to_address)

    with pytest.raises(RuntimeError, match="database gone"):
        await sender.run([Item("boom@example.com"), Item("a@example.com"), Item("b@example.com")], record)
    assert sorted(recorded) == ["a@example.com", "b@example.com"]


# --- outcome classes and backoff --------------------------------------------------------------


@pytest.mark.parametrize(("exc", "kind", "reason"), [
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(451, "4.3.0 try again later", "a@x")]),
     "retry", "smtp 451: 4.3.0 try again later"),
    (aiosmtplib.SMTPRecipientsRefused([aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@x")]),
     "bounce", "bounced: 550 5.1.1 no such user"),
    (aiosmtplib.SMTPDataError(554, "5.7.1 rejected\n  as spam"), "bounce", "bounced: 554 5.7.1 rejected as spam"),
    (aiosmtplib.SMTPDataError(452, "4.3.1 insufficient storage"), "retry", "smtp 452: 4.3.1 insufficient storage"),
    (aiosmtplib.SMTPSenderRefused(553, "5.7.1 not your domain", "hello@shop.example"), "retry",
     "smtp 553 to MAIL FROM: 5.7.1 not your domain"),
    (aiosmtplib.SMTPResponseException(421, "4.4.2 closing"), "retry", "smtp 421: 4.4.2 closing"),
    (aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), "retry", "connection: Unexpected EOF received"),
    (aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"), "retry",
     "timeout: Timed out waiting for server response"),
    (ConnectionResetError("reset by peer"), "retry", "connection: reset by peer"),
    (aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported by this server"), "failed",
     "smtp: SMTPUTF8 is not supported by this server"),
])
def test_classify(exc: BaseException, kind: str, reason: str) -> None:
    outcome = classify(exc)
    assert (outcome.kind, outcome.reason) == (kind, reason)


def test_retry_delays_double_up_to_the_cap() -> None:
    assert [retry_delay(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert [retry_delay(n, base=0.1, cap=0.5) for n in range(1, 5)] == pytest.approx([0.1, 0.2, 0.4, 0.5])


def test_the_config_comes_from_the_settings() -> None:
    settings = Settings(smtp_host="mail.example", smtp_port=465, smtp_tls="implicit", smtp_username="u",
                        smtp_password="p", smtp_pool_size=4, smtp_rate_per_second=14,
                        smtp_domain_rate_per_second=2)
    config = SmtpConfig.from_settings(settings)
    assert (config.host, config.port, config.tls, config.username, config.password, config.pool_size,
            config.rate_per_second, config.domain_rate_per_second) == ("mail.example", 465, "implicit", "u", "p",
                                                                       4, 14, 2)


# --- against a real SMTP server (aiosmtpd in a thread) ----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The stack's sink handler (with its failure injection) behind an aiosmtpd Controller."""
    port = _free_port()
    controller = Controller(_Handler(MessageStore(tmp_path / "mail")), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port, tmp_path / "mail"
    finally:
        controller.stop()


async def test_the_pool_reuses_its_connection_and_replaces_a_lost_one(sink: tuple[int, Path]) -> None:
    port, mail = sink
    pool = SmtpPool(SmtpConfig("127.0.0.1", port, timeout=5, local_hostname="test.local"))
    try:
        answers = [await pool.send("hello@shop.example", rcpt, MESSAGE) for rcpt in (
            "a@example.com", "b@example.com", "tempfail-1-c@example.com", "tempfail-1-c@example.com",
            "bounce-d@example.com", "e@example.com")]
        assert [a.kind for a in answers] == ["sent", "sent", "retry", "sent", "bounce", "sent"]
        assert answers[4].reason == "bounced: 550 5.1.1 no such user"
        assert pool.opened == 1  # 4xx and 5xx answers leave the connection usable
        dropped = await pool.send("hello@shop.example", "drop-f@example.com", MESSAGE)
        assert dropped.kind == "retry" and dropped.reason.startswith("connection:")
        assert (await pool.send("hello@shop.example", "g@example.com", MESSAGE)).kind == "sent"
        assert pool.opened == 2
    finally:
        await pool.close()
    assert [str(m["X-Sink-Rcpt-To"]) for m in read_messages(mail)] == [
        "a@example.com", "b@example.com", "tempfail-1-c@example.com", "e@example.com", "g@example.com"]


async def test_a_connection_carries_no_other_message_until_the_last_outcome_is_recorded(
        sink: tuple[int, Path]) -> None:
    port, _ = sink
    pool = SmtpPool(SmtpConfig("127.0.0.1", port, timeout=5, local_hostname="test.local"))
    recorded = asyncio.Event()
    seen: list[str] = []

    async def record_slowly(outcome: Outcome) -> None:
        seen.append(outcome.kind)
        await recorded.wait()  # say the database is slow to take the 250

    try:
        first = asyncio.create_task(pool.send("hello@shop.example", "a@example.com", MESSAGE, after=record_slowly))
        while not seen:
            await asyncio.sleep(0.01)
        # the first connection is still the first send's: the second one opens its own
        assert (await pool.send("hello@shop.example", "b@example.com", MESSAGE)).kind == "sent"
        assert pool.opened == 2
        recorded.set()
        assert (await first).kind == "sent"
        assert (await pool.send("hello@shop.example", "c@example.com", MESSAGE)).kind == "sent"
        assert pool.opened == 2  # both back in the pool once recorded
    finally:
        await pool.close()


async def test_an_attempt_that_runs_out_of_time_is_a_retry_and_still_recorded(sink: tuple[int, Path]) -> None:
    port, _ = sink
    pool = SmtpPool(SmtpConfig("127.0.0.1", port, timeout=5, local_hostname="test.local"))
    seen: list[Outcome] = []

    async def record(outcome: Outcome) -> None:
        seen.append(outcome)

    try:
        outcome = await pool.send("hello@shop.example", "a@example.com", MESSAGE, timeout=0.000001, after=record)
    finally:
        await pool.close()
    assert outcome.kind == "retry" and outcome.reason.startswith("timeout:")
    assert seen == [outcome]


async def test_an_unreachable_server_is_a_retry(sink: tuple[int, Path]) -> None:
    pool = SmtpPool(SmtpConfig("127.0.0.1", _free_port(), timeout=2, local_hostname="test.local"))
    outcome = await pool.send("hello@shop.example", "a@example.com", MESSAGE)
    assert outcome.kind == "retry" and outcome.reason.startswith("connect:")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed (Debian: apt-get install openssl)"
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class _Accounts:
    def __init__(self) -> None:
        self.logins: list[bytes] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"shop", b"s3cret")
        if ok:
            self.logins.append(data.login)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture(params=["starttls", "implicit"])
def tls_server(request: pytest.FixtureRequest, certificate: tuple[Path, Path],
               tmp_path: Path) -> Iterator[tuple[str, int, Path, _Accounts]]:
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    accounts = _Accounts()
    port = _free_port()
    common: dict[str, Any] = {"authenticator": accounts, "auth_required": True}
    if request.param == "starttls":
        controller = Controller(_Handler(MessageStore(tmp_path / "mail")), hostname="127.0.0.1", port=port,
                                tls_context=context, require_starttls=True, **common)
    else:
        # aiosmtpd cannot tell an implicit TLS connection from a plain one: allow AUTH without STARTTLS
        controller = Controller(_Handler(MessageStore(tmp_path / "mail")), hostname="127.0.0.1", port=port,
                                ssl_context=context, auth_require_tls=False, **common)
    controller.start()
    try:
        yield request.param, port, tmp_path / "mail", accounts
    finally:
        controller.stop()


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # implicit TLS: it is TLS
async def test_tls_and_auth(tls_server: tuple[str, int, Path, _Accounts], certificate: tuple[Path, Path]) -> None:
    mode, port, mail, accounts = tls_server
    cert, _ = certificate

    def config(**changes: Any) -> SmtpConfig:
        base: dict[str, Any] = {"host": "127.0.0.1", "port": port, "timeout": 5, "tls": mode, "username": "shop",
                                "password": "s3cret", "ca_file": cert, "local_hostname": "test.local"}
        return SmtpConfig(**{**base, **changes})

    pool = SmtpPool(config())
    try:
        for rcpt in ("a@example.com", "b@example.com"):
            assert await pool.send("hello@shop.example", rcpt, MESSAGE) == Outcome("sent")
        assert pool.opened == 1 and accounts.logins == [b"shop"]
    finally:
        await pool.close()
    assert len(read_messages(mail)) == 2
    # certificates are verified: the self-signed one is refused unless its CA is trusted
    untrusted = await SmtpPool(config(ca_file=None)).send("hello@shop.example", "c@example.com", MESSAGE)
    assert untrusted.kind == "retry" and "CERTIFICATE_VERIFY_FAILED" in untrusted.reason, untrusted
    wrong = await SmtpPool(config(password="wrong")).send("hello@shop.example", "c@example.com", MESSAGE)
    assert wrong.kind == "retry" and "535" in wrong.reason
    assert len(read_messages(mail)) == 2


async def test_once_stopping_no_send_starts_and_the_rest_comes_back() -> None:
    clock = VirtualTime()
    sender, transport = _sender(clock, rate=1.0)
    stop = asyncio.Event()
    items = [Item(f"c{i}@example.com") for i in range(6)]

    async def record(item: Item, outcome: Outcome, seconds: float) -> None:
        if len(transport.sent) == 2:
            stop.set()  # SIGTERM while the second send is in flight

    postponed = await sender.run(items, record, stop=stop)
    assert [rcpt for _, rcpt in transport.sent] == ["c0@example.com", "c1@example.com"]
    assert [item for item, _ in postponed] == items[2:]
