"""A producer whose sequence the broker lost is replaced; the deliveries that failed fail as they are."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber

from lifecycle import kafka
from lifecycle.kafka import PRODUCER_RENEWALS, RenewingProducer
from tests.support.ingest import FakeProducer


def _broken() -> FakeProducer:
    producer = FakeProducer()
    producer.ack_error = OutOfOrderSequenceNumber()  # every delivery fails alike
    return producer


def _starts_failing(times: int) -> FakeProducer:
    producer = FakeProducer()
    producer.start_failures = times
    return producer


def _factory(made: list[FakeProducer], plan: list[FakeProducer]) -> Any:
    def make() -> FakeProducer:
        made.append(plan.pop(0))
        return made[-1]
    return make


async def test_a_lost_sequence_fails_that_delivery_and_the_next_sends_go_through_a_new_producer() -> None:
    made: list[FakeProducer] = []
    producer = RenewingProducer(_factory(made, [_broken(), FakeProducer()]))
    before = PRODUCER_RENEWALS._value.get()
    await producer.start()
    failed = await asyncio.gather(*[await producer.send("t", b"a", b"k"), await producer.send("t", b"b", b"k")],
                                  return_exceptions=True)
    assert all(isinstance(f, OutOfOrderSequenceNumber) for f in failed)
    await (await producer.send("t", b"c", b"k"))  # waits for the new producer, delivered through it
    assert made[1].sent == [("t", b"k", b"c")] and made[1].started
    assert PRODUCER_RENEWALS._value.get() == before + 1  # two failures, one new producer
    await producer.stop()
    assert made[0].stopped and made[1].stopped
    assert len(made) == 2


async def test_a_new_producer_is_tried_again_while_kafka_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "RENEW_RETRY_SECONDS", 0.01)
    made: list[FakeProducer] = []
    plan = [_broken(), _starts_failing(1), FakeProducer()]
    producer = RenewingProducer(_factory(made, plan))
    await producer.start()
    with pytest.raises(OutOfOrderSequenceNumber):
        await (await producer.send("t", b"a", b"k"))
    await (await producer.send("t", b"b", b"k"))
    assert made[2].sent == [("t", b"k", b"b")]
    assert [p.started for p in made] == [True, False, True]
    assert producer.client is made[2].client
    await producer.stop()
