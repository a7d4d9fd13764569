"""Recording the server's 250s in batches (group commit).

A send's connection carries no other message until its `sent` is committed (lifecycle/smtp.py), so
every connection of the pool waits here at most once at a time. The first 250 waits `gather` seconds
(a few milliseconds) for the others, then they are written together; the 250s that arrive while that
write is in flight go together in the next one. Each row of a batch is fenced by its own claim's
token, as the single UPDATE was. Without the wait, the pool's 250s arrive a few milliseconds apart
and nearly every UPDATE held one: each costs the dispatcher and PostgreSQL about as much for one
row as for four.

The time from a 250 to its commit is the window in which a crash sends that email twice: it is
measured (`lifecycle_dispatcher_record_delay_seconds`) and the 250s inside it are counted
(`lifecycle_dispatcher_sends_unrecorded`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.dispatcher import metrics
from services.dispatcher.worker import Outgoing

log = logging.getLogger("lifecycle.dispatcher")

# The longest a delivered message waits for its `sent` to be recorded (PostgreSQL away): past it,
# the row's lease runs out, another dispatcher sends it again, and that is logged as a duplicate.
MARK_SENT_PATIENCE_SECONDS = 300.0
# Most 250s in one UPDATE.
MAX_BATCH = 500

MarkSent = Callable[[list[Outgoing]], Awaitable[set[int]]]


@dataclass
class _Waiting:
    item: Outgoing
    accepted_at: float
    done: asyncio.Future[bool | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SentRecorder:
    """`await recorder.sent(item)` after a 250: True once recorded, False when the send was no longer
    ours (another dispatcher had taken it over), None when PostgreSQL stayed away past the patience."""

    def __init__(self, mark_sent: MarkSent, patience: float = MARK_SENT_PATIENCE_SECONDS,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, gather: float = 0.0) -> None:
        self.mark_sent = mark_sent
        self.patience = patience
        self.sleep = sleep
        self.gather = gather
        self._waiting: list[_Waiting] = []
        self._task: asyncio.Task[None] | None = None

    async def sent(self, item: Outgoing) -> bool | None:
        waiting = _Waiting(item, time.monotonic())
        self._waiting.append(waiting)
        metrics.UNRECORDED.inc()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._write())
        # shielded: a cancelled sender still gets its 250 recorded
        return await asyncio.shield(waiting.done)

    async def _write(self) -> None:
        if self.gather > 0 and len(self._waiting) < MAX_BATCH:
            try:
                await asyncio.sleep(self.gather)  # the other connections' 250s, due in moments
            except BaseException as exc:
                batch, self._waiting = self._waiting, []
                self._fail(batch, exc)
                raise
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                recorded = await self._durably([w.item for w in batch])
            except BaseException as exc:
                self._fail(batch, exc)
                raise
            now = time.monotonic()
            metrics.RECORD_BATCH.observe(len(batch))
            for waiting in batch:
                metrics.RECORD_DELAY.observe(now - waiting.accepted_at)
                if not waiting.done.done():
                    waiting.done.set_result(None if recorded is None else waiting.item.send_id in recorded)
            metrics.UNRECORDED.dec(len(batch))

    @staticmethod
    def _fail(batch: list[_Waiting], exc: BaseException) -> None:
        """The senders of `batch` learn that their 250s were not recorded (they are no longer counted)."""
        for waiting in batch:
            if not waiting.done.done():
                waiting.done.set_exception(exc)
        metrics.UNRECORDED.dec(len(batch))

    async def _durably(self, items: list[Outgoing]) -> set[int] | None:
        """`mark_sent`, tried again and again while PostgreSQL is away; None if it never came back."""
        delay = 0.1
        give_up = time.monotonic() + self.patience
        while True:
            try:
                return await self.mark_sent(items)
            except Exception as exc:  # whatever it is, the 250s must be recorded: keep trying for a while
                if time.monotonic() > give_up:
                    log.error("%d delivered send(s) could not be recorded for %.0f s: %s; they will be sent again"
                              " once their lease runs out (send ids %s)", len(items), self.patience, exc,
                              ", ".join(str(i.send_id) for i in items[:20]))
                    return None
                metrics.MARK_SENT_RETRIES.inc()
                log.warning("recording %d send(s) as sent failed, trying again in %.1f s: %s", len(items), delay,
                            exc)
                await self.sleep(delay)
                delay = min(2.0, delay * 2)

    async def close(self) -> None:
        """Wait for the writes in flight."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
