"""What every service does at start-up and shutdown: logging, waiting for dependencies, signals."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import Clock, ClockNotSet

log = logging.getLogger("lifecycle")


class StartupError(Exception):
    """A dependency stayed unreachable: reported as one clear line, not a stack trace."""


def setup_logging(log_format: str = "auto", level: str = "INFO") -> None:
    """JSON lines in production, readable lines in a terminal, for every logger of the process.

    Context goes in `extra=` (event_id, customer_id, journey, ...) and comes out as fields;
    nothing logs secrets or email bodies.
    """
    json_lines = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (structlog.processors.JSONRenderer() if json_lines
                     else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()))
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info if json_lines else _keep, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _keep(logger: Any, name: str, event: Any) -> Any:
    return event


async def retry_until(what: str, attempt: Callable[[], Awaitable[object]], attempts: int = 30,
                      delay: float = 1.0) -> None:
    for number in range(1, attempts + 1):
        try:
            await attempt()
            return
        except Exception as exc:  # any failure to reach it counts as "not yet"
            if number == attempts:
                raise StartupError(f"{what} unreachable after {attempts} attempts: {exc}") from None
            log.warning("waiting for %s (attempt %d/%d): %s", what, number, attempts, exc)
            await asyncio.sleep(delay)


async def wait_for_database(engine: AsyncEngine) -> None:
    async def ping() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1 FROM virtual_clock LIMIT 1"))

    await retry_until("PostgreSQL (migrated)", ping)


async def wait_for_clock(clock: Clock, stop: asyncio.Event) -> None:
    """On the virtual clock, work starts once something has set the time."""
    announced = False
    while not stop.is_set():
        try:
            await clock.now()
            return
        except ClockNotSet:
            if not announced:
                log.info("waiting for the virtual clock to be set")
                announced = True
            await asyncio.sleep(0.1)


async def dependencies_ready(engine: AsyncEngine, kafka_check: Callable[[], Awaitable[object]]) -> bool:
    """Readiness: PostgreSQL answers and Kafka's metadata can be fetched, each within two seconds."""
    try:
        async with engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 2)
        await asyncio.wait_for(kafka_check(), 2)
        return True
    except Exception:
        return False


# A young generation this large is collected a few times a second under load rather than hundreds of
# times; what a collection finds is garbage of cycles, which a service makes little of.
YOUNG_GENERATION_THRESHOLD = 20_000


T = TypeVar("T")


def run_service(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on uvloop's event loop (libuv, in C), which runs the services' callbacks,
    sockets and timers at a fraction of the standard loop's cost; on the standard loop where uvloop
    is not installed (it is a dependency on Linux and macOS)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def settle_heap() -> None:
    """Once a process has started (modules, templates, schemas, pools loaded): move what it holds out
    of the collector's sight and collect the young generation less often.

    Measured in the benchmark: the collector took 15% of the ingest API's CPU and 12% of the stager's,
    mostly full collections going over every object the process loaded at start (about 0.1 s each). The
    objects loaded at start live as long as the process, and a frozen object is never scanned again.
    """
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, max(middle, 20), oldest)


def die_with_parent(parent: int, sig: signal.Signals) -> None:
    """In a worker process: Linux sends `sig` to this process when its parent dies, even by SIGKILL.
    A parent that died while this worker was starting is seen here (the worker ends at once)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig)
    if os.getppid() != parent:
        os._exit(1)


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
