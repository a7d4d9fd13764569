"""Run the ingest API: `run(settings)` serves it with uvicorn until SIGINT/SIGTERM.

Two listeners in one process: the API on LIFECYCLE_INGEST_PORT (public: the shop and the
links in emails) and /metrics (with /healthz and /readyz) on LIFECYCLE_INGEST_METRICS_PORT,
for Prometheus only, so the metrics are never served where the internet reaches.
"""

from __future__ import annotations

import asyncio
import logging

import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import make_clock
from lifecycle.db.engine import make_engine
from lifecycle.journey_catalog import register_files
from lifecycle.journey_files import load_journey_files
from lifecycle.kafka import ensure_topics
from lifecycle.probes import start_probe_server
from lifecycle.runtime import StartupError, retry_until, run_service, settle_heap, stop_on_signals, wait_for_database
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.ingest.app import create_app, not_ready_because
from services.ingest.stores import (
    PgCampaignStore,
    PgJourneyStore,
    PgPrivacyStore,
    make_fence_writer,
    make_order_reader,
    make_segment_previewer,
)

GRACEFUL_SHUTDOWN_SECONDS = 10
log = logging.getLogger("lifecycle.ingest")


def api_config(settings: Settings, app: FastAPI) -> uvicorn.Config:
    """The public API's server: X-Forwarded-For names the client (whose address the rate limits
    count) only when it comes from LIFECYCLE_FORWARDED_ALLOW_IPS."""
    return uvicorn.Config(
        app,
        host=settings.ingest_host,
        port=settings.ingest_port,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        timeout_keep_alive=settings.ingest_keep_alive_seconds,
        lifespan="on",
        log_config=None,  # uvicorn's loggers go through the process's own (JSON lines in production)
    )


def start_metrics_server(settings: Settings, app: FastAPI) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """The metrics port of the ingest API: the stager's and dispatcher's probe server, ready when `app` is."""

    async def ready() -> bool:
        return await not_ready_because(getattr(app.state, "producer", None)) is None

    return start_probe_server(settings.ingest_host, settings.ingest_metrics_port, ready, settings.clock)


async def prepare(settings: Settings, engine: AsyncEngine) -> Templates:
    """The start-up work done once per ingest process (or once for all its workers)."""
    templates = Templates(settings.journeys_dir, settings.default_locale)
    files = load_journey_files(settings.journeys_dir, templates, render_templates=False)
    # the database holds the opt-out fences and the journey versions: it must be there first
    await wait_for_database(engine)
    # registered before any journey can be applied here, so an applied version stays the newest
    await retry_until("PostgreSQL (journey versions)", lambda: register_files(engine, files))
    # Wait here rather than in the lifespan: a failure becomes one clear line.
    await retry_until(f"Kafka at {settings.kafka_bootstrap}", lambda: ensure_topics(settings))
    return templates


def build_app(settings: Settings, engine: AsyncEngine, templates: Templates) -> FastAPI:
    # Imported here: the db layer is only needed when actually serving.
    from lifecycle.db.queries import make_customer_reader, make_message_reader

    clock = make_clock(settings.clock, engine)
    return create_app(
        settings,
        clock,
        customer_reader=make_customer_reader(engine, settings),
        manage_topics=False,
        message_reader=make_message_reader(engine),
        fence_writer=make_fence_writer(engine),
        privacy_store=PgPrivacyStore(engine, clock),
        journey_store=PgJourneyStore(engine, templates),
        segment_previewer=make_segment_previewer(engine, clock, settings.default_locale),
        campaign_store=PgCampaignStore(engine, clock, templates, settings.segments_dir),
        order_reader=make_order_reader(engine),
    )


def api_engine(settings: Settings) -> AsyncEngine:
    """The API's engine: every pooled connection is pinged at checkout, so that a client never gets a 503
    for a restart or a terminated backend (the consumers ping only after a second idle, and retry)."""
    return make_engine(settings, "ingest", ping_after_idle=0)


async def _serve(settings: Settings) -> None:
    engine = api_engine(settings)
    try:
        app = build_app(settings, engine, await prepare(settings, engine))
        settle_heap()
        # uvicorn hands a SIGTERM back once it has stopped: to this handler, not to the default one that
        # would end the process there, before the clean-up below and with status 143
        stop_on_signals()
        metrics_server, metrics_task = start_metrics_server(settings, app)
        api = uvicorn.Server(api_config(settings, app))
        # The metrics task starts once the API serves: the API installs its signal handlers first, the
        # metrics server's go on top and hand a SIGTERM on to the API's once it has stopped.
        try:
            await api.serve()
        finally:
            log.info("ingest stopping: requests answered, Kafka producer flushed")
            metrics_server.should_exit = True
            await metrics_task
    finally:
        # Close pooled connections in the loop that opened them.
        await engine.dispose()
        log.info("ingest stopped")


def run(settings: Settings, workers: int | None = None) -> None:
    """Serve until SIGTERM: in this process, or in `workers` processes (LIFECYCLE_INGEST_WORKERS)."""
    count = settings.ingest_workers if workers is None else workers
    try:
        if count > 1:
            from services.ingest.workers import serve_workers

            run_service(serve_workers(settings, count))
        else:
            run_service(_serve(settings))
    except SystemExit as exc:
        # uvicorn exits this way when a port is taken or start-up failed; it logged why.
        if exc.code not in (0, None):
            raise StartupError("the ingest API did not start (see the log above)") from None
