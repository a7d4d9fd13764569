"""Consuming without losing a message or stalling on one: transient failures, poison, the dead-letter topic."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from lifecycle.clock import ManualClock
from lifecycle.consuming import DeadLetter, TopicWorker, is_transient, run_task
from lifecycle.core.journeys import SendAudience, SendFacts, still_wanted
from lifecycle.settings import Settings

Record = namedtuple("Record", "offset key value headers", defaults=((),))
TP = TopicPartition("lifecycle.events", 0)


class FakeConsumer:
    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = batches
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.commit_error: Exception | None = None

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Record]]:
        return {TP: self.batches.pop(0)} if self.batches else {}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.commit_error is not None:
            raise self.commit_error
        self.committed_offsets.update({tp: meta.offset for tp, meta in offsets.items()})

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp, 0))


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        self.sent.append((topic, value, key))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _count(counter: Counter) -> float:
    return sum(sample.value for metric in counter.collect() for sample in metric.samples
               if sample.name.endswith("_total"))


def _worker(consumer: FakeConsumer, producer: FakeProducer, handle: Any) -> TopicWorker[str]:
    registry = CollectorRegistry()
    consumed, unreadable, dead = (Counter(name, name, registry=registry) for name in ("consumed", "unreadable", "dead"))

    def decode(raw: bytes, headers: Sequence[tuple[str, bytes]]) -> str:
        if raw.startswith(b"\x00"):
            raise ValueError("not a message")
        return raw.decode() + "".join(f"+{name}={value.decode()}" for name, value in headers)

    return TopicWorker(consumer, producer, Settings(), "stager",  # type: ignore[arg-type]
                       ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), decode, handle, consumed, unreadable, dead)


async def test_a_poison_message_goes_to_the_dead_letter_topic_and_the_rest_is_handled() -> None:
    handled: list[list[str]] = []

    async def handle(values: list[str]) -> None:
        if "poison" in values:
            raise KeyError("no such field")
        handled.append(values)

    consumer = FakeConsumer([[Record(10, b"c1", b"a"), Record(11, b"c2", b"poison"), Record(12, b"c3", b"\x00x"),
                              Record(13, b"c4", b"b")]])
    producer = FakeProducer()
    worker = _worker(consumer, producer, handle)
    assert await worker.poll_once()
    await worker.flush()
    assert handled == [["a"], ["b"]]  # the batch failed, then each message on its own
    letters = [DeadLetter.from_message(value) for _, value, _ in producer.sent]
    assert [(d.offset, d.attempts, d.key) for d in letters] == [(12, 1, b"c3"), (11, 3, b"c2")]
    assert letters[0].error.startswith("unreadable") and "KeyError" in letters[1].error
    assert letters[0].value == b"\x00x"  # kept whole, to be replayed
    assert (_count(worker.consumed), _count(worker.unreadable), _count(worker.dead_lettered)) == (4, 1, 2)
    assert consumer.committed_offsets == {TP: 14}
    assert all(topic == "lifecycle.dead-letters" for topic, _, _ in producer.sent)


async def test_each_message_is_decoded_with_its_headers() -> None:
    handled: list[list[str]] = []

    async def handle(values: list[str]) -> None:
        handled.append(values)

    consumer = FakeConsumer([[Record(1, b"c1", b"a", (("lifecycle-seal", b"k:mac"),)), Record(2, b"c2", b"b")]])
    assert await _worker(consumer, FakeProducer(), handle).poll_once()
    assert handled == [["a+lifecycle-seal=k:mac", "b"]]


async def test_a_transient_failure_commits_nothing_and_rewinds() -> None:
    async def handle(values: list[str]) -> None:
        raise OperationalError("SELECT", {}, Exception("the database system is shutting down"))

    consumer = FakeConsumer([[Record(5, b"c1", b"a")]])
    consumer.committed_offsets[TP] = 5
    producer = FakeProducer()
    with pytest.raises(OperationalError):
        await _worker(consumer, producer, handle).poll_once()
    assert consumer.committed_offsets == {TP: 5} and consumer.seeks == [(TP, 5)]
    assert producer.sent == []


async def test_a_lost_partition_does_not_fail_the_batch() -> None:
    async def handle(values: list[str]) -> None:
        return None

    consumer = FakeConsumer([[Record(1, b"c1", b"a")]])
    consumer.commit_error = CommitFailedError("rebalanced")
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once()
    await worker.flush()


class SlowCommits(FakeConsumer):
    """A consumer whose commits wait until `landing` is set, recording their order."""

    def __init__(self, batches: list[list[Record]]) -> None:
        super().__init__(batches)
        self.landing = asyncio.Event()
        self.order: list[int] = []

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        await self.landing.wait()
        await super().commit(offsets)
        self.order.append(offsets[TP].offset)


async def test_the_next_batch_is_handled_while_the_last_offsets_are_committed_and_commits_land_in_order() -> None:
    handled: list[list[str]] = []

    async def handle(values: list[str]) -> None:
        handled.append(values)

    consumer = SlowCommits([[Record(1, b"c1", b"a")], [Record(2, b"c2", b"b")]])
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once()
    assert consumer.committed_offsets == {}  # on its way
    second = asyncio.create_task(worker.poll_once())
    await asyncio.sleep(0.01)
    assert handled == [["a"], ["b"]]  # handled before the first batch's commit landed
    assert not second.done()  # its own commit waits for the one before
    consumer.landing.set()
    assert await second
    await worker.flush()
    assert consumer.order == [2, 3] and consumer.committed_offsets == {TP: 3}


async def test_a_commit_that_failed_raises_at_the_next_batch_and_the_next_commit_covers_it() -> None:
    handled: list[list[str]] = []

    async def handle(values: list[str]) -> None:
        handled.append(values)

    consumer = FakeConsumer([[Record(1, b"c1", b"a")], [Record(2, b"c2", b"b")], [Record(3, b"c3", b"c")]])
    consumer.commit_error = KafkaConnectionError("the coordinator is away")
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once()
    with pytest.raises(KafkaConnectionError):  # reported as the phase's transient failure
        await worker.poll_once()
    assert handled == [["a"], ["b"]] and consumer.committed_offsets == {}
    consumer.commit_error = None
    assert await worker.poll_once()  # the consumer went on from its position: nothing skipped
    await worker.flush()
    assert handled == [["a"], ["b"], ["c"]] and consumer.committed_offsets == {TP: 4}


async def test_closing_commits_the_offsets_on_their_way_and_logs_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    async def handle(values: list[str]) -> None:
        return None

    consumer = SlowCommits([[Record(7, b"c1", b"a")]])
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once()
    consumer.landing.set()
    await worker.close()
    assert consumer.committed_offsets == {TP: 8}
    consumer.batches.append([Record(8, b"c1", b"b")])
    consumer.commit_error = KafkaConnectionError("the coordinator is away")
    assert await worker.poll_once()
    await worker.close()  # does not raise: the next consumer repeats the batch
    assert consumer.committed_offsets == {TP: 8}
    assert "the last offsets were not committed" in caplog.text


def _pg_error(cls: type[Exception]) -> DBAPIError:
    return DBAPIError("SELECT 1", {}, cls("x"))


@pytest.mark.parametrize("exc", [
    OperationalError("SELECT", {}, Exception("gone")),
    _pg_error(asyncpg.exceptions.AdminShutdownError),
    _pg_error(asyncpg.exceptions.DeadlockDetectedError),
    _pg_error(asyncpg.exceptions.LockNotAvailableError),
    _pg_error(asyncpg.exceptions.CannotConnectNowError),
    ConnectionRefusedError(111, "refused"),
    TimeoutError(),
    KafkaConnectionError("no broker"),
])
def test_outages_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", [
    KeyError("x"), ValueError("invalid literal for int()"), IntegrityError("INSERT", {}, Exception("duplicate")),
    _pg_error(asyncpg.exceptions.UndefinedColumnError),
])
def test_bugs_and_bad_data_are_not(exc: BaseException) -> None:
    assert not is_transient(exc)


# --- the check right before SMTP -----------------------------------------------------------------

OFFERS = SendAudience(("opted_in",), True, "offers")
FACTS = SendFacts("a@example.com", "active", "opted_in", "A@example.com", None, (), ())


@pytest.mark.parametrize(("change", "reason"), [
    ({}, None),
    ({"run_status": "completed"}, None),  # the last step: the run completed when it was decided
    ({"run_status": "exited"}, "run_ended:exited"),
    ({"consent": "opted_out"}, "consent:opted_out"),
    ({"pending_opt_outs": ("*",)}, "consent:opted_out"),  # acknowledged, not applied yet
    ({"unsubscribed_categories": ("offers",)}, "preference:offers"),
    ({"pending_opt_outs": ("offers",)}, "preference:offers"),
    ({"pending_opt_outs": ("news",)}, None),
    ({"suppressed": "bounced"}, "suppressed:bounced"),
    ({"email": "other@example.com"}, "address_changed"),
    ({"email": None}, "no_email"),
])
def test_a_send_is_still_wanted_or_says_why_not(change: dict[str, Any], reason: str | None) -> None:
    assert still_wanted(OFFERS, FACTS.__class__(**{**FACTS.__dict__, **change})) == reason


def test_a_transactional_email_ignores_categories_but_not_an_opt_out() -> None:
    confirm = SendAudience(("pending",), False, "news")
    facts = SendFacts("a@example.com", "active", "pending", "a@example.com", None, ("news",), ("news",))
    assert still_wanted(confirm, facts) is None
    assert still_wanted(confirm, SendFacts(**{**facts.__dict__, "pending_opt_outs": ("*",)})) == "consent:opted_out"


def test_a_task_loop_waits_for_its_wake_up_or_its_idle_time_and_backs_off_after_a_failure() -> None:
    calls: list[str] = []
    errors: list[tuple[str, str]] = []

    async def scenario() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        results: Iterator[int | Exception] = iter([1, 0, 0, RuntimeError("bug")])

        async def step() -> int:
            calls.append("step")
            result = next(results, None)
            if result is None:
                stop.set()
                return 0
            if isinstance(result, Exception):
                raise result
            return result

        task = asyncio.create_task(run_task("relay", step, stop, wake, 30.0, lambda n, k: errors.append((n, k))))
        await asyncio.sleep(0.05)
        assert len(calls) == 2  # 1 (busy: at once again), then 0: waiting
        wake.set()  # woken: no 30 s wait
        await asyncio.sleep(0.05)
        assert len(calls) == 3
        wake.set()  # the failing step, the backoff (0.2 s), then the last step, which stops the loop
        await asyncio.wait_for(task, timeout=5)

    asyncio.run(scenario())
    assert errors == [("relay", "error")] and len(calls) == 5


class PositionedConsumer(FakeConsumer):
    """One partition read two records at a time from a position that `seek` moves, as a real consumer is."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__([])
        self.records = records
        self.position = 0
        self.reads: list[int] = []  # the position of each read

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[TopicPartition, list[Record]]:
        found = [r for r in self.records if r.offset >= self.position][:2]
        self.reads.append(self.position)
        await asyncio.sleep(0)
        if not found:
            return {}
        self.position = found[-1].offset + 1
        return {TP: found}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        super().seek(tp, offset)
        self.position = offset


async def test_the_next_batch_is_read_and_decoded_while_one_is_handled() -> None:
    reads_while_handling: list[list[int]] = []

    async def handle(values: list[str]) -> None:
        await asyncio.sleep(0.01)  # the database's round trips
        reads_while_handling.append(list(consumer.reads))

    consumer = PositionedConsumer([Record(n, b"c", f"m{n}".encode()) for n in range(4)])
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once() and await worker.poll_once()
    assert not await worker.poll_once()
    await worker.close()
    # while the first batch (offsets 0, 1) was handled, the second (2, 3) had been read already
    assert reads_while_handling[0] == [0, 2]
    assert consumer.committed_offsets == {TP: 4}


async def test_a_transient_failure_drops_the_batch_read_ahead_and_reads_again_from_the_last_commit() -> None:
    handled: list[list[str]] = []
    failures = [OperationalError("SELECT", {}, Exception("the database system is shutting down"))]

    async def handle(values: list[str]) -> None:
        await asyncio.sleep(0.01)
        if failures and values == ["m2", "m3"]:
            raise failures.pop()
        handled.append(values)

    consumer = PositionedConsumer([Record(n, b"c", f"m{n}".encode()) for n in range(6)])
    worker = _worker(consumer, FakeProducer(), handle)
    assert await worker.poll_once()
    await worker.flush()
    with pytest.raises(OperationalError):
        await worker.poll_once()  # m2, m3 fail while m4, m5 are read ahead
    assert consumer.seeks == [(TP, 2)]
    while await worker.poll_once():
        pass
    await worker.close()
    assert handled == [["m0", "m1"], ["m2", "m3"], ["m4", "m5"]]  # nothing skipped, nothing twice
    assert consumer.committed_offsets == {TP: 6}
    # counted as handed to the handler: m2 and m3 twice (they were), m4 and m5 once (their read ahead dropped)
    assert _count(worker.consumed) == 8
