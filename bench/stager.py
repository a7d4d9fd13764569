"""stager_events_per_s: 100,000 events (sign-ups, product views, cart updates, orders) already in Kafka,
applied by one stager from its first poll to its last commit.

The events are written straight to the events topic while the stager is stopped, with a plain producer,
in the API's wire format (Event.to_message(), keyed by customer id, sealed as the API seals them). Then
the stager starts. Its own counter `lifecycle_stager_events_consumed_total`, scraped from its /metrics
every 50 ms, marks the first poll that returned events; the end is the first look at which the stager's
group has committed every offset up to the end of the topic and processed_events holds every event. The
raw baseline is a plain aiokafka consumer reading the same messages (no decoding, no database).
"""

from __future__ import annotations

import time

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import STAGER_EVENTS, Results, Row, Scale, rate, say
from bench.stack import BenchStack, end_offsets, group_lag, metric, reset, scalar, wait_until
from bench.workload import batches, keyed_messages, mixed_events, parsed
from lifecycle.seal import Seal
from lifecycle.settings import Settings

CONSUMED = "lifecycle_stager_events_consumed_total"
APPLIED = "lifecycle_stager_events_applied_total"


async def produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> None:
    """Written as the ingest API writes them: sealed with the stack's signing key (lifecycle.seal)."""
    seal = Seal.from_settings(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=5)
    await producer.start()
    try:
        for chunk in batches(messages, 1000):
            futures = [await producer.send(settings.events_topic, value, key=key,
                                           headers=seal.headers(value) if seal is not None else None)
                       for key, value in chunk]
            for future in futures:
                await future
    finally:
        await producer.stop()


async def raw_consume(settings: Settings, starts: dict[TopicPartition, int], count: int) -> float:
    """Seconds for a plain consumer to read `count` messages from the offsets `starts`."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    try:
        tps = list(starts)
        consumer.assign(tps)
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        read = 0
        started = time.perf_counter()
        while read < count:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            read += sum(len(messages) for messages in batch.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def run(stack: BenchStack, scale: Scale, results: Results) -> None:
    settings = stack.settings
    count = scale.count(STAGER_EVENTS, 10)
    say(f"stager: {count} events (sign-ups, views, carts, orders) written to Kafka with the stager stopped")
    stack.only((), phase="stager")
    await reset(stack)
    before = await end_offsets(settings, settings.events_topic)
    events = parsed(mixed_events("stg", count)[:count])
    await produce(settings, keyed_messages(events))
    ends = await end_offsets(settings, settings.events_topic)
    written = sum(ends.values()) - sum(before.values())
    if written != count:
        raise RuntimeError(f"stager phase: {written} messages written, expected {count}")
    say("  raw baseline: a plain aiokafka consumer reads them")
    raw = rate(count, await raw_consume(settings, dict(before), count))
    engine = await stack.database()
    spawned = time.time()
    say("  starting the stager; timing from its first poll that returns events to its last commit")
    stack.start("stager", wait=False, phase="stager")
    first_poll: float | None = None
    url = stack.url("stager", "/metrics")
    async with httpx.AsyncClient(timeout=2) as client:
        async def first() -> tuple[bool, str]:
            nonlocal first_poll
            if not stack.pid("stager"):
                raise RuntimeError(f"the stager exited; see {stack.run_dir / 'logs' / 'stager.log'}")
            consumed = await metric(client, url, CONSUMED)
            if consumed:
                first_poll = time.time()
            return bool(consumed), "no event consumed yet"

        await wait_until(first, "stager start", 120, interval=0.02)

        async def done() -> tuple[bool, str]:
            applied = await metric(client, url, APPLIED) or 0
            if applied < count:
                return False, f"{applied:.0f}/{count} applied"
            lag = await group_lag(settings, settings.stager_group, ends)
            processed = await scalar(engine, "SELECT count(*) FROM processed_events")
            return lag == 0 and processed >= count, f"{processed}/{count} in processed_events, {lag} not committed"

        # looked at every 0.25 s, not 0.05: each look scrapes the stager's /metrics, which at 20 a second
        # took 4% of its CPU (Prometheus scrapes every 15 to 30 s); the end is found up to 0.25 s late
        finished = await wait_until(done, "stager", 1800, interval=0.25)
    stack.wait_healthy("stager")
    assert first_poll is not None
    applied = rate(count, finished - first_poll)
    results.set("stager_events_per_s", applied)
    results.rows.append(Row(f"stager, events applied/s ({count} in Kafka, first poll to last commit)", applied,
                            raw, "/s"))
    say(f"  {applied:,.0f} events/s from the first poll ({finished - first_poll:.1f} s; "
        f"{rate(count, finished - spawned):,.0f}/s counting the process start), "
        f"plain consumer {raw:,.0f}/s")
    stack.stop("stager")
