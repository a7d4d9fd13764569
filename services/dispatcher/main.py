"""Run the dispatcher: consume triggers, send due steps, take over stale sends, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lifecycle.clock import Clock, make_clock
from lifecycle.core.triggers import Trigger
from lifecycle.journey_files import load_journeys
from lifecycle.kafka import ensure_topics, make_consumer, poll_decoded, report_lag
from lifecycle.probes import start_probe_server
from lifecycle.runtime import dependencies_ready, retry_until, stop_on_signals, wait_for_clock, wait_for_database
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.dispatcher import metrics
from services.dispatcher.delivery import close_delivery, deliver
from services.dispatcher.worker import DispatcherStore

log = logging.getLogger("lifecycle.dispatcher")


async def _refresh_gauges(engine: AsyncEngine, clock: Clock, journeys: list[str]) -> None:
    now = await clock.now()
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT count(*) AS n, min(due_at) AS oldest FROM journey_runs"
                     " WHERE status = 'active' AND due_at <= :now"),
                {"now": now},
            )
        ).one()
        metrics.STEPS_DUE.set(row.n)
        metrics.OLDEST_DUE_AGE.set((now - row.oldest).total_seconds() if row.oldest else 0.0)
        active: dict[str, int] = dict((
            await conn.execute(text("SELECT journey, count(*) FROM journey_runs WHERE status = 'active'"
                                    " GROUP BY journey"))
        ).all())
        # every loaded journey gets a value, zero included, so a finished journey does not keep its last count
        for journey in journeys:
            metrics.RUNS_ACTIVE.labels(journey=journey).set(active.get(journey, 0))


async def serve(settings: Settings) -> None:
    templates = Templates(settings.journeys_dir, settings.default_locale)
    journeys = load_journeys(settings.journeys_dir, templates)
    engine = create_async_engine(settings.database_url, pool_size=5)
    clock = make_clock(settings.clock, engine)
    await wait_for_database(engine)
    await retry_until("Kafka", lambda: ensure_topics(settings))
    store = DispatcherStore(settings, engine, clock, journeys, templates)
    consumer = make_consumer(settings, settings.triggers_topic, settings.dispatcher_group)
    await retry_until("Kafka consumer", consumer.start)

    async def ready() -> bool:
        return await dependencies_ready(engine, consumer.topics)

    server, server_task = start_probe_server(settings.ingest_host, settings.dispatcher_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)
    log.info("dispatcher started: %d journeys, clock %s", len(journeys), settings.clock)
    last_gauges = 0.0
    try:
        while not stop.is_set():
            read, triggers = await poll_decoded(consumer, settings, Trigger.from_message, metrics.TRIGGERS,
                                                metrics.UNREADABLE)
            if read:
                await store.handle_triggers(triggers)
                await consumer.commit()
            # sends in flight finish before the loop looks at `stop` again
            await deliver(store, settings, await store.claim_due_steps(settings.batch_size), stop)
            stale = await store.reclaim_stale_sends(settings.batch_size)
            metrics.RESENT_AFTER_LEASE.inc(len(stale))
            await deliver(store, settings, stale, stop)
            if time.monotonic() - last_gauges > 5:
                last_gauges = time.monotonic()
                await _refresh_gauges(engine, clock, [j.name for j in journeys])
                await report_lag(consumer, metrics.LAG)
    finally:
        log.info("dispatcher stopping")
        await close_delivery()
        await consumer.stop()
        server.should_exit = True
        await server_task
        await engine.dispose()


def run(settings: Settings) -> None:
    asyncio.run(serve(settings))
