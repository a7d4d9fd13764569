"""Which ingest worker lets the others take the next connection first (services/ingest/balancing.py)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest
import uvicorn

from services.ingest.balancing import ABSENT, BalancedServer, ahead


def test_a_worker_holding_more_than_another_lets_it_go_first() -> None:
    assert ahead([3, 1], 0) == 2
    assert ahead([3, 1], 1) == 0
    assert ahead([2, 2], 0) == ahead([2, 2], 1) == 0  # even: both take connections
    assert (ahead([2, 2, 1], 0), ahead([2, 2, 1], 1), ahead([2, 2, 1], 2)) == (1, 1, 0)


def test_a_lone_worker_and_absent_workers_make_nobody_wait() -> None:
    assert ahead([5], 0) == 0
    assert ahead([5, ABSENT], 0) == 0  # a worker not running (being replaced) is never the least loaded
    assert ahead([5, ABSENT, 4], 0) == 1


class _FailingListener:
    """A listening socket whose accept fails as when the process is out of file descriptors."""

    def __init__(self) -> None:
        self.real = socket.socket()
        self.calls = 0

    def setblocking(self, flag: bool) -> None:
        self.real.setblocking(flag)

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def close(self) -> None:
        self.real.close()


async def test_a_failing_accept_is_logged_now_and_then_and_the_worker_leaves_its_slot(
        caplog: pytest.LogCaptureFixture) -> None:
    listener = _FailingListener()
    loads = [0, 0]
    # log_config None: uvicorn's own would take over its loggers for every later test in this process
    config = uvicorn.Config(app=lambda scope, receive, send: None, log_config=None)
    server = BalancedServer(config, listener, loads, 0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="lifecycle.ingest"):
        task = asyncio.create_task(server._accept_all())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.wait([task])
    listener.close()
    assert listener.calls > 3  # it kept trying
    warnings = [r.getMessage() for r in caplog.records if "could not accept" in r.getMessage()]
    assert warnings == ["ingest worker 0 could not accept a connection: [Errno 24] Too many open files"]
    assert loads[0] == ABSENT  # stopped: nobody waits for it
