"""SMTP pipelining gives the outcomes one command at a time gives, with MAIL, RCPT and DATA in one write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib
import aiosmtplib.smtp
import pytest
from aiosmtpd.controller import Controller

from devstack.smtp_sink import MessageStore, _Handler
from lifecycle import smtp_pipelining
from lifecycle.smtp import Outcome, SmtpConfig, SmtpPool
from tests.unit.test_smtp import _free_port

MESSAGE = (b"From: Shop <hello@shop.example>\r\nTo: x@example.com\r\nSubject: Hi\r\n\r\n"
           b"Hello\r\n.starts with a dot\r\n..two\r\n")


def test_aiosmtplib_makes_its_connections_with_the_protocol_that_keeps_every_answer() -> None:
    assert smtp_pipelining.install()
    assert aiosmtplib.smtp.SMTPProtocol is smtp_pipelining.OrderedAnswers  # type: ignore[attr-defined]


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every write the client makes, as made."""
    made: list[bytes] = []
    original = smtp_pipelining.OrderedAnswers.write

    def spy(self: smtp_pipelining.OrderedAnswers, data: bytes) -> None:
        made.append(bytes(data))
        original(self, data)

    monkeypatch.setattr(smtp_pipelining.OrderedAnswers, "write", spy)
    return made


RECIPIENTS = ["a@example.com", "tempfail-1-b@example.com", "tempfail-1-b@example.com", "bounce-c@example.com",
              "d@example.com", "drop-e@example.com", "f@example.com", "ü@example.com"]


async def _outcomes(port: int, pipelining: bool) -> list[Outcome]:
    pool = SmtpPool(SmtpConfig("127.0.0.1", port, timeout=5, local_hostname="test.local", pipelining=pipelining))
    try:
        return [await pool.send("hello@shop.example", rcpt, MESSAGE) for rcpt in RECIPIENTS]
    finally:
        await pool.close()


async def test_the_outcomes_and_the_messages_stored_are_those_of_one_command_at_a_time(
        tmp_path: Path, writes: list[bytes]) -> None:
    stored: dict[bool, list[bytes]] = {}
    outcomes: dict[bool, list[Outcome]] = {}
    for pipelining in (False, True):
        port = _free_port()
        controller = Controller(_Handler(MessageStore(tmp_path / str(pipelining))), hostname="127.0.0.1",
                                port=port, enable_SMTPUTF8=True)
        controller.start()
        try:
            writes.clear()
            outcomes[pipelining] = await _outcomes(port, pipelining)
        finally:
            controller.stop()
        stored[pipelining] = [path.read_bytes() for path in sorted((tmp_path / str(pipelining)).glob("*.eml"))]
        pipelined = [w for w in writes
                     if w.startswith(b"MAIL FROM:") and b"\r\nRCPT TO:" in w and w.endswith(b"DATA\r\n")]
        # the first message of each connection goes one command at a time: PIPELINING is known after EHLO
        assert (len(pipelined) >= 5) if pipelining else not pipelined
    # a dropped connection is told as an EOF or as the connection lost, whichever the loop sees first
    same = {pipelining: [dataclasses.replace(o, reason="connection") if o.reason.startswith("connection:") else o
                         for o in found] for pipelining, found in outcomes.items()}
    assert same[True] == same[False]
    assert [o.kind for o in outcomes[True]] == ["sent", "retry", "sent", "bounce", "sent", "retry", "sent", "sent"]
    assert stored[True] == stored[False] and len(stored[True]) == 5


async def test_without_pipelining_offered_commands_go_one_at_a_time(writes: list[bytes]) -> None:
    async with _scripted(pipelining=False) as server:
        pool = SmtpPool(SmtpConfig("127.0.0.1", server.port, timeout=5, local_hostname="test.local"))
        assert [(await pool.send("s@shop.example", "r@example.com", MESSAGE)).kind for _ in range(2)] == ["sent"] * 2
        await pool.close()
    assert not [w for w in writes if b"\r\nRCPT TO:" in w]
    assert server.received.count(b"DATA") == 2


# --- against a server whose answers are scripted --------------------------------------------------


@dataclass
class _Scripted:
    """An SMTP server answering each command from `answers` (in turn; 250 by default, 354 to DATA),
    offering PIPELINING or not. The answers to commands that came in one write go out together, or
    one byte at a time with `byte_by_byte`. `received` is what it read:
    the commands, `<message>` or `<empty>` for what followed a 354."""

    answers: dict[bytes, list[bytes]] = field(default_factory=dict)
    pipelining: bool = True
    byte_by_byte: bool = False
    hang_up_after: bytes = b""  # the command after whose answer the server closes the connection
    received: list[bytes] = field(default_factory=list)
    port: int = 0

    def _answer(self, command: bytes) -> bytes:
        queued = self.answers.get(command)
        if queued:
            return queued.pop(0) + b"\r\n"
        return {b"DATA": b"354 go ahead", b"QUIT": b"221 bye"}.get(command, b"250 ok") + b"\r\n"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def send(data: bytes) -> None:
            for chunk in [data[i:i + 1] for i in range(len(data))] if self.byte_by_byte else [data]:
                writer.write(chunk)
                await writer.drain()

        held = b""
        await send(b"220 scripted\r\n")
        while line := await reader.readline():
            command = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            self.received.append(command)
            if command == b"EHLO":
                await send(b"250-scripted\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                           + b"250 SIZE 1000000\r\n")
                continue
            answer = self._answer(command)
            if command == self.hang_up_after and not answer.startswith(b"250"):
                await send(held + answer)
                break
            if command in (b"MAIL", b"RCPT") and reader._buffer:  # type: ignore[attr-defined]  # more commands came in the same write
                held += answer
                continue
            await send(held + answer)
            held = b""
            if command == b"DATA" and answer.startswith(b"354"):
                lines = []
                while (body_line := await reader.readline()) not in (b".\r\n", b""):
                    lines.append(body_line)
                self.received.append(b"<message>" if lines else b"<empty>")
                await send(self._answer(b"<end>"))
            if command == b"QUIT":
                break
        writer.close()


@contextlib.asynccontextmanager
async def _scripted(**options: object) -> AsyncIterator[_Scripted]:
    script = _Scripted(**options)  # type: ignore[arg-type]
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    try:
        yield script
    finally:
        server.close()
        await server.wait_closed()


async def _twice(script: _Scripted) -> list[Outcome]:
    """A message to prime the connection (PIPELINING is known after EHLO), then the one under test."""
    pool = SmtpPool(SmtpConfig("127.0.0.1", script.port, timeout=5, local_hostname="test.local"))
    try:
        return [await pool.send("s@shop.example", "r@example.com", MESSAGE) for _ in range(2)]
    finally:
        await pool.close()


@pytest.mark.parametrize("byte_by_byte", [False, True])
async def test_answers_that_arrive_together_or_a_byte_at_a_time_are_read_in_order(byte_by_byte: bool) -> None:
    async with _scripted(byte_by_byte=byte_by_byte) as script:
        outcomes = await _twice(script)
    assert [o.kind for o in outcomes] == ["sent", "sent"]
    assert script.received.count(b"<message>") == 2


@pytest.mark.parametrize(("answers", "kind", "reason", "after"), [
    ({b"MAIL": [b"250 ok", b"550 5.7.1 sender not allowed"], b"RCPT": [b"250 ok", b"503 5.5.1 need MAIL"],
      b"DATA": [b"354 go", b"503 5.5.1 need RCPT"]},
     "retry", "smtp 550 to MAIL FROM: 5.7.1 sender not allowed", [b"RSET"]),
    ({b"RCPT": [b"250 ok", b"550 5.1.1 no such user"], b"DATA": [b"354 go", b"554 5.5.1 no valid recipients"]},
     "bounce", "bounced: 550 5.1.1 no such user", [b"RSET"]),
    ({b"RCPT": [b"250 ok", b"452 4.2.2 mailbox full"], b"DATA": [b"354 go", b"554 5.5.1 no valid recipients"]},
     "retry", "smtp 452: 4.2.2 mailbox full", [b"RSET"]),
    # a server that takes DATA after refusing the recipient gets an empty message, then RSET
    ({b"RCPT": [b"250 ok", b"550 5.1.1 no such user"]}, "bounce", "bounced: 550 5.1.1 no such user",
     [b"<empty>", b"RSET"]),
    ({b"DATA": [b"354 go", b"451 4.3.0 try later"]}, "retry", "smtp 451: 4.3.0 try later", [b"RSET"]),
    ({b"<end>": [b"250 ok", b"554 5.7.1 message refused"]}, "bounce", "bounced: 554 5.7.1 message refused",
     [b"<message>", b"RSET"]),
])
async def test_a_refusal_in_the_group_is_the_outcome_one_command_at_a_time_gives(
        answers: dict[bytes, list[bytes]], kind: str, reason: str, after: list[bytes]) -> None:
    async with _scripted(answers=answers) as script:
        first, second = await _twice(script)
    assert first.kind == "sent"
    assert (second.kind, second.reason) == (kind, reason)
    group = len(script.received) - script.received[::-1].index(b"MAIL") - 1
    assert script.received[group:group + 3] == [b"MAIL", b"RCPT", b"DATA"]
    assert script.received[group + 3:group + 3 + len(after)] == after


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_server_closing_with_421_is_a_retry_and_the_connection_is_not_kept(pipelining: bool) -> None:
    answers = {b"RCPT": [b"250 ok", b"421 4.3.2 shutting down"]}
    if pipelining:  # DATA came in the same write: answered too (one at a time, the client stops at RCPT)
        answers[b"DATA"] = [b"354 go", b"421 4.3.2 shutting down"]
    async with _scripted(answers=answers, pipelining=pipelining) as script:
        pool = SmtpPool(SmtpConfig("127.0.0.1", script.port, timeout=5, local_hostname="test.local"))
        outcomes = [await pool.send("s@shop.example", "r@example.com", MESSAGE) for _ in range(3)]
        await pool.close()
    assert [o.kind for o in outcomes] == ["sent", "retry", "sent"]
    assert pool.opened == 2  # the 421 connection was dropped and a new one made


@pytest.mark.parametrize(("command", "answers", "kind", "reason"), [
    (b"RCPT", {b"RCPT": [b"250 ok", b"550 5.1.1 no such user"]}, "bounce", "bounced: 550 5.1.1 no such user"),
    (b"MAIL", {b"MAIL": [b"250 ok", b"421 4.7.0 too many errors"]}, "retry",
     "smtp 421 to MAIL FROM: 4.7.0 too many errors"),
])
async def test_a_server_that_hangs_up_after_refusing_gives_the_refusal_as_the_outcome(
        command: bytes, answers: dict[bytes, list[bytes]], kind: str, reason: str) -> None:
    # one command at a time the client stops at the refusal; pipelined, the answers after it never come
    async with _scripted(answers=answers, hang_up_after=command) as script:
        pool = SmtpPool(SmtpConfig("127.0.0.1", script.port, timeout=5, local_hostname="test.local"))
        outcomes = [await pool.send("s@shop.example", "r@example.com", MESSAGE) for _ in range(3)]
        await pool.close()
    assert [(o.kind, o.reason) for o in outcomes] == [("sent", ""), (kind, reason), ("sent", "")]
    assert pool.opened == 2


async def test_each_message_goes_with_its_own_envelope_sender_in_both_ways(tmp_path: Path,
                                                                           writes: list[bytes]) -> None:
    """Every send's VERP address is its MAIL FROM, one command at a time as pipelined (the sink keeps it)."""
    senders = [f"bounces+{n}-{n:024x}@bounces.shop.example" for n in (1, 2, 3)]
    for pipelining in (False, True):
        port = _free_port()
        directory = tmp_path / f"senders-{pipelining}"
        controller = Controller(_Handler(MessageStore(directory)), hostname="127.0.0.1", port=port)
        controller.start()
        pool = SmtpPool(SmtpConfig("127.0.0.1", port, timeout=5, local_hostname="test.local", pipelining=pipelining))
        try:
            writes.clear()
            outcomes = [await pool.send(sender, "a@example.com", MESSAGE) for sender in senders]
        finally:
            await pool.close()
            controller.stop()
        assert [o.kind for o in outcomes] == ["sent"] * 3
        stored = [path.read_bytes() for path in sorted(directory.glob("*.eml"))]
        assert [line for data in stored for line in data.split(b"\r\n") if line.startswith(b"X-Sink-Mail-From:")] \
            == [f"X-Sink-Mail-From: {sender}".encode() for sender in senders]
        mail_commands = [w.split(b"\r\n")[0] for w in writes if w.startswith(b"MAIL FROM:")]
        assert [c.split(b" ")[1] for c in mail_commands] == [f"FROM:<{sender}>".encode() for sender in senders]
        last = [w for w in writes if w.startswith(b"MAIL FROM:")][-1]
        assert (b"\r\nRCPT TO:" in last) is pipelining  # the last one went pipelined where offered
