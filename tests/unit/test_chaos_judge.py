"""The fault harness's judgement and its SMTP server's account of what a killed sender may not have seen."""

from __future__ import annotations

import asyncio
import socket
from email.message import EmailMessage

import aiosmtplib

from devstack.chaos.judge import judge
from devstack.chaos.sink import Arrival, ChaosSink
from devstack.chaos.workload import WELCOME, WELCOME_WAIT, Customer


def _arrival(at: float, to: str, message_id: str, step: int = 1) -> Arrival:
    message = EmailMessage()
    message["Message-ID"] = message_id
    return Arrival(at, to, "prospect_welcome", step, message_id, message)


def _customer() -> Customer:
    customer = Customer("c-1", "c1@chaos.example", "opted_in")
    customer.required.add(("prospect_welcome", 1))
    customer.required.add(("prospect_welcome", 2))
    return customer


def test_a_copy_of_a_message_in_a_killed_senders_window_is_ambiguous_any_other_copy_a_duplicate() -> None:
    arrivals = [_arrival(1.0, "c1@chaos.example", "<m1>"), _arrival(2.0, "c1@chaos.example", "<m2>", step=2),
                _arrival(3.0, "c1@chaos.example", "<m1>"), _arrival(4.0, "c1@chaos.example", "<m2>", step=2)]
    verdict = judge([_customer()], arrivals, [], ["<m1>"], stuck=0)
    assert (verdict.ambiguous, verdict.duplicates, verdict.windows) == (1, 1, 1)
    assert verdict.broken
    assert any("<m2>" in finding for finding in verdict.findings)


def test_an_email_that_an_event_ends_may_still_come_when_a_fault_held_that_event_back() -> None:
    """A Kafka restart held an order's acknowledgement back until a second before the welcome series'
    second email fell due: that email may come (once); the third, due later, may too; neither must."""
    signed_up = 1000.0
    on_time, held_back = Customer("c-1", "c1@chaos.example", "cart_order"), Customer("c-2", "c2@chaos.example",
                                                                                      "cart_order")
    on_time.ended(WELCOME[1:], signed_up, signed_up + 2.0)
    held_back.ended(WELCOME[1:], signed_up, signed_up + WELCOME_WAIT - 1.0)
    assert on_time.optional == set() and not on_time.required
    assert held_back.optional == set(WELCOME[1:]) and not held_back.required
    late = [_arrival(signed_up + WELCOME_WAIT + 0.5, "c2@chaos.example", "<m2>", step=2)]
    assert not judge([held_back], late, [], [], stuck=0).broken
    too_soon = [_arrival(signed_up + WELCOME_WAIT + 0.5, "c1@chaos.example", "<m2>", step=2)]
    assert judge([on_time], too_soon, [], [], stuck=0).unexpected == 1


def test_each_window_excuses_one_copy_only() -> None:
    arrivals = [_arrival(float(n), "c1@chaos.example", "<m1>") for n in range(3)]
    arrivals.append(_arrival(5.0, "c1@chaos.example", "<m2>", step=2))
    verdict = judge([_customer()], arrivals, [], ["<m1>"], stuck=0)
    assert (verdict.ambiguous, verdict.duplicates) == (1, 1)
    assert verdict.as_json(1)["ambiguous_windows"] == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _message(message_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "shop@shop.example"
    message["To"] = "c1@chaos.example"
    message["Message-ID"] = message_id
    message["X-Lifecycle-Journey"] = "prospect_welcome"
    message["X-Lifecycle-Step"] = "1"
    message.set_content("hello")
    return message


async def test_the_sink_names_the_messages_a_killed_sender_may_not_have_seen_the_250_of() -> None:
    sink = ChaosSink("127.0.0.1", _free_port())
    await sink.start()
    first = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port)
    second = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port)
    try:
        await first.connect()
        await second.connect()
        await first.send_message(_message("<a>"))
        await second.send_message(_message("<b>"))
        await asyncio.sleep(0.05)
        first_port = first.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        second_port = second.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
        assert sink.sender_killed(lambda port: port == first_port) == ["<a>"]  # nothing came after its 250
        await second.noop()  # a command after the 250: it was read
        await asyncio.sleep(0.05)
        assert sink.sender_killed(lambda port: port == second_port) == []
        assert sink.mode.killed_message_ids == []
        # what still comes on a killed sender's connection was on its way when it died
        await first.send_message(_message("<c>"))
        assert sink.mode.killed_message_ids == ["<c>"]
        assert [a.message_id for a in sink.arrivals] == ["<a>", "<b>", "<c>"]
    finally:
        first.close()
        second.close()
        await sink.stop()
