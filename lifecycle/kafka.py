"""Kafka adapter helpers shared by the services (aiokafka).

Events are keyed by customer_id, so every event of one customer lands on one partition
and is consumed in order. Values are `Event.to_message()` bytes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)
from prometheus_client import Counter, Gauge

from lifecycle.events import Event
from lifecycle.seal import Seal
from lifecycle.settings import Settings

log = logging.getLogger(__name__)


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """An idempotent producer that only reports success once all replicas have the record.

    Must be called inside a running event loop (aiokafka binds to it).
    """
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        # Keys and values are already bytes: no serializers.
        key_serializer=None,
        value_serializer=None,
        linger_ms=5,  # small batching window; the API waits for acks anyway
        request_timeout_ms=10_000,
    )


# The broker no longer agrees with this producer's sequence numbers: a batch that expired while the
# broker was away, a broker that lost the producer's state. aiokafka never recovers from these (every
# later send fails alike, aiokafka#1017); a new producer, with a new producer id, starts a new sequence.
SEQUENCE_LOST = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch)
PRODUCER_RENEWALS = Counter("lifecycle_kafka_producer_renewals_total",
                            "Kafka producers replaced because the broker lost their sequence (a new producer id)")
RENEW_RETRY_SECONDS = 1.0


class RenewingProducer:
    """An idempotent producer that replaces itself when the broker lost its sequence.

    `send` returns the delivery as aiokafka does; a delivery that fails that way fails as it is (the
    caller retries) and the next sends go through a new producer. Everything else is aiokafka's."""

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self._current = factory()
        self._renewing: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> Any:
        return self._current.client

    async def start(self) -> None:
        await self._current.start()

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        await asyncio.gather(*self._retired, return_exceptions=True)
        await self._current.stop()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        if self._renewing is not None:
            await asyncio.shield(self._renewing)
        producer = self._current
        delivery: asyncio.Future[Any] = await producer.send(topic, value=value, key=key, headers=headers)
        # A callback rather than a task wrapping each delivery (a task per message was a tenth of the
        # API's CPU); registered first, it runs before the caller learns of the failure.
        delivery.add_done_callback(functools.partial(self._delivered, producer))
        return delivery

    def _delivered(self, producer: AIOKafkaProducer, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        exc = delivery.exception()
        if isinstance(exc, SEQUENCE_LOST) and producer is self._current and self._renewing is None:
            log.warning("Kafka lost this producer's sequence (%s): starting a new producer", type(exc).__name__)
            self._renewing = asyncio.create_task(self._renew(producer))

    async def _renew(self, broken: AIOKafkaProducer) -> None:
        try:
            while True:
                fresh = self._factory()
                try:
                    await fresh.start()
                    break
                except Exception as exc:  # Kafka away: the new producer is tried again
                    log.warning("starting a new Kafka producer failed: %s; retrying", exc)
                    await stop_quietly(fresh)
                    await asyncio.sleep(RENEW_RETRY_SECONDS)
            self._current = fresh
            PRODUCER_RENEWALS.inc()
        finally:
            self._renewing = None
        retiring = asyncio.create_task(stop_quietly(broken, timeout=30))  # its queued batches fail to their callers
        self._retired.add(retiring)
        retiring.add_done_callback(self._retired.discard)


async def stop_quietly(producer: RenewingProducer | AIOKafkaProducer, timeout: float | None = None) -> None:
    """Stop a producer being given up (half-started, or replaced): its failure would hide the one that matters."""
    try:
        async with asyncio.timeout(timeout):
            await producer.stop()
    except Exception as exc:
        log.debug("stopping a Kafka producer failed: %s", exc)


def make_renewing_producer(settings: Settings) -> RenewingProducer:
    return RenewingProducer(lambda: make_producer(settings))


def make_consumer(settings: Settings, topic: str, group: str) -> AIOKafkaConsumer:
    """A consumer that commits only when told to (after the work is durably done)."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # a member that died is noticed after this long, and its partitions move to the others
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.kafka_session_timeout_ms // 3),
        # Our producers are not transactional today; read_committed costs nothing and stays
        # correct if one ever is.
        isolation_level="read_committed",
    )


async def ensure_topics(settings: Settings) -> None:
    """Create the events, triggers and dead-letter topics when missing (replication 1).

    Safe to call from several services at once: a topic created by someone else between
    our listing and our request is fine.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [settings.events_topic, settings.triggers_topic, settings.dlq_topic]
        missing = [name for name in dict.fromkeys(wanted) if name not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics(
                [NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1) for name in missing]
            )
        except TopicAlreadyExistsError:
            return
        # Per-topic failures come back as error codes, not exceptions.
        for entry in getattr(response, "topic_errors", []):
            name, code = entry[0], entry[1]
            if not code:
                log.info("created Kafka topic %s with %d partitions", name, settings.topic_partitions)
                continue
            error = for_code(code)
            if error is TopicAlreadyExistsError:
                continue
            detail = entry[2] if len(entry) > 2 and entry[2] else error.__name__
            raise error(f"could not create Kafka topic {name}: {detail}")
    finally:
        await admin.close()


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Mark a failure as seen so asyncio does not log "exception was never retrieved".
    if not future.cancelled():
        future.exception()


async def publish_events(producer: RenewingProducer | AIOKafkaProducer, topic: str, events: Sequence[Event],
                         seal: Seal | None = None) -> None:
    """Send every event (key = customer_id) and return once Kafka acknowledged all of them. With a
    `seal`, each message carries it: only events that went through validation are published.

    Raises the first failure. On failure or cancellation some events may still have been
    written; that is fine because consumers deduplicate on event_id.
    """
    futures: list[asyncio.Future[Any]] = []
    try:
        # Queue everything first so the records share batches, then wait for all acks.
        for event in events:
            value = event.to_message()
            futures.append(await producer.send(topic, value=value, key=event.customer_id.encode("utf-8"),
                                               headers=seal.headers(value) if seal is not None else None))
    except BaseException:
        _all_seen(futures)
        raise
    await delivered(futures)


async def delivered(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every delivery; raise the first failure (every other one marked as seen)."""
    try:
        # One after the other rather than gather(), which wraps and calls back on each: the acks come a
        # batch at a time, so all but the first few are done already when awaited.
        for future in futures:
            await future
    except BaseException:
        _all_seen(futures)
        raise


def _all_seen(futures: Sequence[asyncio.Future[Any]]) -> None:
    for future in futures:
        future.add_done_callback(_retrieve)


async def report_lag(consumer: AIOKafkaConsumer, gauge: Gauge) -> None:
    """Messages not yet consumed, per partition this consumer owns now (a rebalance drops the others)."""
    gauge.clear()
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is not None:
            gauge.labels(partition=str(tp.partition)).set(end - await consumer.position(tp))


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The topic's partitions as the broker describes them; none when the topic does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return [TopicPartition(topic, p["partition"]) for d in described if d.get("error_code") == 0
            for p in d.get("partitions", [])]


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every committed record of the topic, each partition from its beginning to its end as of now."""
    partitions = await topic_partitions(settings, topic)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                isolation_level="read_committed")
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for found in batch.values():
                records.extend(found)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
    finally:
        await consumer.stop()
    return records
