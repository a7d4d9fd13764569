"""Run the ingest API: `run(settings)` serves it with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio

import uvicorn

from lifecycle.clock import make_clock
from lifecycle.db.engine import make_engine
from lifecycle.journey_catalog import register_files
from lifecycle.journey_files import load_journey_files
from lifecycle.kafka import ensure_topics
from lifecycle.runtime import StartupError, retry_until, wait_for_database
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.ingest.app import create_app
from services.ingest.stores import PgJourneyStore, make_fence_writer

GRACEFUL_SHUTDOWN_SECONDS = 10


async def _serve(settings: Settings) -> None:
    # Imported here: the db layer is only needed when actually serving.
    from lifecycle.db.queries import make_customer_reader, make_message_reader

    engine = make_engine(settings, "ingest")
    try:
        templates = Templates(settings.journeys_dir, settings.default_locale)
        files = load_journey_files(settings.journeys_dir, templates, render_templates=False)
        # the database holds the opt-out fences and the journey versions: it must be there first
        await wait_for_database(engine)
        # registered before any journey can be applied here, so an applied version stays the newest
        await retry_until("PostgreSQL (journey versions)", lambda: register_files(engine, files))
        # Wait here rather than in the lifespan: a failure becomes one clear line.
        await retry_until(f"Kafka at {settings.kafka_bootstrap}", lambda: ensure_topics(settings))
        app = create_app(
            settings,
            make_clock(settings.clock, engine),
            customer_reader=make_customer_reader(engine, settings),
            manage_topics=False,
            message_reader=make_message_reader(engine),
            fence_writer=make_fence_writer(engine),
            journey_store=PgJourneyStore(engine, templates),
        )
        config = uvicorn.Config(
            app,
            host=settings.ingest_host,
            port=settings.ingest_port,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            lifespan="on",
        )
        await uvicorn.Server(config).serve()
    finally:
        # Close pooled connections in the loop that opened them.
        await engine.dispose()


def run(settings: Settings) -> None:
    try:
        asyncio.run(_serve(settings))
    except SystemExit as exc:
        # uvicorn exits this way when the port is taken or start-up failed; it logged why.
        if exc.code not in (0, None):
            raise StartupError("the ingest API did not start (see the log above)") from None
