"""The fault harness's SMTP server (aiosmtpd, in the harness's own process): it keeps every message
with the moment it arrived, and misbehaves on command.

Misbehaviours:
- `refuse_until(t, code)`: answers RCPT with a 451 (try again) or a 421 (closing) until `t`;
- `drop_next(n)`: for the next `n` messages, closes the connection once DATA is in, before answering:
  the message is not taken (the client must try again);
- `go_down()` / `come_up()`: stops listening and cuts every connection, then listens again;
- `kill_after_data(kill)`: takes the next message (it counts as delivered) and, before answering 250,
  calls `kill(peer_port)`, which kills the process on the other end of the connection. That message
  may then arrive twice: the ambiguous window no sender can close.

Whatever kills a sender, the messages it may not have seen the `250` of are as ambiguous: on each of
its other connections, the last message taken when nothing came on that connection after its `250`
(a client sends its next command only once it has read the answer), and any message still taken on
its connections after it died (its data was on the way). `sender_killed(owned)` marks those
connections and lists the first kind; the killer calls it right before the kill, in the same step of
the event loop; the sink adds the second kind to `killed_message_ids` as they come.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

log = logging.getLogger("devstack.chaos.sink")


@dataclass(frozen=True)
class Arrival:
    """One message the sink took, as a recipient would see it."""

    at: float  # time.time()
    to: str
    journey: str
    step: int
    message_id: str
    message: EmailMessage

    def body(self) -> str:
        parts = [self.message.get_body(preferencelist=(kind,)) for kind in ("plain", "html")]
        return "\n".join(str(part.get_content()) for part in parts if part is not None)


@dataclass
class _Mode:
    refuse_until: float = 0.0
    refuse_code: int = 451
    drop: int = 0
    kill: Callable[[int], None] | None = None
    killed_message_ids: list[str] = field(default_factory=list)


class ChaosSink:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.arrivals: list[Arrival] = []
        self.mode = _Mode()
        self._server: asyncio.base_events.Server | None = None
        self._sessions: set[Any] = set()
        self.changed = asyncio.Event()  # set on every arrival, for waiters

    # --- control ---------------------------------------------------------------------------

    async def start(self) -> None:
        from aiosmtpd.smtp import SMTP

        sink = self

        class _Smtp(SMTP):
            # the last message taken here, while nothing came after its 250: unproven that it was seen
            unproven: str | None = None
            sender_dead = False  # the process on the other end was killed

            def connection_made(self, transport: Any) -> None:
                sink._sessions.add(self)
                super().connection_made(transport)

            def data_received(self, data: bytes) -> None:
                self.unproven = None  # the client is past the answer
                super().data_received(data)

            def connection_lost(self, error: Exception | None) -> None:
                sink._sessions.discard(self)
                super().connection_lost(error)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Smtp(_Handler(self), hostname="chaos-sink", enable_SMTPUTF8=True, data_size_limit=None),
            host=self.host, port=self.port, reuse_address=True)

    async def go_down(self) -> None:
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def come_up(self) -> None:
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.go_down()

    def refuse_until(self, until: float, code: int) -> None:
        self.mode.refuse_until, self.mode.refuse_code = until, code

    def drop_next(self, count: int) -> None:
        self.mode.drop = count

    def kill_after_data(self, kill: Callable[[int], None]) -> None:
        self.mode.kill = kill

    @property
    def kill_armed(self) -> bool:
        return self.mode.kill is not None

    def sender_killed(self, owned: Callable[[int], bool]) -> list[str]:
        """Mark the connections whose client port `owned` says yes to as those of a killed sender, and
        return the messages on them whose 250 it may not have seen (see the module's docstring)."""
        found = []
        for session in self._sessions:
            peer = session.session.peer if session.session is not None else None
            if not (isinstance(peer, tuple) and owned(peer[1])):
                continue
            session.sender_dead = True
            if session.unproven:
                found.append(session.unproven)
        return found

    def disarm(self) -> None:
        self.mode = _Mode(killed_message_ids=self.mode.killed_message_ids)

    # --- what came ---------------------------------------------------------------------------

    def take(self, raw: bytes, rcpt_tos: list[str]) -> Arrival:
        message = email.message_from_bytes(raw.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        arrival = Arrival(time.time(), (rcpt_tos[0] if rcpt_tos else str(message["To"])).lower(),
                          str(message["X-Lifecycle-Journey"] or ""), int(str(message["X-Lifecycle-Step"] or 0)),
                          str(message["Message-ID"] or ""), message)
        self.arrivals.append(arrival)
        self.changed.set()
        return arrival


class _Handler:
    def __init__(self, sink: ChaosSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        mode = self.sink.mode
        if time.time() < mode.refuse_until:
            if mode.refuse_code == 421:
                asyncio.get_running_loop().call_soon(server.transport.close)
                return "421 4.3.2 closing for a while"
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mode = self.sink.mode
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if mode.drop > 0:
            mode.drop -= 1
            server.transport.abort()  # the data is in, the answer never comes: not taken
            return "451 4.4.2 lost"  # written nowhere
        if mode.kill is not None:
            kill, mode.kill = mode.kill, None
            arrival = self.sink.take(raw, list(envelope.rcpt_tos))
            mode.killed_message_ids.append(arrival.message_id)
            peer = session.peer[1] if isinstance(session.peer, tuple) else 0
            kill(peer)  # the sender dies with the message taken and no 250 seen
            server.transport.abort()
            return "250 2.0.0 taken"  # written nowhere
        server.unproven = self.sink.take(raw, list(envelope.rcpt_tos)).message_id
        if getattr(server, "sender_dead", False):
            mode.killed_message_ids.append(server.unproven)  # taken after its sender died: no 250 seen
        return "250 2.0.0 taken"
