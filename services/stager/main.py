"""Run the stager: consume events, apply due changes, relay the outbox, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import make_clock
from lifecycle.consuming import TopicWorker, run_phases, run_task
from lifecycle.db.engine import make_engine
from lifecycle.db.notify import OUTBOX_CHANNEL, Listener
from lifecycle.db.retention import prune
from lifecycle.events import Event
from lifecycle.kafka import ensure_topics, make_consumer, make_renewing_producer, report_lag
from lifecycle.privacy import Tombstone, read_tombstone, split_at_tombstones
from lifecycle.probes import start_probe_server
from lifecycle.runtime import (
    dependencies_ready,
    retry_until,
    run_service,
    settle_heap,
    stop_on_signals,
    wait_for_clock,
    wait_for_database,
)
from lifecycle.seal import Seal
from lifecycle.settings import Settings
from lifecycle.trusted import decode_sealed_event, decode_trusted_event
from services.stager import metrics
from services.stager.sql import DUE_BACKLOG, OUTBOX_BACKLOG
from services.stager.worker import StagerStore, rule_config

log = logging.getLogger("lifecycle.stager")


async def _refresh_gauges(engine: AsyncEngine, clock_now: object) -> None:
    async with engine.connect() as conn:
        row = (await conn.execute(OUTBOX_BACKLOG)).one()
        metrics.OUTBOX_WAITING.set(row.n)
        metrics.OUTBOX_OLDEST.set(float(row.age or 0.0))
        due = (await conn.execute(DUE_BACKLOG, {"now": clock_now})).scalar()
        metrics.DUE_WAITING.set(due or 0)


async def serve(settings: Settings) -> None:
    engine = make_engine(settings, "stager")
    clock = make_clock(settings.clock, engine)
    await wait_for_database(engine)
    await retry_until("Kafka", lambda: ensure_topics(settings))
    store = StagerStore(engine, clock, rule_config(settings), settings.attribution_days)
    consumer = make_consumer(settings, settings.events_topic, settings.stager_group)
    producer = make_renewing_producer(settings)
    await retry_until("Kafka consumer", consumer.start)
    await retry_until("Kafka producer", producer.start)

    relay_wake = asyncio.Event()  # set when this stager wrote triggers: its relay looks at once

    async def apply(events: list[Event | Tombstone]) -> None:
        started = time.perf_counter()
        if store.partitions is None:  # known once the consumer has the topic's metadata
            found = consumer.partitions_for_topic(settings.events_topic)
            store.partitions = len(found) if found else None
        for part in split_at_tombstones(events):
            if isinstance(part, Tombstone):
                await store.erase(part.customer_id)
            else:
                await store.apply_events(part)
        relay_wake.set()
        metrics.BATCH_SIZE.observe(len(events))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    seal = Seal.from_settings(settings)
    if seal is None:
        log.warning("no signing key fit to verify the ingest API's seal (the development secret outside a local "
                    "stack?): every event is checked again as it is read")

    def decode(value: bytes, headers: Sequence[tuple[str, bytes]]) -> Event | Tombstone:
        # the API sealed what it validated: read as written; anything else goes through every check
        if seal is not None and seal.verifies(value, headers):
            metrics.READ_SEALED.inc()
            return decode_sealed_event(value)
        metrics.READ_CHECKED.inc()
        return decode_trusted_event(value)

    worker = TopicWorker(consumer, producer, settings, "stager", clock, decode, apply,
                         metrics.CONSUMED, metrics.UNREADABLE, metrics.DEAD_LETTERED, tombstone=read_tombstone)

    async def ready() -> bool:
        return await dependencies_ready(engine, producer.client.fetch_all_metadata)

    server, server_task = start_probe_server(settings.ingest_host, settings.stager_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)
    settle_heap()
    log.info("stager started: topic %s, group %s, clock %s", settings.events_topic, settings.stager_group,
             settings.clock)
    last_housekeeping = 0.0

    async def due_changes() -> None:
        applied = await store.apply_due_changes(settings.batch_size)
        if applied:
            metrics.DUE_APPLIED.inc(applied)
            relay_wake.set()

    async def relay() -> int:
        # the partitions this stager consumes now: their customers' triggers are its to publish
        mine = sorted(tp.partition for tp in consumer.assignment() if tp.topic == settings.events_topic)
        return await store.relay_outbox(producer, settings.triggers_topic, settings.batch_size, mine)

    def count_error(phase: str, kind: str) -> None:
        metrics.LOOP_ERRORS.labels(phase=phase, kind=kind).inc()

    async def housekeeping() -> None:
        nonlocal last_housekeeping
        if time.monotonic() - last_housekeeping > 5:
            last_housekeeping = time.monotonic()
            await store.sweep_fences()
            # the stager's scheduled retention: processed event ids, stored email bodies, email events, sends
            await prune(engine, "processed_events", settings.retention_days)
            await prune(engine, "message_bodies", settings.retention_days)
            now = await clock.now()
            await prune(engine, "email_events", settings.email_event_retention_days, now=now)
            await prune(engine, "sends", settings.send_retention_days, now=now)
            await _refresh_gauges(engine, now)
            await report_lag(consumer, metrics.LAG)

    # the relay in a task of its own: publishing never waits for a batch, nor a batch for the broker
    relaying = asyncio.create_task(run_task("relay", relay, stop, relay_wake, RELAY_IDLE_SECONDS, count_error))
    # another stager's time-driven changes may write triggers for this one's partitions: it notifies
    listening = asyncio.create_task(Listener(settings.database_url, OUTBOX_CHANNEL, relay_wake.set, stop,
                                             "lifecycle-stager").run())
    try:
        await run_phases([("events", worker.poll_once), ("due", due_changes), ("housekeeping", housekeeping)],
                         stop, count_error)
    finally:
        log.info("stager stopping: batch committed, closing Kafka clients")
        stop.set()
        await asyncio.gather(relaying, listening, return_exceptions=True)
        await worker.close()  # the last batch's offsets committed first
        await consumer.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
        await engine.dispose()


# How often a relay with nothing to publish looks again without being woken (by this stager's own
# batches, or by another stager's NOTIFY when its time-driven changes wrote rows for this one's
# partitions): the notification is a hint, this poll is what never misses a row.
RELAY_IDLE_SECONDS = 0.2


def run(settings: Settings) -> None:
    run_service(serve(settings))
