"""The faults the harness injects, one at a time, each undone before the next one starts.

Each returns a `FaultRecord`: its kind, when it started and ended (time.time()), and whether it was
really injected (a kill after DATA needs a message in flight while it is armed).
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from devstack.chaos.sink import ChaosSink
from devstack.chaos.stack import ChaosStack

log = logging.getLogger("devstack.chaos")

KINDS = ("kill_stager", "kill_dispatcher", "kill_after_data", "sigterm", "kafka_restart", "postgres_restart",
         "lock_holder", "smtp_tempfail", "smtp_drop_mid_data", "smtp_down", "rebalance")
BACKEND_TERMINATE = "backend_terminate"  # in the background of every run, at a set rate
TERMINATE_EVERY_SECONDS = 4.0


@dataclass
class FaultRecord:
    kind: str
    started: float
    ended: float = 0.0
    injected: bool = True
    detail: str = ""


class Faults:
    def __init__(self, stack: ChaosStack, sink: ChaosSink, rng: random.Random, replicas: int) -> None:
        self.stack = stack
        self.sink = sink
        self.rng = rng
        self.replicas = replicas

    async def inject(self, kind: str) -> FaultRecord:
        record = FaultRecord(kind, time.time())
        action: Callable[[FaultRecord], Awaitable[None]] = getattr(self, f"_{kind}")
        try:
            await action(record)
        finally:
            record.ended = time.time()
        log.info("fault %s done in %.1f s %s", kind, record.ended - record.started, record.detail)
        return record

    async def _restart(self, name: str) -> None:
        await asyncio.to_thread(self.stack.start, name)

    def _sigkill(self, name: str) -> None:
        """kill -9, taking down first the messages the process may not have seen the 250 of (sink.py)."""
        if name.startswith("dispatcher"):
            self.sink.mode.killed_message_ids.extend(
                self.sink.sender_killed(lambda port: self.stack.owner_of_port(port) == name))
        self.stack.kill(name, signal.SIGKILL)

    async def _kill(self, kind: str, record: FaultRecord) -> None:
        name = self.rng.choice(self.stack.running(kind))
        record.detail = name
        self._sigkill(name)
        await asyncio.to_thread(self.stack.wait_gone, name, 10.0)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))
        await self._restart(name)

    async def _kill_stager(self, record: FaultRecord) -> None:
        await self._kill("stager", record)

    async def _kill_dispatcher(self, record: FaultRecord) -> None:
        await self._kill("dispatcher", record)

    async def _kill_after_data(self, record: FaultRecord) -> None:
        killed: list[str] = []

        def kill(peer_port: int) -> None:
            name = self.stack.owner_of_port(peer_port)
            if name is not None:
                self._sigkill(name)
                killed.append(name)

        self.sink.kill_after_data(kill)
        deadline = time.time() + 20.0
        while self.sink.kill_armed and time.time() < deadline:
            await asyncio.sleep(0.05)
        self.sink.disarm()
        if not killed:
            record.injected = False  # no message came while armed, or its sender was not found
            record.detail = "no message in flight"
            return
        record.detail = f"{killed[0]} holding {self.sink.mode.killed_message_ids[-1]}"
        await asyncio.to_thread(self.stack.wait_gone, killed[0], 10.0)
        await asyncio.sleep(1.0)
        await self._restart(killed[0])

    async def _sigterm(self, record: FaultRecord) -> None:
        name = self.rng.choice(self.stack.running("stager") + self.stack.running("dispatcher"))
        record.detail = name
        await asyncio.to_thread(self.stack.stop, name, 30.0)  # SIGTERM: the batch in hand finishes
        await self._restart(name)

    async def _kafka_restart(self, record: FaultRecord) -> None:
        await asyncio.to_thread(self.stack.restart_kafka, self.rng.uniform(1.0, 3.0))

    async def _postgres_restart(self, record: FaultRecord) -> None:
        await asyncio.to_thread(self.stack.restart_postgres, self.rng.uniform(0.5, 2.0))

    async def _lock_holder(self, record: FaultRecord) -> None:
        await self.stack.hold_locks(self.rng.uniform(4.0, 8.0))

    async def _smtp_tempfail(self, record: FaultRecord) -> None:
        code = self.rng.choice((421, 451))
        record.detail = str(code)
        seconds = self.rng.uniform(4.0, 8.0)
        self.sink.refuse_until(time.time() + seconds, code)
        await asyncio.sleep(seconds)

    async def _smtp_drop_mid_data(self, record: FaultRecord) -> None:
        wanted = self.rng.randint(2, 4)
        self.sink.drop_next(wanted)
        deadline = time.time() + 20.0
        while self.sink.mode.drop > 0 and time.time() < deadline:
            await asyncio.sleep(0.05)
        dropped = wanted - self.sink.mode.drop
        self.sink.drop_next(0)
        record.injected = dropped > 0  # no message came while armed: nothing was cut
        record.detail = f"{dropped} connection(s) cut after DATA"

    async def _smtp_down(self, record: FaultRecord) -> None:
        await self.sink.go_down()
        await asyncio.sleep(self.rng.uniform(4.0, 8.0))
        await self.sink.come_up()

    async def _rebalance(self, record: FaultRecord) -> None:
        kind = self.rng.choice(("stager", "dispatcher"))
        extra = f"{kind}-{self.replicas + 1}"
        record.detail = extra
        await self._restart(extra)  # a member joins: the group rebalances
        await asyncio.sleep(self.rng.uniform(5.0, 8.0))
        await asyncio.to_thread(self.stack.stop, extra, 30.0)  # and leaves: again

    async def terminate_backends(self, stop: asyncio.Event, counted: list[float]) -> None:
        """pg_terminate_backend of one service session every few seconds, until `stop`."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=TERMINATE_EVERY_SECONDS)
                return
            except TimeoutError:
                pass
            try:
                if await self.stack.terminate_backends():
                    counted.append(time.time())
            except Exception as exc:  # PostgreSQL restarting right now: the next one will do
                log.debug("terminate_backends: %s", exc)
