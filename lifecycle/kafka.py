"""Kafka adapter helpers shared by the services (aiokafka).

Events are keyed by customer_id, so every event of one customer lands on one partition
and is consumed in order. Values are `Event.to_message()` bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from prometheus_client import Counter, Gauge

from lifecycle.events import Event
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


async def publish_events(producer: AIOKafkaProducer, topic: str, events: Sequence[Event]) -> None:
    """Send every event (key = customer_id) and return once Kafka acknowledged all of them.

    Raises the first failure. On failure or cancellation some events may still have been
    written; that is fine because consumers deduplicate on event_id.
    """
    futures: list[asyncio.Future[Any]] = []
    try:
        # Queue everything first so the records share batches, then wait for all acks.
        for event in events:
            futures.append(await producer.send(topic, value=event.to_message(), key=event.customer_id.encode("utf-8")))
        await asyncio.gather(*futures)
    except BaseException:
        for future in futures:
            future.add_done_callback(_retrieve)
        raise


T = TypeVar("T")


async def poll_decoded(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    decode: Callable[[bytes], T],
    consumed: Counter,
    unreadable: Counter,
) -> tuple[bool, list[T]]:
    """One consumer batch, decoded: (anything read, the readable messages).

    A message that cannot be decoded is logged and counted, never retried: a poison
    message must not stop the stream behind it.
    """
    batch = await consumer.getmany(timeout_ms=int(settings.poll_interval_seconds * 1000),
                                   max_records=settings.batch_size)
    decoded: list[T] = []
    for partition, messages in batch.items():
        consumed.inc(len(messages))
        for message in messages:
            try:
                decoded.append(decode(message.value))
            except Exception as exc:
                unreadable.inc()
                log.error("unreadable message skipped: %s", exc,
                          extra={"topic": partition.topic, "partition": partition.partition, "offset": message.offset})
    return bool(batch), decoded


async def report_lag(consumer: AIOKafkaConsumer, gauge: Gauge) -> None:
    """Messages not yet consumed, per partition this consumer owns now (a rebalance drops the others)."""
    gauge.clear()
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        if end is not None:
            gauge.labels(partition=str(tp.partition)).set(end - await consumer.position(tp))
