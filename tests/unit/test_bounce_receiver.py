"""services/bounces/receiver.py over real SMTP and LMTP (aiosmtpd), its sends and its Kafka in memory:
what is refused at RCPT, which events a report becomes, and 451 whenever they could not be recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from prometheus_client import REGISTRY

from lifecycle.clock import ManualClock
from lifecycle.events import Event, EventType
from lifecycle.tokens import SigningKeys
from lifecycle.verp import bounce_address
from services.bounces.receiver import BounceHandler, SentMessage
from tests.support.reports import arf, dsn, send_report
from tests.unit.test_smtp import _free_port

KEYS = SigningKeys("k1", {"k1": "bounce-test-secret"})
DOMAIN = "bounces.shop.example"
NOW = datetime(2026, 9, 7, 9, 0, tzinfo=UTC)
SENDS = {41: SentMessage("c-ana", "<7.1.aa@shop.example>", "ana@example.com", "Ana@Example.com"),
         42: SentMessage("c-bob", "<8.1.bb@shop.example>"),
         43: SentMessage("c-cid", "<9.1.cc@shop.example>", "cid@example.com", "cid@elsewhere.example")}


class Memory:
    """The sends table and the events topic, in memory; either can be made to fail."""

    def __init__(self) -> None:
        self.published: list[Event] = []
        self.kafka_down = False
        self.database_down = False

    async def look_up(self, send_ids: Sequence[int]) -> Mapping[int, SentMessage]:
        if self.database_down:
            raise ConnectionRefusedError("PostgreSQL is away")
        return {sid: SENDS[sid] for sid in send_ids if sid in SENDS}

    async def publish(self, events: list[Event]) -> None:
        if self.kafka_down:
            raise TimeoutError("no acknowledgement")
        self.published.extend(events)


@pytest.fixture
def memory() -> Memory:
    return Memory()


def _controller(memory: Memory, lmtp: bool = False) -> Controller:
    handler = BounceHandler(KEYS, DOMAIN, memory.look_up, memory.publish, ManualClock(NOW), lmtp=lmtp)
    port = _free_port()
    if lmtp:
        class Lmtp(Controller):
            def factory(self) -> Any:
                return LMTP(self.handler, hostname=DOMAIN)

        return Lmtp(handler, hostname="127.0.0.1", port=port)
    return Controller(handler, hostname="127.0.0.1", port=port, server_hostname=DOMAIN)


@pytest.fixture
def receiver(memory: Memory) -> Iterator[int]:
    controller = _controller(memory)
    controller.start()
    try:
        yield controller.port
    finally:
        controller.stop()


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _send(port: int, raw: bytes, recipients: list[str]) -> aiosmtplib.SMTPResponse | Exception:
    return await send_report("127.0.0.1", port, raw, recipients)


async def test_a_hard_bounce_at_a_signed_address_becomes_its_sends_email_bounced(receiver: int,
                                                                                 memory: Memory) -> None:
    before = _count("lifecycle_bounces_reports_total", outcome="hard_bounce")
    address = bounce_address(KEYS, 41, DOMAIN)
    answer = await _send(receiver, dsn("ana@example.com", address), [address])
    assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    [event] = memory.published
    assert (event.event_id, event.type, event.customer_id) == ("bounce-hard:41", EventType.EMAIL_BOUNCED, "c-ana")
    assert event.occurred_at == NOW == event.received_at
    assert event.properties.model_dump(exclude_unset=True) == {
        "message_id": "<7.1.aa@shop.example>", "kind": "hard",
        "reason": "5.1.1 smtp; 550 5.1.1 <ana@example.com>: Recipient address rejected: User unknown"}
    assert _count("lifecycle_bounces_reports_total", outcome="hard_bounce") - before == 1


async def test_soft_bounces_and_complaints_get_their_own_events_and_ids(receiver: int, memory: Memory) -> None:
    address = bounce_address(KEYS, 42, DOMAIN)
    await _send(receiver, dsn("bob@example.com", address, action="delayed", status="4.4.1"), [address])
    await _send(receiver, dsn("bob@example.com", address, action="delayed", status="4.4.1"), [address.upper()])
    await _send(receiver, arf("bob@example.com", address), [address])
    assert [(e.event_id, e.type, e.customer_id) for e in memory.published] == [
        ("bounce-soft:42", EventType.EMAIL_BOUNCED, "c-bob"),
        ("bounce-soft:42", EventType.EMAIL_BOUNCED, "c-bob"),  # the same id: the stager counts it once
        ("complaint:42", EventType.EMAIL_COMPLAINED, "c-bob")]
    assert memory.published[0].properties.model_dump(exclude_unset=True)["kind"] == "soft"
    assert memory.published[2].properties.model_dump(exclude_unset=True) == {"message_id": "<8.1.bb@shop.example>"}


@pytest.mark.parametrize("address", [
    "bounces@bounces.shop.example",
    "bounces+41-000000000000000000000000@bounces.shop.example",
    bounce_address(KEYS, 41, "elsewhere.example"),
    bounce_address(SigningKeys("k0", {"k0": "another-deployment"}), 41, DOMAIN),
    "postmaster@bounces.shop.example",
])
async def test_a_forged_or_unsigned_address_is_refused_at_rcpt_and_nothing_is_published(
        receiver: int, memory: Memory, address: str) -> None:
    before = _count("lifecycle_bounces_refused_recipients_total")
    answer = await _send(receiver, dsn("ana@example.com", address), [address])
    assert isinstance(answer, aiosmtplib.SMTPRecipientsRefused)
    assert [r.code for r in answer.recipients] == [550]
    assert memory.published == []
    assert _count("lifecycle_bounces_refused_recipients_total") - before == 1


async def test_a_report_that_could_not_be_recorded_is_answered_451_and_taken_when_sent_again(
        receiver: int, memory: Memory) -> None:
    address = bounce_address(KEYS, 41, DOMAIN)
    raw = dsn("ana@example.com", address)
    deferred = _count("lifecycle_bounces_reports_total", outcome="deferred")
    memory.kafka_down = True
    answer = await _send(receiver, raw, [address])
    assert isinstance(answer, aiosmtplib.SMTPDataError) and answer.code == 451
    memory.kafka_down, memory.database_down = False, True
    answer = await _send(receiver, raw, [address])
    assert isinstance(answer, aiosmtplib.SMTPDataError) and answer.code == 451
    assert memory.published == []
    assert _count("lifecycle_bounces_reports_total", outcome="deferred") - deferred == 2
    memory.database_down = False
    answer = await _send(receiver, raw, [address])
    assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    assert [e.event_id for e in memory.published] == ["bounce-hard:41"]


async def test_reports_that_ask_nothing_or_are_about_no_current_address_are_taken_and_counted(receiver: int,
                                                                                     memory: Memory) -> None:
    outcomes = ("ignored", "unknown_send", "unreadable", "address_changed")
    counts = {o: _count("lifecycle_bounces_reports_total", outcome=o) for o in outcomes}
    known, unknown = bounce_address(KEYS, 41, DOMAIN), bounce_address(KEYS, 99, DOMAIN)
    moved = bounce_address(KEYS, 43, DOMAIN)  # the customer has another address since that send
    for raw, rcpt in [(dsn("ana@example.com", known, action="delivered", status="2.0.0"), known),
                      (b"From: ana@example.com\r\nSubject: hi\r\n\r\njust a note\r\n", known),
                      (dsn("zoe@example.com", unknown), unknown),
                      (arf("cid@example.com", moved), moved)]:
        answer = await _send(receiver, raw, [rcpt])
        assert isinstance(answer, aiosmtplib.SMTPResponse) and answer.code == 250
    assert memory.published == []
    assert {o: _count("lifecycle_bounces_reports_total", outcome=o) - n for o, n in counts.items()} == {
        "ignored": 1, "unknown_send": 1, "unreadable": 1, "address_changed": 1}


async def test_lmtp_takes_one_recipient_per_transaction(memory: Memory) -> None:
    controller = _controller(memory, lmtp=True)
    controller.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", controller.port)
        answers: list[bytes] = []

        async def say(line: bytes) -> bytes:
            writer.write(line + b"\r\n")
            await writer.drain()
            answer = b""
            while not answer[:4].endswith(b" "):  # the last line of a multi-line answer
                answer = await reader.readline()
            answers.append(answer[:3])
            return answer

        await reader.readline()  # greeting
        first, second = bounce_address(KEYS, 41, DOMAIN), bounce_address(KEYS, 42, DOMAIN)
        assert (await say(b"EHLO mx.example.com")).startswith(b"500")  # LMTP greets with LHLO
        await say(b"LHLO mx.example.com")
        await say(b"MAIL FROM:<>")
        await say(f"RCPT TO:<{first}>".encode())
        await say(f"RCPT TO:<{second}>".encode())
        await say(b"DATA")
        writer.write(dsn("ana@example.com", first).replace(b"\n", b"\r\n") + b"\r\n.\r\n")
        await writer.drain()
        answers.append((await reader.readline())[:3])
        writer.close()
    finally:
        controller.stop()
    assert answers == [b"500", b"250", b"250", b"250", b"452", b"354", b"250"]
    assert [e.event_id for e in memory.published] == ["bounce-hard:41"]
