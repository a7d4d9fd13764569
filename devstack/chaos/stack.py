"""The fault harness's private stack: Kafka and PostgreSQL on their own ports, one ingest API, and
R stagers and R dispatchers as separate processes on the same topics and database, on the system clock.

Every process of the stack can be killed, stopped and started again by name (`stager-1`,
`dispatcher-2`, ...); Kafka and PostgreSQL can be restarted; the services' database sessions can be
terminated. The SMTP server is the harness's own (devstack/chaos/sink.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import StackError, private_settings, processes, service_env, wait_http_ok
from devstack._util import absolute
from lifecycle.settings import Settings

log = logging.getLogger("devstack.chaos")

# Ports of the harness's stack: apart from the local stack's, the tests' and the benchmark's
# (`lifecycle chaos --port-offset` moves them again, for a second harness beside the first).
PORT_OFFSET = 300
STAGER_PORT_BASE = 8090  # + offset: stager-1 on 8391 ...
DISPATCHER_PORT_BASE = 8110  # + offset: dispatcher-1 on 8411 ...
WRITE_KEY = "chaos-write-key"
RESTART_PATIENCE_SECONDS = 300.0
ADMIN_KEY = "chaos-admin-key"


def chaos_settings(run_dir: Path, port_offset: int = PORT_OFFSET) -> Settings:
    """Short leases, timeouts and backoffs, so that recovery fits in a run of a minute or two."""
    return private_settings(
        run_dir, port_offset,
        api_keys=WRITE_KEY,
        admin_keys=ADMIN_KEY,
        clock="system",
        log_format="json",
        cart_abandon_minutes=0.75,  # workload.CART_ABANDON
        send_lease_seconds=20,
        smtp_timeout_seconds=2.0,
        smtp_retry_base_seconds=0.5,
        smtp_retry_max_seconds=4.0,
        smtp_max_attempts=60,
        render_workers=1,  # the process pool's path, at one worker per dispatcher (two cores for the whole stack)
        kafka_session_timeout_ms=6_000,
        batch_size=200,
    )


@dataclass(frozen=True)
class Member:
    name: str  # ingest, stager-1, dispatcher-2 ...
    kind: str  # ingest | stager | dispatcher
    port: int


class ChaosStack:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.run_dir = absolute(settings.run_dir)
        self.members: dict[str, Member] = {}
        self.engine: AsyncEngine | None = None

    # --- infrastructure ----------------------------------------------------------------------

    def start_infrastructure(self) -> None:
        from devstack import _migrate, kafka, postgres

        kafka.launch(self.settings)
        postgres.start(self.settings)
        kafka.wait_ready(self.settings)
        _migrate(self.settings, self.env())

    def stop_all(self) -> None:
        from devstack import kafka, postgres

        for name in list(self.members):
            self.stop(name, timeout=10.0)
        kafka.stop(self.settings)
        postgres.stop(self.settings)

    def restart_kafka(self, down_seconds: float) -> None:
        from devstack import kafka

        kafka.stop(self.settings)
        time.sleep(down_seconds)

        def start() -> None:
            kafka.launch(self.settings)
            # a JVM starting on a busy machine may take minutes: a slow start is the fault, not the end
            kafka.wait_ready(self.settings, timeout=RESTART_PATIENCE_SECONDS)

        _start_again(start, "kafka")

    def restart_postgres(self, down_seconds: float) -> None:
        from devstack import postgres

        postgres.stop(self.settings)
        time.sleep(down_seconds)
        _start_again(lambda: postgres.start(self.settings), "postgres")

    async def database(self) -> AsyncEngine:
        if self.engine is None:
            self.engine = create_async_engine(self.settings.database_url, pool_pre_ping=True,
                                              connect_args={"server_settings": {"application_name": "chaos"}})
        return self.engine

    async def terminate_backends(self) -> int:
        """pg_terminate_backend of one random session of the services (not the harness's own)."""
        engine = await self.database()
        async with engine.begin() as conn:
            return int((await conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity"
                " WHERE application_name LIKE 'lifecycle-%' ORDER BY random() LIMIT 1) s"))).scalar() or 0)

    async def hold_locks(self, seconds: float) -> None:
        """An idle transaction holding row locks on due runs, sends in flight and a few customers."""
        engine = await self.database()
        async with engine.connect() as conn:
            transaction = await conn.begin()
            await conn.execute(text("SELECT 1 FROM journey_runs WHERE status = 'active' ORDER BY due_at LIMIT 20"
                                    " FOR UPDATE SKIP LOCKED"))
            await conn.execute(text("SELECT 1 FROM customers ORDER BY updated_at DESC LIMIT 10 FOR UPDATE SKIP LOCKED"))
            await conn.execute(text("SELECT 1 FROM sends WHERE status = 'sending' LIMIT 10 FOR UPDATE SKIP LOCKED"))
            await asyncio.sleep(seconds)  # idle in transaction, holding them
            await transaction.rollback()

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None

    # --- the services ------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return service_env(self.settings)

    def member(self, name: str) -> Member:
        kind = name.split("-")[0]
        number = int(name.split("-")[1]) if "-" in name else 0
        offset = self.settings.ingest_port - Settings.model_fields["ingest_port"].default
        port = {"ingest": self.settings.ingest_port, "stager": STAGER_PORT_BASE + offset + number,
                "dispatcher": DISPATCHER_PORT_BASE + offset + number}[kind]
        return Member(name, kind, port)

    def start(self, name: str, wait: bool = True) -> None:
        member = self.member(name)
        env = self.env()
        if member.kind == "stager":
            env["LIFECYCLE_STAGER_PORT"] = str(member.port)
        elif member.kind == "dispatcher":
            env["LIFECYCLE_DISPATCHER_PORT"] = str(member.port)
        processes.spawn(self.run_dir, name, [sys.executable, "-m", "lifecycle.cli", member.kind], env=env)
        self.members[name] = member
        if wait:
            self.wait_healthy(name)

    def wait_healthy(self, name: str, timeout: float = RESTART_PATIENCE_SECONDS) -> None:
        member = self.members[name]
        wait_http_ok(f"http://127.0.0.1:{member.port}/healthz", timeout, log=processes.log_file(self.run_dir, name))

    def pid(self, name: str) -> int | None:
        return processes.read_pid(self.run_dir, name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, name: str, timeout: float = 30.0) -> None:
        processes.stop(self.run_dir, name, timeout=timeout)
        self.members.pop(name, None)

    def wait_gone(self, name: str, timeout: float = 30.0) -> None:
        pid = self.pid(name)
        if pid is not None:
            processes.wait_gone(pid, timeout)

    def running(self, kind: str) -> list[str]:
        return sorted(name for name, member in self.members.items() if member.kind == kind)

    def owner_of_port(self, port: int, kind: str = "dispatcher") -> str | None:
        """The member whose process holds the local end `127.0.0.1:port` of a TCP connection."""
        inode = _socket_inode(port)
        if inode is None:
            return None
        for name in self.running(kind):
            pid = self.pid(name)
            if pid is not None and _holds_socket(pid, inode):
                return name
        return None


def _start_again(start: Callable[[], None], what: str) -> None:
    """Start a server the harness stopped, trying again while its port is taken. The services keep
    connecting to that port while it is down, from ports the system picks in the same range (Linux:
    32768-60999): one may get that very port and connect to itself (TCP self-connect), holding the
    port until the client gives up on it."""
    deadline = time.monotonic() + RESTART_PATIENCE_SECONDS
    while True:
        try:
            start()
            return
        except StackError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s did not come back (%s); starting it again", what, str(exc).splitlines()[0])
            time.sleep(2.0)


def _socket_inode(local_port: int) -> str | None:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                    return fields[9]
    return None


def _holds_socket(pid: int, inode: str) -> bool:
    target = f"socket:[{inode}]"
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
    return False
