"""The ingest workers' connections spread evenly over them.

The workers share one listening socket. Left to the event loop, a worker that wakes accepts every
connection waiting, and a kept-alive connection stays with the worker that accepted it: a shop
backend's few long-lived connections often all land on one worker while the other cores idle. In
the benchmark, four connections split three and one cost the API a quarter of its throughput
against two and two (docs/performance.md).

Here each worker accepts for itself. It writes how many connections it holds into an array shared
with the other workers (made by the supervisor), and a worker holding more than the least loaded
one waits a moment (`AHEAD_WAIT_SECONDS` per connection it is ahead, at most
`AHEAD_WAIT_MOST_SECONDS`) before it takes a waiting connection, so that another takes it first.
It only waits, never refuses: a busy or stopped worker delays the next connection by that much, no
more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import MutableSequence, Sequence

import uvicorn

log = logging.getLogger("lifecycle.ingest")

# How long a worker ahead of another by one connection lets the others take a waiting one first
# (twice as long when two ahead, and so on, up to AHEAD_WAIT_MOST_SECONDS).
AHEAD_WAIT_SECONDS = 0.02
AHEAD_WAIT_MOST_SECONDS = 0.1
# How often a worker waiting for connections writes its count again (connections also close).
REFRESH_SECONDS = 0.1
# A slot's count while its worker is not running: never the least loaded, so nobody waits for it.
ABSENT = 1 << 30
# A failing accept (out of file descriptors) is logged at most this often.
ACCEPT_ERROR_LOG_SECONDS = 10.0


def ahead(loads: Sequence[int], slot: int) -> int:
    """By how many connections the worker of `slot` holds more than the least loaded other (0: none)."""
    others = [load for index, load in enumerate(loads) if index != slot]
    return max(0, loads[slot] - min(others)) if others else 0


class BalancedServer(uvicorn.Server):
    """uvicorn's server on a listening socket shared with other workers, accepting as above.

    `loads` is the shared array (one int per worker), `slot` this worker's place in it."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, loads: MutableSequence[int], slot: int) -> None:
        super().__init__(config)
        self.sock = sock
        self.loads = loads
        self.slot = slot
        self._opening = 0  # accepted, not yet one of uvicorn's connections
        self._handing: set[asyncio.Task[None]] = set()
        self._logged_at = -ACCEPT_ERROR_LOG_SECONDS

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the application's lifespan; no listener of uvicorn's own
        if self.started:
            # in uvicorn's servers: its shutdown stops accepting before it drains the connections
            self.servers.append(_Acceptor(asyncio.create_task(self._accept_all()), self.sock))  # type: ignore[arg-type]

    def _protocol(self) -> asyncio.Protocol:
        # what uvicorn's own listener makes for each connection, telling the others when it closes:
        # a client that closes its connections and opens new ones finds the counts as they are
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state)
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            lost(exc)
            self._publish()

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        return protocol

    def _publish(self) -> None:
        self.loads[self.slot] = len(self.server_state.connections) + self._opening

    async def _accept_all(self) -> None:
        loop = asyncio.get_running_loop()
        self.sock.setblocking(False)
        try:
            while True:
                self._publish()
                lead = ahead(self.loads, self.slot)
                if lead:
                    await asyncio.sleep(min(AHEAD_WAIT_MOST_SECONDS, lead * AHEAD_WAIT_SECONDS))
                try:
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    await _readable(loop, self.sock, REFRESH_SECONDS)
                    continue
                except OSError as exc:  # out of descriptors, a connection reset before it was accepted
                    if time.monotonic() - self._logged_at >= ACCEPT_ERROR_LOG_SECONDS:
                        self._logged_at = time.monotonic()
                        log.warning("ingest worker %d could not accept a connection: %s", self.slot, exc)
                    await asyncio.sleep(AHEAD_WAIT_SECONDS)
                    continue
                self._opening += 1
                self._publish()
                task = asyncio.create_task(self._hand_over(conn))
                self._handing.add(task)
                task.add_done_callback(self._handing.discard)
        finally:
            self.loads[self.slot] = ABSENT

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._protocol, conn, ssl=self.config.ssl)
        except OSError:
            conn.close()
        finally:
            self._opening -= 1
            self._publish()  # a connection lost on the way in no longer counts


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket, timeout: float) -> None:
    """Until a connection waits on `sock`, or `timeout`, without accepting it."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready, timeout)
    finally:
        loop.remove_reader(sock.fileno())


class _Acceptor:
    """The accepting task, closed and awaited by uvicorn's shutdown as its servers are."""

    def __init__(self, task: asyncio.Task[None], sock: socket.socket) -> None:
        self.task = task
        self.sock = sock

    def close(self) -> None:
        self.task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.wait([self.task])  # its cancellation, not this caller's
        self.sock.close()
