"""The benchmark's private stack (port offset 200, system clock) and what every phase shares: services
started and stopped one by one (the fault harness's ChaosStack, on this stack's ports), state reset,
the SMTP sink's messages with their arrival times, waits and the services' metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from email.parser import BytesHeaderParser
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import INGEST_WORKERS, Delivery, say
from devstack import StackError, private_settings, processes, service_env
from devstack.chaos.stack import ChaosStack, Member
from devstack.smtp_sink import clear_messages, mail_dir
from lifecycle.db.engine import make_engine
from lifecycle.kafka import ensure_topics
from lifecycle.scenario import STATE_TABLES
from lifecycle.settings import Settings

PORT_OFFSET = 200  # the benchmark's ports: apart from the local stack's, the tests' and the fault harness's
# the second stager and dispatcher listen just above the stack's own ports (stager +3, dispatcher +3)
REPLICA_PORT_STEP = 3


def bench_settings(run_dir: Path) -> Settings:
    return private_settings(run_dir, PORT_OFFSET, clock="system", ingest_workers=INGEST_WORKERS)


class BenchStack(ChaosStack):
    """Kafka, PostgreSQL and the SMTP sink of devstack, and the services as named processes:
    `ingest`, `stager`, `dispatcher` (the names `devstack.down` knows), `stager-2`, `dispatcher-2`."""

    def __init__(self, settings: Settings, profile_dir: Path | None = None) -> None:
        super().__init__(settings)
        self.profile_dir = profile_dir
        self._engine: AsyncEngine | None = None

    def member(self, name: str) -> Member:
        kind, _, number = name.partition("-")
        base = {"ingest": self.settings.ingest_port, "stager": self.settings.stager_port,
                "dispatcher": self.settings.dispatcher_port}[kind]
        extra = int(number) - 1 if number else 0
        return Member(name, kind, base + REPLICA_PORT_STEP * extra)

    def start(self, name: str, wait: bool = True, settings: Settings | None = None, phase: str = "") -> None:
        """Start one service process (with `settings` if given), then wait for its /healthz."""
        member = self.member(name)
        if processes.port_open("127.0.0.1", member.port):
            raise StackError(f"{name}: port 127.0.0.1:{member.port} is already in use by another process")
        env = service_env(settings or self.settings)
        if member.kind == "stager":
            env["LIFECYCLE_STAGER_PORT"] = str(member.port)
        elif member.kind == "dispatcher":
            env["LIFECYCLE_DISPATCHER_PORT"] = str(member.port)
        argv = [sys.executable, "-m", "lifecycle.cli", member.kind]
        if self.profile_dir is not None:
            # written when the service exits after SIGTERM
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            out = self.profile_dir / f"{phase or 'run'}-{name}.prof"
            argv = [sys.executable, "-m", "bench.profiled", str(out), member.kind]
            root = str(Path(__file__).resolve().parents[1])
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        processes.spawn(self.run_dir, name, argv, env=env)
        self.members[name] = member
        if wait:
            self.wait_healthy(name)

    def only(self, names: tuple[str, ...], settings: Settings | None = None, phase: str = "") -> None:
        """Exactly these services running: the others stopped, the missing ones started."""
        for name in sorted(set(self.members) - set(names)):
            self.stop(name)
        for name in names:
            if name not in self.members:
                say(f"  starting {name}")
                self.start(name, settings=settings, phase=phase)

    def stop_services(self) -> None:
        for name in sorted(self.members):
            self.stop(name)

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.member(name).port}{path}"

    async def database(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = make_engine(self.settings, "bench")
        return self._engine

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


def summarize_profiles(profile_dir: Path, lines: int = 30) -> None:
    """A text summary beside each .prof file: the functions with the most own time, then cumulative."""
    for path in sorted(profile_dir.glob("*.prof")):
        with contextlib.suppress(Exception), path.with_suffix(".txt").open("w") as out:
            stats = pstats.Stats(str(path), stream=out)
            stats.strip_dirs().sort_stats("tottime").print_stats(lines)
            stats.sort_stats("cumulative").print_stats(lines)


# --- state ---------------------------------------------------------------------------------------


async def reset(stack: BenchStack) -> None:
    """Start a phase from nothing: the state tables the scenario runner empties, the events and triggers
    no service consumed yet skipped (their groups committed at the end), the sink emptied."""
    engine = await stack.database()
    async with engine.begin() as conn:
        await conn.execute(text(f"TRUNCATE {', '.join(STATE_TABLES)}"))
    settings = stack.settings
    await ensure_topics(settings)
    await skip_backlog(settings, settings.stager_group, settings.events_topic)
    await skip_backlog(settings, settings.dispatcher_group, settings.triggers_topic)
    clear_messages(mail_dir(settings))


async def partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [TopicPartition(topic, p["partition"]) for d in described if d.get("error_code") == 0
             for p in d.get("partitions", [])]
    if not found:
        raise StackError(f"topic {topic} not found")
    return sorted(found, key=lambda tp: tp.partition)


async def end_offsets(settings: Settings, topic: str) -> dict[TopicPartition, int]:
    tps = await partitions(settings, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        return ends
    finally:
        await consumer.stop()


async def skip_backlog(settings: Settings, group: str, topic: str) -> None:
    """Commit `group`'s offsets at the end of `topic` (no member of the group may be running)."""
    ends = await end_offsets(settings, topic)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(ends))
        await consumer.commit(dict(ends))
    finally:
        await consumer.stop()


async def group_lag(settings: Settings, group: str, ends: dict[TopicPartition, int]) -> int:
    """Messages up to `ends` that `group` has not committed yet."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group, partitions=list(ends))
    finally:
        await admin.close()
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, end - done)
    return lag


async def scalar(engine: AsyncEngine, sql: str, params: dict[str, object] | None = None) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text(sql), params or {})).scalar() or 0)


# --- the sink ------------------------------------------------------------------------------------


def message_count(settings: Settings) -> int:
    with os.scandir(mail_dir(settings)) as entries:
        return sum(1 for entry in entries if entry.name.endswith(".eml") and not entry.name.startswith("."))


def deliveries(settings: Settings) -> list[Delivery]:
    """Every message in the sink, in arrival order: headers only, and the file's modification time, which
    the sink sets when it stores the message, before it answers 250 (the most precise arrival time)."""
    parser = BytesHeaderParser()
    found: list[Delivery] = []
    directory = mail_dir(settings)
    for path in sorted(directory.glob("*.eml")):
        with contextlib.suppress(FileNotFoundError):
            at = path.stat().st_mtime_ns / 1e9
            with path.open("rb") as raw:
                headers = parser.parse(raw)
            found.append(Delivery(
                message_id=str(headers.get("Message-ID", "")).strip(),
                to=str(headers.get("To", "")).strip().lower(),
                # a campaign's email names its campaign instead of a journey and a step
                journey=str(headers.get("X-Lifecycle-Journey")
                            or f"campaign:{headers.get('X-Lifecycle-Campaign', '')}"),
                step=int(str(headers.get("X-Lifecycle-Step") or 0)),
                at=at,
            ))
    return found


# --- waiting -------------------------------------------------------------------------------------


async def wait_until(check: Callable[[], Awaitable[tuple[bool, str]]], label: str, timeout: float,
                     interval: float = 0.05) -> float:
    """Poll `check` (done, progress) until done; returns time.time() of the look that found it done.
    Raises TimeoutError with the last progress."""
    deadline = time.monotonic() + timeout
    last_print = time.monotonic()
    while True:
        done, progress = await check()
        if done:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: not done after {timeout:.0f} s ({progress})")
        if time.monotonic() - last_print > 5:
            say(f"  {label}: {progress}")
            last_print = time.monotonic()
        await asyncio.sleep(interval)


async def metric(client: httpx.AsyncClient, url: str, name: str) -> float | None:
    """One sample of an unlabelled Prometheus counter or gauge, None when the service does not answer yet."""
    try:
        response = await client.get(url)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    for line in response.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None
