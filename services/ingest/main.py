"""Run the ingest API: `run(settings)` serves it with uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio

import uvicorn
from sqlalchemy.ext.asyncio import create_async_engine

from lifecycle.clock import make_clock
from lifecycle.settings import Settings
from services.ingest.app import create_app

GRACEFUL_SHUTDOWN_SECONDS = 10


async def _serve(settings: Settings) -> None:
    # Imported here: the db layer is only needed when actually serving.
    from lifecycle.db.queries import make_customer_reader

    engine = create_async_engine(settings.database_url, pool_pre_ping=True)
    try:
        app = create_app(settings, make_clock(settings.clock, engine), customer_reader=make_customer_reader(engine))
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
    asyncio.run(_serve(settings))
