"""Run the stager: consume events, apply due changes, relay the outbox, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lifecycle.clock import make_clock
from lifecycle.events import Event
from lifecycle.kafka import ensure_topics, make_consumer, make_producer, poll_decoded, report_lag
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
    engine = create_async_engine(settings.database_url, pool_size=5)
    clock = make_clock(settings.clock, engine)
    await wait_for_database(engine)
    await retry_until("Kafka", lambda: ensure_topics(settings))
    store = StagerStore(engine, clock, rule_config(settings), settings.attribution_days)
    consumer = make_consumer(settings, settings.events_topic, settings.stager_group)
    producer = make_producer(settings)
    await retry_until("Kafka consumer", consumer.start)
    await retry_until("Kafka producer", producer.start)

    async def ready() -> bool:
        return await dependencies_ready(engine, producer.client.fetch_all_metadata)

    server, server_task = start_probe_server(settings.ingest_host, settings.stager_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)
    log.info("stager started: topic %s, group %s, clock %s", settings.events_topic, settings.stager_group,
             settings.clock)
    last_gauges = 0.0
    try:
        while not stop.is_set():
            read, events = await poll_decoded(consumer, settings, Event.from_message, metrics.CONSUMED,
                                              metrics.UNREADABLE)
            if read:
                started = time.perf_counter()
                await store.apply_events(events)
                metrics.BATCH_SIZE.observe(len(events))
                metrics.BATCH_DURATION.observe(time.perf_counter() - started)
                await consumer.commit()
            applied = await store.apply_due_changes(settings.batch_size)
            metrics.DUE_APPLIED.inc(applied)
            await store.relay_outbox(producer, settings.triggers_topic, settings.batch_size)
            if time.monotonic() - last_gauges > 5:
                last_gauges = time.monotonic()
                await _refresh_gauges(engine, await clock.now())
                await report_lag(consumer, metrics.LAG)
    finally:
        log.info("stager stopping: batch committed, closing Kafka clients")
        await consumer.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
