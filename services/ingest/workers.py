"""`lifecycle ingest --workers N`: the ingest API served by N processes on one port.

A parent process does the start-up work once (the database, the journey versions, the topics),
binds the API's port and starts the workers, each a whole API (its own Kafka producer and
database pool) accepting connections on the same socket. The parent then:

* serves /metrics, /healthz and /readyz on LIFECYCLE_INGEST_METRICS_PORT: the metrics are the
  sum of the workers' (prometheus_client's multiprocess mode: each worker writes its values to a
  directory of the parent's, read at each scrape, so a replaced worker's counts are kept);
  ready while every worker is alive and accepting connections and the API answers its own /readyz;
* replaces a worker that exits, after a pause that grows while replacements keep dying;
* shares with the workers an array of how many connections each holds, so that the next
  connection goes to the least loaded (services/ingest/balancing.py);
* on SIGTERM or SIGINT, passes SIGTERM to the workers, which answer the requests they hold
  (up to the API's graceful shutdown) and stop, then removes the metrics directory.

A worker ends with its parent even when the parent is killed (SIGTERM from the kernel).
The rate limits of the links in emails are counted per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, MutableSequence
from functools import partial
from multiprocessing.process import BaseProcess
from typing import cast

import httpx
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from lifecycle.probes import start_probe_server
from lifecycle.runtime import StartupError, die_with_parent, run_service, settle_heap, setup_logging, stop_on_signals
from lifecycle.settings import Settings
from services.ingest.balancing import ABSENT, BalancedServer
from services.ingest.main import GRACEFUL_SHUTDOWN_SECONDS, api_config, api_engine, build_app, prepare

log = logging.getLogger("lifecycle.ingest")

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# a worker that lived at least this long is replaced at once; faster deaths double the pause
HEALTHY_SECONDS = 30.0
LONGEST_PAUSE_SECONDS = 30.0


async def serve_workers(settings: Settings, count: int) -> None:
    engine = api_engine(settings)
    try:
        await prepare(settings, engine)  # once, before any worker starts
    finally:
        await engine.dispose()
    metrics_dir = tempfile.mkdtemp(prefix="lifecycle-ingest-metrics-")
    # read by prometheus_client when a worker imports it: the workers start after this
    os.environ[METRICS_DIR_VARIABLE] = metrics_dir
    sock = _bind(settings.ingest_host, settings.ingest_port)
    supervisor = _Supervisor(settings, sock, count)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    registry.register(_ProcessesCollector(supervisor.pids))
    try:
        supervisor.start_all()
        log.info("ingest: %d workers on %s:%d", count, settings.ingest_host, settings.ingest_port)
        metrics_server, metrics_task = start_probe_server(settings.ingest_host, settings.ingest_metrics_port,
                                                          supervisor.ready, settings.clock, registry)
        stop = stop_on_signals()
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                if not stop.is_set():
                    supervisor.replace_the_dead()
        finally:
            log.info("ingest stopping: workers answer the requests they hold, then stop")
            await asyncio.to_thread(supervisor.stop_all)
            metrics_server.should_exit = True
            await metrics_task
    finally:
        sock.close()
        os.environ.pop(METRICS_DIR_VARIABLE, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("ingest stopped")


class _Supervisor:
    def __init__(self, settings: Settings, sock: socket.socket, count: int) -> None:
        self.settings = settings
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        # each worker's open connections, in shared memory: written by the worker, read by all
        self.loads = cast(MutableSequence[int], self.context.RawArray("i", [ABSENT] * count))
        self.slots: list[BaseProcess | None] = [None] * count
        self.started_at = [0.0] * count
        self.pause = [0.0] * count
        self.not_before = [0.0] * count
        self.url = f"http://{_local(settings.ingest_host)}:{settings.ingest_port}/readyz"

    def pids(self) -> list[int]:
        return [os.getpid(), *(p.pid for p in self.slots if p is not None and p.pid is not None and p.is_alive())]

    def start_all(self) -> None:
        for slot in range(len(self.slots)):
            self._start(slot)

    def _start(self, slot: int) -> None:
        process = self.context.Process(target=_worker_main,
                                       args=(self.settings, self.sock, self.loads, os.getpid(), slot),
                                       name=f"ingest-worker-{slot}", daemon=False)
        process.start()
        self.slots[slot] = process
        self.started_at[slot] = time.monotonic()

    def replace_the_dead(self) -> None:
        now = time.monotonic()
        for slot, process in enumerate(self.slots):
            if process is not None and process.is_alive():
                continue
            if process is not None:
                lived = now - self.started_at[slot]
                self.pause[slot] = 0.0 if lived >= HEALTHY_SECONDS else min(
                    LONGEST_PAUSE_SECONDS, max(0.5, self.pause[slot] * 2))
                self.not_before[slot] = now + self.pause[slot]
                log.warning("ingest worker %d (pid %s) exited with %s after %.0f s; another starts in %.1f s",
                            slot, process.pid, process.exitcode, lived, self.pause[slot])
                if process.pid is not None:
                    mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                self.slots[slot] = None
                self.loads[slot] = ABSENT  # killed: it could not say so itself
            if now >= self.not_before[slot]:
                self._start(slot)

    async def ready(self) -> bool:
        if not all(process is not None and process.is_alive() for process in self.slots):
            return False
        if any(load >= ABSENT for load in self.loads):  # alive, but not accepting connections yet
            return False
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(self.url)).status_code == 200
        except httpx.HTTPError:
            return False

    def stop_all(self) -> None:
        alive = [p for p in self.slots if p is not None and p.is_alive()]
        for process in alive:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN_SECONDS + 5
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("ingest worker pid %s did not stop in time: killed", process.pid)
                process.kill()
                process.join()


class _ProcessesCollector(Collector):
    """CPU time and memory of the parent and its live workers together, under the names one process
    reports them with (a replaced worker's CPU time leaves the sum: rate() reads it as a reset)."""

    def __init__(self, pids: Callable[[], list[int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterable[Metric]:
        totals: dict[str, float] = {"process_cpu_seconds": 0.0, "process_resident_memory_bytes": 0.0}
        for pid in self.pids():
            for family in ProcessCollector(pid=partial(int, pid), registry=None).collect():
                if family.name in totals and family.samples:
                    totals[family.name] += family.samples[0].value
        yield CounterMetricFamily("process_cpu_seconds", "CPU time of the ingest processes together (s)",
                                  value=totals["process_cpu_seconds"])
        yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the ingest processes together",
                                value=totals["process_resident_memory_bytes"])


def _bind(host: str, port: int) -> socket.socket:
    """The API's listening socket, shared by the workers (as uvicorn binds it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _local(host: str) -> str:
    """Where the parent reaches the API it serves: the loopback for a wildcard address."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _worker_main(settings: Settings, sock: socket.socket, loads: MutableSequence[int], parent: int,
                 slot: int) -> None:
    die_with_parent(parent, signal.SIGTERM)
    setup_logging(settings.log_format, settings.log_level)
    run_service(_serve_worker(settings, sock, loads, slot))


async def _serve_worker(settings: Settings, sock: socket.socket, loads: MutableSequence[int], slot: int) -> None:
    from lifecycle.templates import Templates

    engine = api_engine(settings)
    try:
        app = build_app(settings, engine, Templates(settings.journeys_dir, settings.default_locale))
        settle_heap()
        # uvicorn hands a SIGTERM back once it has stopped: to this handler, so the worker ends cleanly
        stop_on_signals()
        log.info("ingest worker %d serving (pid %d)", slot, os.getpid())
        await BalancedServer(api_config(settings, app), sock, loads, slot).serve()
    finally:
        await engine.dispose()
