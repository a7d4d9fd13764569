"""`lifecycle ingest --workers N`: several processes on one port, one /metrics with their sum, a dead
worker replaced, and every worker gone with its parent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from devstack import service_env
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from tests.support.waiting import until

pytestmark = pytest.mark.integration
START = datetime(2026, 10, 5, 9, 0, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Ingest:
    def __init__(self, settings: Settings, process: subprocess.Popen[bytes], log: Path) -> None:
        self.settings = settings
        self.process = process
        self.log = log
        self.api = f"http://127.0.0.1:{settings.ingest_port}"
        self.metrics = f"http://127.0.0.1:{settings.ingest_metrics_port}"

    def workers(self) -> set[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        # the spawn context's resource tracker is a child too; the workers run the ingest API
        return {int(pid) for pid in children
                if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")}

    async def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, self.log.read_text()
                try:
                    if (await client.get(f"{self.metrics}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"the ingest workers never got ready:\n{self.log.read_text()}")

    async def accepted(self) -> float:
        async with httpx.AsyncClient(timeout=5) as client:
            body = (await client.get(f"{self.metrics}/metrics")).text
        found = re.findall(r'^lifecycle_ingest_events_accepted_total\{type="customer_signed_up"\} (\S+)$', body,
                           flags=re.MULTILINE)
        return float(found[0]) if found else 0.0


@asynccontextmanager
async def ingest_workers(pipeline: Settings, workers: int) -> AsyncIterator[Ingest]:
    settings = pipeline.model_copy(update={"ingest_port": _free_port(), "ingest_metrics_port": _free_port()})
    log = Path(pipeline.run_dir) / f"ingest-workers-{settings.ingest_port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "lifecycle.cli", "ingest", "--workers", str(workers)],
                                   env=service_env(settings), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    ingest = Ingest(settings, process, log)
    try:
        await ingest.wait_ready()
        yield ingest
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _batch(prefix: str, start: int, count: int) -> dict[str, object]:
    return {"events": [{"event_id": f"{prefix}-{i}", "type": "customer_signed_up", "customer_id": f"c-{prefix}-{i}",
                        "occurred_at": START.isoformat(), "traits": {"email": f"{prefix}{i}@example.com"}}
                       for i in range(start, start + count)]}


async def _post(ingest: Ingest, runner: ScenarioRunner, batch: dict[str, object]) -> None:
    # a connection per request: the kernel hands each one to whichever worker accepts first
    async with httpx.AsyncClient(base_url=ingest.api, auth=runner.http.auth, timeout=30) as client:
        response = await client.post("/v1/events", json=batch)
    assert response.status_code == 202, response.text


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_workers_share_one_port_and_one_metrics_endpoint_and_a_dead_one_is_replaced(
        pipeline: Settings, runner: ScenarioRunner) -> None:
    await runner.configure(Path(__file__), {})
    await runner.reset(START)
    async with ingest_workers(pipeline, 2) as ingest:
        first = ingest.workers()
        assert len(first) == 2
        for n in range(10):
            await _post(ingest, runner, _batch("w", n * 10, 10))
        assert await ingest.accepted() == 100
        async with httpx.AsyncClient(timeout=5) as client:
            body = (await client.get(f"{ingest.metrics}/metrics")).text
        # the processes' CPU time and memory, summed under the names one process uses
        assert re.search(r"^process_cpu_seconds_total [1-9]", body, flags=re.MULTILINE), body
        assert re.search(r"^process_resident_memory_bytes [1-9]", body, flags=re.MULTILINE), body
        assert 'lifecycle_ingest_request_duration_seconds_count{route="/v1/events"} 10.0' in body
        # a worker killed outright: its counts stay in the sum, and another takes its place
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        await until(lambda: victim not in ingest.workers() and len(ingest.workers()) == 2,
                        "a new worker in the dead one's place")
        await ingest.wait_ready()
        for n in range(10, 20):
            await _post(ingest, runner, _batch("w", n * 10, 10))
        assert await ingest.accepted() == 200
        assert "exited with -9" in ingest.log.read_text()
        # what the workers acknowledged is in Kafka: the stager applies all of it
        await runner.watch.wait_idle()
        async with runner.engine.connect() as conn:
            applied = (await conn.execute(text("SELECT count(*) FROM customers WHERE customer_id LIKE 'c-w-%'"))
                       ).scalar()
        assert applied == 200
        # SIGTERM: the workers stop, then the parent, which removes the metrics directory
        workers = ingest.workers()
        ingest.process.send_signal(signal.SIGTERM)
        assert ingest.process.wait(30) == 0, ingest.log.read_text()
        assert not any(_alive(pid) for pid in workers)
        assert "ingest stopped" in ingest.log.read_text()


def _connections_per_worker(ingest: Ingest) -> list[int]:
    """How many established connections to the API each worker holds (from /proc), least first."""
    port = ingest.settings.ingest_port
    established: set[str] = set()  # socket inodes
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                established.add(fields[9])
    counts = []
    for pid in ingest.workers():
        held = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    held.add(target[len("socket:["):-1])
        counts.append(len(held & established))
    return sorted(counts)


async def test_kept_alive_connections_are_spread_evenly_over_the_workers(
        pipeline: Settings, runner: ScenarioRunner) -> None:
    await runner.configure(Path(__file__), {})
    await runner.reset(START)
    async with ingest_workers(pipeline, 2) as ingest:
        for round_number in range(3):
            # opened together, as a backend's connection pool opens them, and kept open
            clients = [httpx.AsyncClient(base_url=ingest.api, auth=runner.http.auth, timeout=30) for _ in range(6)]
            try:
                answers = await asyncio.gather(*(client.post("/v1/events", json=_batch(f"k{round_number}-{n}", 0, 5))
                                                 for n, client in enumerate(clients)))
                assert [answer.status_code for answer in answers] == [202] * 6
                assert _connections_per_worker(ingest) == [3, 3]
            finally:
                for client in clients:
                    await client.aclose()
            await until(lambda: _connections_per_worker(ingest) == [0, 0], "the connections closed")


async def test_a_stopped_worker_delays_no_connection_for_long(pipeline: Settings, runner: ScenarioRunner) -> None:
    await runner.configure(Path(__file__), {})
    await runner.reset(START)
    async with ingest_workers(pipeline, 2) as ingest:
        stopped = min(ingest.workers())
        os.kill(stopped, signal.SIGSTOP)  # alive, holding none, accepting nothing
        try:
            # the other worker is ahead after its first connection: it waits a moment each time, then takes it
            for n in range(4):
                await _post(ingest, runner, _batch(f"s{n}", 0, 5))
            assert await ingest.accepted() == 20
        finally:
            os.kill(stopped, signal.SIGCONT)


async def test_the_workers_end_with_their_parent_even_when_it_is_killed(pipeline: Settings) -> None:
    async with ingest_workers(pipeline, 2) as ingest:
        workers = ingest.workers()
        ingest.process.kill()
        ingest.process.wait(10)
        await until(lambda: not any(_alive(pid) for pid in workers), "every worker gone after its parent")
        with socket.socket() as probe:  # and the port is free again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", ingest.settings.ingest_port))


def test_a_bad_number_of_workers_is_refused_with_a_clear_message() -> None:
    result = subprocess.run([sys.executable, "-m", "lifecycle.cli", "ingest", "--workers", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "'0' is not a number of workers from 1 to 64" in result.stderr
