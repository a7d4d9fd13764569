"""Sending over SMTP like a real sender: pooled connections, TLS, AUTH, rate limits, outcome classes.

Nothing here touches the database: `Sender.run` hands each message to the server and reports an
`Outcome` (sent, retry, bounce, failed) through a callback; the dispatcher records it. See
docs/sending.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import aiosmtplib

from lifecycle import smtp_data, smtp_pipelining
from lifecycle.settings import Settings

log = logging.getLogger("lifecycle.smtp")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A pooled connection idle longer than this is checked with NOOP before use: servers drop idle
# clients (Postfix after 300 s, some relays after 60 s) and we would rather learn it there.
IDLE_CHECK_SECONDS = 5.0
# Fresh connection after this many messages: many servers cap messages per connection.
MESSAGES_PER_CONNECTION = 100
# Domain buckets unused this long are forgotten (they are full again by then anyway).
DOMAIN_BUCKET_TTL = 300.0

smtp_data.install()  # DATA without regular expressions over messages already in wire form
# every answer kept in order, which pipelined commands need (not installed: aiosmtplib is not the one
# expected, and every message goes one command at a time)
smtp_pipelining.install()


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    timeout: float = 10.0
    tls: Literal["none", "starttls", "implicit"] = "none"
    username: str | None = None
    password: str | None = None
    pool_size: int = 2
    rate_per_second: float = 0.0  # 0: unlimited
    domain_rate_per_second: float = 0.0
    # Extra CA bundle (PEM) trusted on top of the system's (which honours SSL_CERT_FILE / SSL_CERT_DIR).
    ca_file: Path | None = None
    local_hostname: str | None = None  # EHLO name; None: this machine's FQDN, looked up once
    pipelining: bool = True  # where the server offers it

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpConfig:
        ca_file = getattr(settings, "smtp_ca_file", None)  # a setting proposed to the lead; optional
        return cls(
            host=settings.smtp_host, port=settings.smtp_port, timeout=settings.smtp_timeout_seconds,
            tls=settings.smtp_tls, username=settings.smtp_username or None, password=settings.smtp_password,
            pool_size=settings.smtp_pool_size, rate_per_second=settings.smtp_rate_per_second,
            domain_rate_per_second=settings.smtp_domain_rate_per_second,
            ca_file=Path(ca_file) if ca_file else None, pipelining=settings.smtp_pipelining,
        )


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """Certificates and host names verified; the system's CAs plus `ca_file` when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


# --- outcomes ---------------------------------------------------------------------------------


OutcomeKind = Literal["sent", "retry", "bounce", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. `retry`: try again later; `bounce`: the address does not take mail
    (suppress it); `failed`: this message can never go, the address is not to blame."""

    kind: OutcomeKind
    reason: str = ""
    code: int | None = None
    text: str = ""


def _first_line(text: str) -> str:
    return " ".join(text.split())[:300]


def classify(exc: BaseException) -> Outcome:
    """The outcome of a send that raised `exc` once connected.

    5xx to RCPT or DATA: a hard bounce. 4xx anywhere, a lost connection, a timeout: retry later.
    The sender refused or any other answer from the server: retry too (it is about our account or
    the server, not this recipient, and an operator can fix it before the attempts run out).
    """
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = exc.recipients[0] if exc.recipients else None
        if refused is None:
            return Outcome("retry", "smtp: recipients refused")
        exc = refused
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return Outcome("retry", f"smtp {exc.code} to MAIL FROM: {_first_line(exc.message)}", exc.code,
                       _first_line(exc.message))
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        text = _first_line(exc.message)
        if 500 <= exc.code < 600:
            return Outcome("bounce", f"bounced: {exc.code} {text}", exc.code, text)
        return Outcome("retry", f"smtp {exc.code}: {text}", exc.code, text)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return Outcome("retry", f"smtp {exc.code}: {_first_line(exc.message)}", exc.code, _first_line(exc.message))
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. SMTPUTF8 needed for this address and the server lacks it: this message cannot go there
        return Outcome("failed", f"smtp: {_first_line(str(exc))}")
    if isinstance(exc, ValueError | UnicodeError):
        return Outcome("failed", f"address: {_first_line(str(exc))}")
    if isinstance(exc, TimeoutError):  # before OSError: SMTPTimeoutError is both
        return Outcome("retry", f"timeout: {_first_line(str(exc)) or type(exc).__name__}")
    if isinstance(exc, aiosmtplib.SMTPException | OSError):
        return Outcome("retry", f"connection: {_first_line(str(exc)) or type(exc).__name__}")
    raise exc


def retry_delay(attempts: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1, 2, ...): base, 2 base, 4 base ... cap."""
    return min(cap, base * 2.0 ** max(0, attempts - 1))


# --- rate limits ------------------------------------------------------------------------------


class TokenBucket:
    """`rate` tokens a second, holding at most `burst` (one second's worth, at least 1); 0: unlimited."""

    def __init__(self, rate: float, now: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.tokens = self.burst
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: now)."""
        if self.rate <= 0:
            return 0.0
        self._refill(now)
        missing = 1.0 - self.tokens
        return 0.0 if missing <= 1e-9 else missing / self.rate  # tolerance: float dust after a sleep

    def take(self, now: float) -> None:
        if self.rate > 0:
            self._refill(now)
            self.tokens -= 1.0

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class RateLimiter:
    """A global bucket and one bucket per recipient domain; a send takes a token from both."""

    def __init__(self, rate: float, domain_rate: float, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.domain_rate = domain_rate
        self.global_bucket = TokenBucket(rate, clock())
        self.domains: dict[str, TokenBucket] = {}
        self._pruned = clock()

    def _bucket(self, domain: str, now: float) -> TokenBucket:
        bucket = self.domains.get(domain)
        if bucket is None:
            bucket = self.domains[domain] = TokenBucket(self.domain_rate, now)
        return bucket

    def wait(self, domain: str) -> float:
        """Seconds until a send to `domain` may go (0: now); takes nothing."""
        now = self.clock()
        if self.domain_rate <= 0:
            return self.global_bucket.wait(now)
        return max(self.global_bucket.wait(now), self._bucket(domain, now).wait(now))

    def take(self, domain: str) -> None:
        now = self.clock()
        self.global_bucket.take(now)
        if self.domain_rate > 0:
            self._bucket(domain, now).take(now)
            if now - self._pruned > DOMAIN_BUCKET_TTL:  # memory follows the domains of the last minutes
                self._pruned = now
                self.domains = {d: b for d, b in self.domains.items() if not b.full(now)}

    def estimate(self, domain: str, ahead_global: int, ahead_in_domain: int) -> float:
        """Roughly when a send with that many others queued before it could go (for postponing)."""
        waits = [self.global_bucket.wait(self.clock())]
        if self.global_bucket.rate > 0:
            waits.append(waits[0] + ahead_global / self.global_bucket.rate)
        if self.domain_rate > 0:
            waits.append(self._bucket(domain, self.clock()).wait(self.clock()) + ahead_in_domain / self.domain_rate)
        return max(waits)


# --- connections ------------------------------------------------------------------------------


After = Callable[["Outcome"], Awaitable[None]]


class Transport(Protocol):
    """Hands one message to the server; never raises for what the server or the network did.

    `timeout`: the attempt ends as a retry once it has taken this long. `after(outcome)` runs before
    the connection may carry another message: the outcome is recorded while the connection is still
    the sender's, so a next command on a connection means the last message's outcome is recorded."""

    async def send(self, mail_from: str, recipient: str, message: bytes, *, timeout: float | None = None,
                   after: After | None = None) -> Outcome: ...

    async def close(self) -> None: ...


@dataclass
class _Attempt:
    conn: _Connection | None = None
    keep: bool = False  # whether the connection may carry another message


@dataclass
class _Connection:
    smtp: aiosmtplib.SMTP
    last_used: float
    messages: int = 0


class SmtpPool:
    """Up to `pool_size` connections kept open between sends and between dispatcher loop iterations.

    The caller bounds concurrency (`Sender` does, to `pool_size`); a connection is used by one send
    at a time. Broken connections are dropped and replaced on the next send.
    """

    def __init__(self, config: SmtpConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._idle: list[_Connection] = []
        self._context: ssl.SSLContext | None = None
        self._local_hostname = config.local_hostname
        self.opened = 0  # connections opened so far (reuse shows as few)

    async def _connect(self) -> _Connection:
        config = self.config
        if config.tls != "none" and self._context is None:
            self._context = await asyncio.to_thread(tls_context, config.ca_file)  # reads CA files: once
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)  # a DNS lookup: once
        smtp = aiosmtplib.SMTP(
            hostname=config.host, port=config.port, timeout=config.timeout, local_hostname=self._local_hostname,
            use_tls=config.tls == "implicit",
            # False, not None: aiosmtplib would otherwise upgrade whenever offered, unverified setups included
            start_tls=config.tls == "starttls",
            tls_context=self._context, username=config.username, password=config.password,
        )
        try:
            await smtp.connect()  # TLS, EHLO and AUTH happen here
        except BaseException:
            smtp.close()  # connected but refused later (STARTTLS, AUTH): do not leak the socket
            raise
        self.opened += 1
        return _Connection(smtp, self.clock())

    async def _checkout(self) -> _Connection:
        while self._idle:
            conn = self._idle.pop()  # the most recently used is the most likely alive
            if not conn.smtp.is_connected:
                continue
            if conn.messages >= MESSAGES_PER_CONNECTION:
                await self._quit(conn)
                continue
            if self.clock() - conn.last_used > IDLE_CHECK_SECONDS:
                try:
                    await conn.smtp.noop()
                except (aiosmtplib.SMTPException, OSError):
                    conn.smtp.close()
                    continue
            return conn
        return await self._connect()

    def _checkin(self, conn: _Connection, keep: bool) -> None:
        if keep and conn.smtp.is_connected:
            conn.last_used = self.clock()
            self._idle.append(conn)
        else:
            conn.smtp.close()

    async def send(self, mail_from: str, recipient: str, message: bytes, *, timeout: float | None = None,
                   after: After | None = None) -> Outcome:
        attempt = _Attempt()
        try:
            try:
                async with asyncio.timeout(timeout):
                    outcome = await self._transact(attempt, mail_from, recipient, message)
            except TimeoutError:
                attempt.keep = False  # cut off mid-transaction: the connection's state is unknown
                outcome = Outcome("retry", "timeout: the lease ran out during the attempt")
            if after is not None:
                await after(outcome)
            return outcome
        finally:
            if attempt.conn is not None:
                self._checkin(attempt.conn, attempt.keep)

    async def _transact(self, attempt: _Attempt, mail_from: str, recipient: str, message: bytes) -> Outcome:
        try:
            attempt.conn = await self._checkout()
        except (aiosmtplib.SMTPException, OSError) as exc:
            # connecting, TLS or AUTH failed: about the server or our account, never the recipient
            return Outcome("retry", f"connect: {_first_line(str(exc)) or type(exc).__name__}")
        try:
            options = [] if recipient.isascii() else ["SMTPUTF8"]
            smtp = attempt.conn.smtp
            if self.config.pipelining and smtp_pipelining.can_pipeline(smtp):
                await smtp_pipelining.send_pipelined(smtp, mail_from, recipient, message, options)
            else:
                await smtp.sendmail(mail_from, [recipient], message, mail_options=options)
            attempt.conn.messages += 1
            attempt.keep = True
            return Outcome("sent")
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPResponseException) as exc:
            # aiosmtplib sent RSET already; the connection stays good unless the server is closing it (421)
            if isinstance(exc, aiosmtplib.SMTPResponseException):
                code = exc.code
            else:  # a 421 to RCPT closes the connection as much as one to MAIL or DATA
                code = exc.recipients[0].code if exc.recipients else 0
            attempt.keep = code != 421
            return classify(exc)
        except (aiosmtplib.SMTPException, OSError, ValueError, UnicodeError) as exc:
            return classify(exc)

    async def _quit(self, conn: _Connection) -> None:
        try:
            await conn.smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            conn.smtp.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._quit(conn)


# --- sending a batch --------------------------------------------------------------------------


class Envelope(Protocol):
    @property
    def to_address(self) -> str: ...

    @property
    def message(self) -> bytes: ...


E = TypeVar("E", bound=Envelope)
OnOutcome = Callable[[E, Outcome, float], Awaitable[None]]
Admit = Callable[[list[E]], Awaitable[list[E]]]


class Sender:
    """A transport, the rate limits and at most `pool_size` sends at once; one per process."""

    def __init__(self, config: SmtpConfig, mail_from: str, transport: Transport | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.config = config
        self.mail_from = mail_from
        self.transport: Transport = transport if transport is not None else SmtpPool(config, clock)
        self.limiter = RateLimiter(config.rate_per_second, config.domain_rate_per_second, clock)
        self.clock = clock
        self.sleep = sleep
        self._slots = asyncio.Semaphore(config.pool_size)

    async def run(self, items: Sequence[E], on_outcome: OnOutcome[E], budget: float | None = None,
                  prepare: Callable[[E], Awaitable[bytes]] | None = None,
                  stop: asyncio.Event | None = None,
                  admit: Admit[E] | None = None,
                  finish_by: Callable[[E], float] | None = None,
                  attempt_seconds: float = 0.0,
                  envelope_sender: Callable[[E], str] | None = None) -> list[tuple[E, float]]:
        """Send `items`, concurrently over the pool, each when the rate limits allow.

        `on_outcome(item, outcome, seconds)` runs right after each attempt, before its connection may carry
        another message (a crash in between leaves that message's 250 unproven to the server). No send starts once
        `budget` seconds have passed: those items come back with the delay after which they may go
        (the caller postpones them durably, and the loop is not held up by a slow domain).
        `admit(group)` runs right before a group of sends starts (one check for all of them, after any
        wait for the rate limits) and returns those that may still go; the others are dropped.
        `finish_by(item)` is the clock reading by which the item's attempt must be over (its lease): an
        item with less than `attempt_seconds` left does not start (it comes back), and a started one is
        cut off then (a retry).
        `prepare` turns an item into the bytes to send (DKIM signing, off the loop); it runs just before sending.
        `envelope_sender(item)` is the item's MAIL FROM (its own bounce address); without it, `mail_from`.
        Once `stop` is set (SIGTERM), no send starts either: the sends in flight finish, the rest comes back.
        """
        queues: dict[str, deque[E]] = {}
        for item in items:  # per domain, so one slow domain never holds up the others
            queues.setdefault(domain_of(item.to_address), deque()).append(item)
        deadline = None if budget is None else self.clock() + budget
        tasks: list[asyncio.Task[None]] = []
        out_of_time: list[E] = []

        async def attempt(item: E) -> None:
            try:
                started = self.clock()
                message = await prepare(item) if prepare is not None else item.message
                timeout = None if finish_by is None else max(0.001, finish_by(item) - self.clock())

                async def record(outcome: Outcome) -> None:
                    await on_outcome(item, outcome, self.clock() - started)

                sender = envelope_sender(item) if envelope_sender is not None else self.mail_from
                await self.transport.send(sender, item.to_address, message, timeout=timeout, after=record)
            finally:
                self._slots.release()

        def startable(item: E) -> bool:
            if finish_by is not None and finish_by(item) - self.clock() < attempt_seconds:
                out_of_time.append(item)
                return False
            return True

        def take_ready() -> E | None:
            """The next item whose domain has a token now (taking it), or None."""
            for domain in list(queues):
                if self.limiter.wait(domain) > 0:
                    continue
                queue = queues.pop(domain)
                item = queue.popleft()
                if queue:
                    queues[domain] = queue  # to the back: domains take turns
                self.limiter.take(domain)
                return item
            return None

        try:
            while queues:
                await self._slots.acquire()
                first: E | None = None
                try:
                    while first is None and queues:
                        now = self.clock()
                        if (deadline is not None and now >= deadline) or (stop is not None and stop.is_set()):
                            break
                        first = take_ready()
                        if first is not None and not startable(first):
                            first = None
                            continue
                        if first is None and queues:
                            soonest = min(self.limiter.wait(domain) for domain in queues)
                            limit = soonest if deadline is None else min(soonest, deadline - now)
                            if stop is not None:
                                limit = min(limit, 0.25)  # look at `stop` now and then
                            await self.sleep(max(limit, 0.001))
                except BaseException:
                    self._slots.release()
                    raise
                if first is None:  # out of time, stopping, or nothing left that may start
                    self._slots.release()
                    if queues and ((deadline is not None and self.clock() >= deadline)
                                   or (stop is not None and stop.is_set())):
                        break
                    continue
                group = [first]
                while not self._slots.locked() and queues:  # more free connections: fill them now
                    more = take_ready()
                    if more is None:
                        break
                    if startable(more):
                        await self._slots.acquire()  # free, so this does not wait
                        group.append(more)
                try:
                    admitted = group if admit is None else await admit(group)
                except BaseException:
                    for _ in group:
                        self._slots.release()
                    raise
                allowed = {id(item) for item in admitted}
                for item in group:
                    if id(item) in allowed:
                        tasks.append(asyncio.create_task(attempt(item)))
                    else:
                        self._slots.release()
                await asyncio.sleep(0)  # the sends start now, not after we next wait for a token
        finally:
            # every started send finishes and is recorded, even when something above failed
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        postponed: list[tuple[E, float]] = [(item, 0.0) for item in out_of_time]
        for domain, queue in queues.items():
            for ahead, item in enumerate(queue):
                postponed.append((item, self.limiter.estimate(domain, len(postponed), ahead)))
        return postponed

    async def close(self) -> None:
        await self.transport.close()
