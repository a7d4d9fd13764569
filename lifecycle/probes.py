"""The small HTTP side of the services: /healthz, /readyz, /metrics.

The stager and the dispatcher serve it on their port; the ingest API on its metrics port,
apart from the public API (services/ingest/main.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

ReadyCheck = Callable[[], Awaitable[bool]]


def probe_app(ready: ReadyCheck, clock: str, registry: CollectorRegistry = REGISTRY) -> FastAPI:
    app = FastAPI(title="lifecycle probes", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "clock": clock}

    @app.get("/readyz")
    async def readyz() -> Response:
        ok = await ready()
        return Response('{"ready": %s}' % ("true" if ok else "false"), status_code=200 if ok else 503,
                        media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def start_probe_server(
    host: str, port: int, ready: ReadyCheck, clock: str, registry: CollectorRegistry = REGISTRY
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(probe_app(ready, clock, registry), host=host, port=port, log_level="warning",
                            lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    # uvicorn captures SIGTERM while it serves and re-raises it once stopped, so the
    # service's own handler still sees it
    return server, asyncio.create_task(server.serve())
