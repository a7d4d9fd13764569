"""Kafka as integration tests look at it: where a topic ends now."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition

from lifecycle.kafka import topic_partitions
from lifecycle.settings import Settings


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    """Each partition's end offset: equal before and after, nothing was published there."""
    partitions = await topic_partitions(settings, topic)
    assert partitions, f"no partitions of {topic}"  # an empty answer would make every comparison pass
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        return dict(await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()
