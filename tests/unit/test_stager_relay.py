"""Outbox rows carry their customer's partition, computed as Kafka's default partitioner does."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from services.stager.worker import partition_of


def test_a_customers_partition_is_the_one_kafka_gives_its_key() -> None:
    partitioner = DefaultPartitioner()
    for count in (1, 3, 6, 12):
        partitions = list(range(count))
        for n in range(200):
            customer = f"customer-{n}-é"
            assert partition_of(customer, count) == partitioner(customer.encode(), partitions, partitions)
