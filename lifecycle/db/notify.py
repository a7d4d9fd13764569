"""Wake-ups across processes: PostgreSQL LISTEN/NOTIFY.

A transaction that leaves work for another process runs `NOTIFY` on a channel: PostgreSQL
delivers it when the transaction commits, and never if it rolls back. The process that does
that work listens on the channel and looks at once, instead of at its next idle poll.

A notification is a hint, never the only way work is found: the poll stays, so a listener
that is reconnecting (a restarted server, a terminated backend) delays work by one poll at
most, and on every (re)connection the listener wakes its process once for what it may have
missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

import asyncpg
from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url

from lifecycle.consuming import Backoff

log = logging.getLogger("lifecycle.notify")

# a stager wrote outbox rows: the relays of their partitions publish them
OUTBOX_CHANNEL: Final = "lifecycle_outbox"


def notify(channel: str) -> TextClause:
    """The statement that notifies `channel` when the current transaction commits."""
    return text("SELECT pg_notify(:channel, '')").bindparams(channel=channel)


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL of the settings as a DSN asyncpg reads (no `+asyncpg` driver part)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """Listens on `channel` until `stop`, calling `wake` for each notification; reconnects after
    any failure, with a growing pause, and never ends the process."""

    def __init__(self, database_url: str, channel: str, wake: Callable[[], None], stop: asyncio.Event,
                 application_name: str) -> None:
        self.dsn = asyncpg_dsn(database_url)
        self.channel = channel
        self.wake = wake
        self.stop = stop
        self.application_name = application_name
        self.connected = asyncio.Event()  # set while listening (tests and readiness can look)

    async def run(self) -> None:
        backoff = Backoff(first=0.5, longest=10.0)
        while not self.stop.is_set():
            try:
                await self._listen_once()
                backoff.reset()
            except Exception as exc:  # the database away or the backend terminated: listen again later
                log.info("listening on %s stopped (%s: %s); listening again", self.channel, type(exc).__name__,
                         (str(exc).splitlines() or [""])[0])
            finally:
                self.connected.clear()
            if not self.stop.is_set():
                await backoff.wait(self.stop)

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        connection = await asyncpg.connect(self.dsn, timeout=10,
                                           server_settings={"application_name": self.application_name})
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(self.channel, self._notified)
            self.connected.set()
            self.wake()  # whatever was notified while nobody listened
            while not self.stop.is_set() and not lost.is_set() and not connection.is_closed():
                # a broken connection that closes quietly is found by the next query
                waiters = [asyncio.ensure_future(lost.wait()), asyncio.ensure_future(self.stop.wait())]
                try:
                    await asyncio.wait(waiters, timeout=HEALTH_CHECK_SECONDS, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                if not self.stop.is_set() and not lost.is_set():
                    await connection.execute("SELECT 1", timeout=10)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=5)

    def _notified(self, connection: Any, pid: int, channel: str, payload: str) -> None:
        self.wake()


# how often a quiet listening connection is checked
HEALTH_CHECK_SECONDS = 10.0
