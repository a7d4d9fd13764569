"""Consuming a topic without losing a message and without one message stopping the rest.

`TopicWorker.poll_once` reads a batch, hands it to the service in one go and commits the offsets
after: that commit is sent while the next batch is read and handled (each commit waits for the
one before, so they land in order). A crash before it lands repeats work already done, which the
services deduplicate by id; nothing is skipped. What goes wrong is one of two things:

- a transient failure (PostgreSQL restarting, a connection terminated, Kafka unreachable, a lock
  or statement timeout): nothing is committed, the consumer is rewound to its committed offsets and
  the caller backs off; the batch comes again (the services deduplicate by id);
- anything else: the batch is handled again one message at a time, each a few times, and a message
  that still fails is a poison message: it goes to the dead-letter topic with the error, is counted,
  and the stream goes on behind it. `lifecycle dlq list|replay` shows and replays them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError, RebalanceInProgressError
from aiokafka.structs import OffsetAndMetadata
from prometheus_client import Counter
from sqlalchemy import exc as sa_exc

from lifecycle.clock import Clock
from lifecycle.db.driver import asyncpg_connection_gone
from lifecycle.kafka import RenewingProducer
from lifecycle.settings import Settings

log = logging.getLogger("lifecycle.consuming")

DEAD_LETTER_VERSION = 1
# SQLSTATE classes and codes that say "try again": connection (08), transaction rollback such as a
# deadlock or serialization failure (40), operator intervention such as a terminated backend or a
# server shutting down (57), lock not available (55P03)
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "57")
_TRANSIENT_SQLSTATES = ("55P03", "53300")


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` says "the database or the broker is not there right now", not "this input is bad"."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError
                      | sa_exc.DisconnectionError):
            return True
        code = _sqlstate(current)
        if code is not None and (code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES):
            return True
        if isinstance(current, OSError | TimeoutError | KafkaError | ConnectionError):
            return True
        if asyncpg_connection_gone(current):
            return True
        current = current.__cause__ or current.__context__ or getattr(current, "orig", None)
    return False


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be handled, kept whole so that it can be replayed."""

    service: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    error: str
    attempts: int
    failed_at: str

    def to_message(self) -> bytes:
        try:
            text, encoding = self.value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(self.value).decode("ascii"), "base64"
        return json.dumps({
            "schema_version": DEAD_LETTER_VERSION, "service": self.service, "topic": self.topic,
            "partition": self.partition, "offset": self.offset,
            "key": self.key.decode("utf-8", "replace") if self.key is not None else None,
            "value": text, "value_encoding": encoding, "error": self.error, "attempts": self.attempts,
            "failed_at": self.failed_at,
        }, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_message(cls, raw: bytes) -> DeadLetter:
        data: dict[str, Any] = json.loads(raw)
        value = data["value"].encode("utf-8") if data.get("value_encoding") == "utf-8" \
            else base64.b64decode(data["value"])
        key = data.get("key")
        return cls(data["service"], data["topic"], int(data["partition"]), int(data["offset"]),
                   key.encode("utf-8") if isinstance(key, str) else None, value, str(data["error"]),
                   int(data["attempts"]), str(data["failed_at"]))


T = TypeVar("T")


# Messages decoded between two looks at the event loop while reading ahead
_DECODE_SLICE = 50


@dataclass(frozen=True)
class _Unreadable:
    """Why a message could not be decoded: it goes to the dead-letter topic when its batch is handled."""

    error: Exception


_Read = tuple[dict[TopicPartition, list[ConsumerRecord[Any, Any]]],
              list[tuple[TopicPartition, ConsumerRecord[Any, Any], "T | _Unreadable"]]]


class TopicWorker(Generic[T]):
    """One consumer's loop step: poll, decode, handle, commit; poison to the dead-letter topic.

    `decode` gets each message's value and headers; `tombstone` each message without a value (a
    customer erased, lifecycle/privacy.py) by its key."""

    def __init__(self, consumer: AIOKafkaConsumer, producer: RenewingProducer, settings: Settings, service: str,
                 clock: Clock, decode: Callable[[bytes, Sequence[tuple[str, bytes]]], T],
                 handle: Callable[[list[T]], Awaitable[object]],
                 consumed: Counter, unreadable: Counter, dead_lettered: Counter, attempts: int = 3,
                 tombstone: Callable[[bytes | None], T] | None = None) -> None:
        self.consumer = consumer
        self.producer = producer
        self.settings = settings
        self.service = service
        self.clock = clock
        self.decode = decode
        self.handle = handle
        self.consumed = consumed
        self.unreadable = unreadable
        self.dead_lettered = dead_lettered
        self.attempts = attempts
        self.tombstone = tombstone
        self._rewind_pending = False
        self._committing: asyncio.Task[None] | None = None  # the last batch's offsets, on their way
        self._reading: asyncio.Task[_Read[T] | None] | None = None  # the next batch, read ahead

    async def poll_once(self) -> bool:
        """Handle one batch (True), or find nothing to read (False). Raises what is transient, after rewinding."""
        if self._rewind_pending:
            await self.rewind()
        reading, self._reading = self._reading, None
        read = await (reading if reading is not None else self._read())
        if read is None:
            return False
        batch, decoded = read
        # counted when handled, not when read ahead: a rewind drops what was read ahead, and it is read again
        self.consumed.inc(len(decoded))
        # the next batch is read and decoded while this one waits on the database
        self._reading = asyncio.create_task(self._read())
        try:
            readable: list[tuple[TopicPartition, ConsumerRecord[Any, Any], T]] = []
            for tp, record, value in decoded:
                if isinstance(value, _Unreadable):  # a message nobody can read is poison at once
                    self.unreadable.inc()
                    await self._dead_letter(tp, record, f"unreadable: {value.error}", 1)
                else:
                    readable.append((tp, record, value))
            try:
                await self.handle([value for _, _, value in readable])
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.warning("a batch of %d failed (%s); handling its messages one by one", len(readable), exc)
                for tp, record, value in readable:
                    await self._one(tp, record, value)
        except Exception:
            await self.rewind()
            raise
        await self.flush()  # the previous batch's commit, long done by now: commits land in order
        offsets = {tp: OffsetAndMetadata(found[-1].offset + 1, "") for tp, found in batch.items() if found}
        # not awaited here: a commit is a round trip to the group coordinator (8 ms, a sixth of a
        # stager's batch on the benchmark), and the offsets only say where a restart begins
        self._committing = asyncio.create_task(self._commit(offsets))
        return True

    async def _read(self) -> _Read[T] | None:
        """The next batch, each message decoded (or why it could not be); None when there is none."""
        batch = await self.consumer.getmany(timeout_ms=int(self.settings.poll_interval_seconds * 1000),
                                            max_records=self.settings.batch_size)
        if not batch:
            return None
        decoded: list[tuple[TopicPartition, ConsumerRecord[Any, Any], T | _Unreadable]] = []
        for tp, found in batch.items():
            for record in found:
                if len(decoded) % _DECODE_SLICE == _DECODE_SLICE - 1:
                    await asyncio.sleep(0)  # read ahead in slices: the batch being handled goes first
                try:
                    if record.value is None and self.tombstone is not None:
                        decoded.append((tp, record, self.tombstone(record.key)))
                    else:
                        decoded.append((tp, record, self.decode(record.value, record.headers)))
                except Exception as exc:
                    decoded.append((tp, record, _Unreadable(exc)))
        return batch, decoded

    async def _drop_read_ahead(self) -> None:
        """Forget the batch read ahead (its messages come again from wherever the consumer is sent)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.cancel()
            await asyncio.wait([reading])  # a cancellation of the caller's own still comes through
            if not reading.cancelled():
                reading.exception()  # read: what it raised no longer matters

    async def flush(self) -> None:
        """Wait for the offsets on their way to the broker (before the consumer stops). A commit
        that failed raises here: the next one covers its offsets too."""
        committing, self._committing = self._committing, None
        if committing is not None:
            await committing

    async def _one(self, tp: TopicPartition, record: ConsumerRecord[Any, Any], value: T) -> None:
        error: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                await self.handle([value])
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                error = exc
                await asyncio.sleep(0.05 * attempt)
        assert error is not None
        log.error("message %s/%d@%d failed %d times, sent to %s: %s", tp.topic, tp.partition, record.offset,
                  self.attempts, self.settings.dlq_topic, error)
        await self._dead_letter(tp, record, f"{type(error).__name__}: {error}"[:2000], self.attempts)

    async def _dead_letter(self, tp: TopicPartition, record: ConsumerRecord[Any, Any], error: str,
                           attempts: int) -> None:
        letter = DeadLetter(self.service, tp.topic, tp.partition, record.offset, record.key, record.value or b"",
                            error, attempts, (await self.clock.now()).isoformat())
        # acknowledged before the offset moves on: a dead letter is never lost either
        await (await self.producer.send(self.settings.dlq_topic, value=letter.to_message(), key=record.key))
        self.dead_lettered.inc()

    async def close(self) -> None:
        """The offsets on their way committed, before the consumer stops; a failure is logged (the
        next process repeats what they covered)."""
        await self._drop_read_ahead()
        try:
            await self.flush()
        except Exception as exc:
            log.warning("the last offsets were not committed (%s): the next consumer repeats their batch", exc)

    async def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # the partition moved to another member, which reads from the last commit: the work done
            # here is found again there and deduplicated
            log.info("offsets not committed (%s): the next owner repeats this batch harmlessly", exc)

    async def rewind(self) -> None:
        """Back to the committed offsets of every assigned partition, so a failed batch comes again."""
        await self._drop_read_ahead()
        with contextlib.suppress(Exception):  # a commit that failed: back to the one before, which is safe
            await self.flush()
        try:
            for tp in self.consumer.assignment():
                committed = await self.consumer.committed(tp)
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
            self._rewind_pending = False
        except Exception as exc:  # the broker is away too: rewind before the next poll
            self._rewind_pending = True
            log.warning("could not rewind the consumer yet: %s", exc)


class Backoff:
    """How long a loop waits after a failure: doubling from `first` to `longest`, reset by a success."""

    def __init__(self, first: float = 0.2, longest: float = 5.0) -> None:
        self.first = first
        self.longest = longest
        self.current = first

    def reset(self) -> None:
        self.current = self.first

    async def wait(self, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=self.current)
        self.current = min(self.longest, self.current * 2)


def _report(name: str, exc: Exception, errors: Callable[[str, str], None]) -> None:
    """A failed phase or task: counted as `transient` (a dependency away) or `error`, and logged."""
    kind = "transient" if is_transient(exc) else "error"
    errors(name, kind)
    if kind == "transient":
        log.warning("%s: %s: %s; retrying", name, type(exc).__name__, (str(exc).splitlines() or [""])[0])
    else:
        log.exception("%s failed; retrying", name)


async def run_phases(phases: list[tuple[str, Callable[[], Awaitable[object]]]], stop: asyncio.Event,
                     errors: Callable[[str, str], None]) -> None:
    """A service's loop: the phases in turn until `stop`. A failing phase is logged and counted
    (`errors(phase, "transient" | "error")`) and the loop backs off; it never ends the process."""
    backoff = Backoff()
    while not stop.is_set():
        failed = False
        for name, phase in phases:
            if stop.is_set():
                break
            try:
                await phase()
            except Exception as exc:
                failed = True
                _report(name, exc, errors)
        if failed:
            await backoff.wait(stop)
        else:
            backoff.reset()


async def run_task(name: str, step: Callable[[], Awaitable[int]], stop: asyncio.Event, wake: asyncio.Event,
                   idle_seconds: float, errors: Callable[[str, str], None]) -> None:
    """A loop of its own beside a service's phases: `step` until `stop`; after a step that did
    nothing (returned 0) it waits for `wake` or `idle_seconds`, whichever comes first. A failing
    step is logged and counted like a phase, and the loop backs off."""
    backoff = Backoff()
    while not stop.is_set():
        wake.clear()  # before the step: a wake-up during it is not lost
        try:
            done = await step()
        except Exception as exc:
            _report(name, exc, errors)
            await backoff.wait(stop)
            continue
        backoff.reset()
        if not done:
            waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=idle_seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
