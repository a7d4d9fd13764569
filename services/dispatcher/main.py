"""Run the dispatcher: consume triggers, send due steps, take over stale sends, until SIGTERM.

Each phase of the loop fails on its own: a database or broker outage is logged, counted and retried
after a backoff, never the end of the process (see lifecycle/consuming.py).
"""

from __future__ import annotations

import asyncio
import logging
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.campaign_catalog import load_campaign_files, start_due
from lifecycle.campaign_catalog import register_files as register_campaign_files
from lifecycle.clock import Clock, make_clock
from lifecycle.consuming import TopicWorker, run_phases
from lifecycle.core.triggers import Trigger
from lifecycle.db.engine import make_engine
from lifecycle.db.retention import prune
from lifecycle.journey_catalog import JourneyCatalog, register_files
from lifecycle.journey_files import load_journey_files
from lifecycle.kafka import ensure_topics, make_consumer, make_renewing_producer, report_lag
from lifecycle.privacy import read_tombstone
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
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.dispatcher import metrics
from services.dispatcher.delivery import Delivery
from services.dispatcher.rendering import Renderer
from services.dispatcher.sql import ACTIVE_RUNS, STEPS_DUE
from services.dispatcher.worker import DispatcherStore, Outgoing

log = logging.getLogger("lifecycle.dispatcher")


_GAUGED: set[str] = set()  # every journey and campaign given a value of RUNS_ACTIVE by this process


async def _refresh_gauges(engine: AsyncEngine, clock: Clock, journeys: list[str]) -> None:
    now = await clock.now()
    async with engine.connect() as conn:
        row = (await conn.execute(STEPS_DUE, {"now": now})).one()
        metrics.STEPS_DUE.set(row.n)
        metrics.OLDEST_DUE_AGE.set((now - row.oldest).total_seconds() if row.oldest else 0.0)
        active: dict[str, int] = dict((await conn.execute(ACTIVE_RUNS)).all())
        # every journey gets a value, zero included, so a finished journey (or campaign) does not keep its
        # last count
        _GAUGED.update(journeys, active)
        for journey in sorted(_GAUGED):
            metrics.RUNS_ACTIVE.labels(journey=journey).set(active.get(journey, 0))


async def serve(settings: Settings) -> None:
    templates = Templates(settings.journeys_dir, settings.default_locale)
    files = load_journey_files(settings.journeys_dir, templates)
    engine = make_engine(settings, "dispatcher")
    clock = make_clock(settings.clock, engine)
    await wait_for_database(engine)
    await retry_until("PostgreSQL (journey versions)", lambda: register_files(engine, files))
    campaign_files = load_campaign_files(settings.campaigns_dir, templates, settings.segments_dir)
    await retry_until("Kafka", lambda: ensure_topics(settings))
    renderer = Renderer(settings)  # a DKIM key that is set but unusable stops the dispatcher here
    await renderer.start()
    store = DispatcherStore(settings, engine, clock, JourneyCatalog(templates), renderer)
    delivery = Delivery(store, settings, renderer)
    consumer = make_consumer(settings, settings.triggers_topic, settings.dispatcher_group)
    producer = make_renewing_producer(settings)  # the dead-letter topic
    await retry_until("Kafka consumer", consumer.start)
    await retry_until("Kafka producer", producer.start)
    worker = TopicWorker(consumer, producer, settings, "dispatcher", clock,
                         lambda value, _headers: Trigger.from_message(value),
                         store.handle_messages, metrics.TRIGGERS, metrics.UNREADABLE, metrics.DEAD_LETTERED,
                         tombstone=read_tombstone)

    async def ready() -> bool:
        return await dependencies_ready(engine, consumer.topics)

    server, server_task = start_probe_server(settings.ingest_host, settings.dispatcher_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)

    async def register_campaigns() -> None:
        for refused in await register_campaign_files(engine, campaign_files, await clock.now()):
            log.warning("campaign file not applied: %s", refused)

    await retry_until("PostgreSQL (campaigns)", register_campaigns)
    settle_heap()
    log.info("dispatcher started: %d journey files, clock %s", len(files), settings.clock)
    last_gauges = 0.0

    sending: set[asyncio.Task[None]] = set()

    async def hand_over(batch: list[Outgoing]) -> None:
        """Start sending `batch` and come back: the next claim is composed while this one is sent.
        At most two batches are in the SMTP stage; a failed one fails this phase."""
        while len(sending) >= 2:
            await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
            _collect(sending)
        if batch or not sending:  # with nothing claimed, the retries now due are still looked at
            sending.add(asyncio.create_task(delivery.deliver(batch, stop)))
        _collect(sending)

    async def send_due() -> None:
        await hand_over(await store.claim_due_steps(settings.send_batch_size))

    async def take_over_stale() -> None:
        stale = await store.reclaim_stale_sends(settings.send_batch_size)
        metrics.RESENT_AFTER_LEASE.inc(len(stale))
        if stale:
            await hand_over(stale)

    last_campaigns = 0.0
    campaign_interval = 0.05 if settings.clock == "virtual" else 1.0

    async def start_campaigns() -> None:
        """Start the campaigns whose start has come; their sends then fall due like journey steps."""
        nonlocal last_campaigns
        if time.monotonic() - last_campaigns < campaign_interval:
            return
        while (started := await start_due(engine, await clock.now(), store.policy, settings.default_locale,
                                          settings.segments_dir)) is not None:
            if started.cancelled_reason:
                log.warning("campaign %s cancelled at its start: %s", started.name, started.cancelled_reason)
            else:
                log.info("campaign %s started: %d customers (%d whose moment had passed)", started.name,
                         started.audience, started.passed)
                metrics.CAMPAIGNS_STARTED.inc()
        last_campaigns = time.monotonic()

    async def gauges() -> None:
        nonlocal last_gauges
        if time.monotonic() - last_gauges > 5:
            last_gauges = time.monotonic()
            await _refresh_gauges(engine, clock, [found.journey.name for found in files])
            await prune(engine, "processed_triggers", settings.retention_days)
            await report_lag(consumer, metrics.LAG)

    try:
        await run_phases([("triggers", worker.poll_once), ("campaigns", start_campaigns), ("steps", send_due),
                          ("stale", take_over_stale), ("gauges", gauges)], stop,
                         lambda phase, kind: metrics.LOOP_ERRORS.labels(phase=phase, kind=kind).inc())
    finally:
        log.info("dispatcher stopping")
        # sends in flight finish (and are recorded) before the connections close
        await asyncio.gather(*sending, return_exceptions=True)
        await delivery.close()
        renderer.close()
        await worker.close()  # the last batch's offsets committed first
        await consumer.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
        await engine.dispose()


def _collect(tasks: set[asyncio.Task[None]]) -> None:
    """Drop the finished tasks; the first that failed raises here."""
    for task in [t for t in tasks if t.done()]:
        tasks.discard(task)
        task.result()


def run(settings: Settings) -> None:
    run_service(serve(settings))
