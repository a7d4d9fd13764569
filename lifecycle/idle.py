"""Is the pipeline idle? The one place that decides, used by the scenario runner, the demo and tests.

Idle means all of: the stager group consumed every event (committed offsets
equal end offsets), the outbox is empty, the dispatcher group consumed every
trigger, no time-driven change, journey step or campaign start is due at or before
now, and no send is in flight. Work moves downstream while we look, so the check is
repeated until two consecutive looks agree on a fingerprint of all progress.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import Clock, VirtualClock, set_virtual_time
from lifecycle.settings import Settings


class NotIdle(Exception):
    """The pipeline did not become idle in time; the message says what was still busy."""


@dataclass(frozen=True)
class Look:
    busy: tuple[str, ...]
    fingerprint: tuple[object, ...]
    pending: int = 0  # work items left: unconsumed messages, due changes and steps, outbox rows, sends in flight


class PipelineWatch:
    def __init__(self, settings: Settings, engine: AsyncEngine, clock: Clock | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock or VirtualClock(engine)
        self._admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        self._consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False)
        self._partitions_of: dict[str, list[TopicPartition]] = {}
        self.last: Look | None = None  # the latest look of wait_idle: what was still busy when it gave up

    async def start(self) -> None:
        await self._admin.start()
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()
        await self._admin.close()

    async def _partitions(self, topic: str) -> list[TopicPartition]:
        cached = self._partitions_of.get(topic)
        if cached:
            return cached
        described = await self._admin.describe_topics([topic])
        found = [TopicPartition(topic, p["partition"]) for d in described if d.get("error_code") == 0
                 for p in d.get("partitions", [])]
        if not found:
            raise NotIdle(f"topic {topic} not found: are the services up?")
        self._partitions_of[topic] = sorted(found, key=lambda tp: tp.partition)
        return self._partitions_of[topic]

    async def _group_lag(self, topic: str, group: str) -> int:
        tps = await self._partitions(topic)
        ends = await self._consumer.end_offsets(tps)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag

    async def look(self) -> Look:
        now = await self.clock.now()
        busy: list[str] = []
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM due_changes WHERE due_at <= :now) AS dues,"
                        " (SELECT count(*) FROM outbox) AS outbox,"
                        " (SELECT count(*) FROM journey_runs WHERE status = 'active' AND due_at <= :now) AS steps,"
                        " (SELECT count(*) FROM campaigns WHERE status = 'scheduled' AND start_at <= :now)"
                        " AS campaigns,"
                        " (SELECT count(*) FROM sends WHERE status = 'sending') AS sending,"
                        " (SELECT count(*) FROM processed_events) AS events,"
                        " (SELECT count(*) FROM processed_triggers) AS triggers,"
                        " (SELECT count(*) FROM sends) AS sends"
                    ),
                    {"now": now},
                )
            ).one()
        event_lag = await self._group_lag(self.settings.events_topic, self.settings.stager_group)
        trigger_lag = await self._group_lag(self.settings.triggers_topic, self.settings.dispatcher_group)
        checks = {
            f"{event_lag} events not yet consumed by the stager": event_lag,
            f"{row.dues} time-driven changes due": row.dues,
            f"{row.outbox} triggers in the outbox": row.outbox,
            f"{trigger_lag} triggers not yet consumed by the dispatcher": trigger_lag,
            f"{row.steps} journey steps due": row.steps,
            f"{row.campaigns} campaigns due to start": row.campaigns,
            f"{row.sending} sends in flight": row.sending,
        }
        busy = [what for what, count in checks.items() if count]
        # on the system clock "now" moves by itself: only the virtual clock's reading is progress
        stamp = now if isinstance(self.clock, VirtualClock) else None
        return Look(tuple(busy), (stamp, row.events, row.triggers, row.sends, event_lag, trigger_lag),
                    sum(int(count) for count in checks.values()))

    async def wait_idle(self, timeout: float = 120.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        previous: Look | None = None
        while True:
            current = await self.look()
            self.last = current
            if not current.busy and previous is not None and not previous.busy \
                    and previous.fingerprint == current.fingerprint:
                return
            if asyncio.get_running_loop().time() > deadline:
                busy = "; ".join(current.busy) or "still moving"
                raise NotIdle(f"pipeline not idle after {timeout:.0f} s: {busy}")
            previous = current
            await asyncio.sleep(0.05)

    async def next_due(self, until: datetime) -> datetime | None:
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(
                    text(
                        "SELECT min(d) FROM ("
                        " SELECT min(due_at) AS d FROM due_changes WHERE due_at <= :until"
                        " UNION ALL SELECT min(due_at) FROM journey_runs WHERE status = 'active' AND due_at <= :until"
                        " UNION ALL SELECT min(start_at) FROM campaigns WHERE status = 'scheduled'"
                        " AND start_at <= :until"
                        ") AS dues"
                    ),
                    {"until": until},
                )
            ).scalar()
        moment: datetime | None = value
        return moment

    async def advance_to(self, target: datetime, timeout: float = 120.0) -> None:
        """Move the virtual clock to `target`, doing all work due on the way in due-time order."""
        await self.wait_idle(timeout)
        while True:
            now = await self.clock.now()
            due = await self.next_due(target)
            if due is None or due > target:
                break
            await set_virtual_time(self.engine, max(due, now))
            await self.wait_idle(timeout)
        await set_virtual_time(self.engine, target)
        await self.wait_idle(timeout)
