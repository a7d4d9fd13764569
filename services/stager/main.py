"""Run the stager: consume events, apply due changes, relay the outbox, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import make_clock
from lifecycle.consuming import TopicWorker, run_phases
from lifecycle.db.engine import make_engine
from lifecycle.db.retention import prune
from lifecycle.events import Event
from lifecycle.kafka import ensure_topics, make_consumer, make_renewing_producer, report_lag
from lifecycle.probes import start_probe_server
from lifecycle.runtime import dependencies_ready, retry_until, stop_on_signals, wait_for_clock, wait_for_database
from lifecycle.settings import Settings
from services.stager import metrics
from services.stager.worker import StagerStore, rule_config

log = logging.getLogger("lifecycle.stager")


async def _refresh_gauges(engine: AsyncEngine, clock_now: object) -> None:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age FROM outbox")
            )
        ).one()
        metrics.OUTBOX_WAITING.set(row.n)
        metrics.OUTBOX_OLDEST.set(float(row.age or 0.0))
        due = (await conn.execute(text("SELECT count(*) FROM due_changes WHERE due_at <= :now"),
                                  {"now": clock_now})).scalar()
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

    async def apply(events: list[Event]) -> None:
        started = time.perf_counter()
        await store.apply_events(events)
        metrics.BATCH_SIZE.observe(len(events))
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)

    worker = TopicWorker(consumer, producer, settings, "stager", clock, Event.from_message, apply,
                         metrics.CONSUMED, metrics.UNREADABLE, metrics.DEAD_LETTERED)

    async def ready() -> bool:
        return await dependencies_ready(engine, producer.client.fetch_all_metadata)

    server, server_task = start_probe_server(settings.ingest_host, settings.stager_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)
    log.info("stager started: topic %s, group %s, clock %s", settings.events_topic, settings.stager_group,
             settings.clock)
    last_housekeeping = 0.0

    async def due_changes() -> None:
        metrics.DUE_APPLIED.inc(await store.apply_due_changes(settings.batch_size))

    async def relay() -> None:
        await store.relay_outbox(producer, settings.triggers_topic, settings.batch_size)

    async def housekeeping() -> None:
        nonlocal last_housekeeping
        if time.monotonic() - last_housekeeping > 5:
            last_housekeeping = time.monotonic()
            await store.sweep_fences()
            await prune(engine, "processed_events", settings.retention_days)
            await _refresh_gauges(engine, await clock.now())
            await report_lag(consumer, metrics.LAG)

    try:
        await run_phases([("events", worker.poll_once), ("due", due_changes), ("relay", relay),
                          ("housekeeping", housekeeping)], stop,
                         lambda phase, kind: metrics.LOOP_ERRORS.labels(phase=phase, kind=kind).inc())
    finally:
        log.info("stager stopping: batch committed, closing Kafka clients")
        await consumer.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
