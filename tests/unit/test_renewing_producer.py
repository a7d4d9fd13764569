"""A producer whose sequence the broker lost is replaced; the deliveries that failed fail as they are."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from lifecycle import kafka
from lifecycle.kafka import PRODUCER_RENEWALS, RenewingProducer


class _Producer:
    """What RenewingProducer uses of AIOKafkaProducer; `broken` fails every delivery alike."""

    def __init__(self, broken: bool, starts_failing: int = 0) -> None:
        self.broken = broken
        self.starts_failing = starts_failing
        self.started = self.stopped = False
        self.sent: list[bytes | None] = []
        self.client = object()

    async def start(self) -> None:
        if self.starts_failing:
            self.starts_failing -= 1
            raise KafkaConnectionError("broker away")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.broken:
            future.set_exception(OutOfOrderSequenceNumber())
        else:
            self.sent.append(value)
            future.set_result(("record", len(self.sent)))
        return future


def _factory(made: list[_Producer], plan: list[_Producer]) -> Any:
    def make() -> _Producer:
        made.append(plan.pop(0))
        return made[-1]
    return make


async def test_a_lost_sequence_fails_that_delivery_and_the_next_sends_go_through_a_new_producer() -> None:
    made: list[_Producer] = []
    producer = RenewingProducer(_factory(made, [_Producer(broken=True), _Producer(broken=False)]))
    before = PRODUCER_RENEWALS._value.get()
    await producer.start()
    failed = await asyncio.gather(*[await producer.send("t", b"a"), await producer.send("t", b"b")],
                                  return_exceptions=True)
    assert all(isinstance(f, OutOfOrderSequenceNumber) for f in failed)
    assert await (await producer.send("t", b"c")) == ("record", 1)  # waits for the new producer
    assert made[1].sent == [b"c"] and made[1].started
    assert PRODUCER_RENEWALS._value.get() == before + 1  # two failures, one new producer
    await producer.stop()
    assert made[0].stopped and made[1].stopped
    assert len(made) == 2


async def test_a_new_producer_is_tried_again_while_kafka_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka, "RENEW_RETRY_SECONDS", 0.01)
    made: list[_Producer] = []
    plan = [_Producer(broken=True), _Producer(broken=False, starts_failing=1), _Producer(broken=False)]
    producer = RenewingProducer(_factory(made, plan))
    await producer.start()
    with pytest.raises(OutOfOrderSequenceNumber):
        await (await producer.send("t", b"a"))
    assert await (await producer.send("t", b"b")) == ("record", 1)
    assert [p.started for p in made] == [True, False, True]
    assert producer.client is made[2].client
    await producer.stop()
