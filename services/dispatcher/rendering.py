"""Composing and DKIM-signing emails in worker processes, off the dispatcher's event loop.

Rendering (Jinja, MJML, CSS inlining), MIME and signing are CPU work: on the loop they hold up
claims, SMTP transactions and the records of 250s. Each worker process loads the templates, the
link-signing keys and the DKIM key once, when it starts, and dies with the dispatcher (a killed
dispatcher leaves no worker behind). With `render_workers = 0` the work runs in the dispatcher's
own process (tests, debugging).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

from lifecycle.dkim import DkimSigner, signer_from_settings
from lifecycle.runtime import die_with_parent, settle_heap
from lifecycle.settings import Settings
from lifecycle.templates import TemplateError, Templates
from lifecycle.tokens import SigningKeys
from services.dispatcher import metrics
from services.dispatcher.compose import MessageSpec, compose_wire

log = logging.getLogger("lifecycle.dispatcher")

# Messages per task handed to a worker: fewer round trips, and still several tasks per claim.
CHUNK = 16

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Composed:
    """One composed email, as the claim stores it."""

    message: bytes
    subject: str
    links: list[dict[str, str]]
    # with DKIM on: the message signed as it was composed, for its first attempt (retries sign again)
    signed: bytes | None = None


@dataclass(frozen=True)
class ComposeFailure:
    """A template that could not render this email (picklable, unlike TemplateError)."""

    where: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.message}"


@dataclass
class _Tools:
    settings: Settings
    keys: SigningKeys
    templates: Templates
    signer: DkimSigner | None

    @classmethod
    def load(cls, settings: Settings, templates: Templates | None = None) -> _Tools:
        if templates is None:
            templates = Templates(settings.journeys_dir, settings.default_locale)
        return cls(settings, SigningKeys.from_settings(settings), templates, signer_from_settings(settings))

    def compose(self, specs: Sequence[MessageSpec]) -> list[Composed | ComposeFailure]:
        found: list[Composed | ComposeFailure] = []
        for spec in specs:
            try:
                email = compose_wire(self.settings, self.keys, self.templates, spec)  # CRLF: sent as stored
            except TemplateError as exc:
                found.append(ComposeFailure(str(exc.path), exc.line, exc.message))
            else:
                signed = self.signer.sign(email.message) if self.signer is not None else None
                found.append(Composed(email.message, email.subject, email.links, signed))
        return found

    def sign(self, messages: Sequence[bytes], at: datetime | None = None) -> list[bytes]:
        signer = self.signer
        if signer is None:
            return list(messages)
        return [signer.sign(message, at) for message in messages]


_worker: _Tools | None = None  # in a worker process: what it loaded when it started


def _start_worker(settings: Settings, parent: int) -> None:
    global _worker
    die_with_parent(parent, signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the dispatcher, which stops the pool
    _worker = _Tools.load(settings)
    settle_heap()


def _compose_in_worker(specs: list[MessageSpec]) -> list[Composed | ComposeFailure]:
    assert _worker is not None
    return _worker.compose(specs)


def _sign_in_worker(messages: list[bytes], at: datetime | None = None) -> list[bytes]:
    assert _worker is not None
    return _worker.sign(messages, at)


def _ready() -> int:
    time.sleep(0.05)  # long enough that each worker takes one of the calls start() makes
    return os.getpid()


class Renderer:
    """Composes and signs in `workers` processes (0: in this process)."""

    def __init__(self, settings: Settings, workers: int | None = None, templates: Templates | None = None) -> None:
        """`templates`: those to use in this process (default: loaded from the settings, as the workers do)."""
        self.settings = settings
        self.workers = settings.render_workers if workers is None else workers
        self._local = _Tools.load(settings, templates)  # here too: a bad key or template dir fails at start
        self._pool: Executor | None = None
        if self.workers > 0:
            self._pool = self._new_pool()

    def _new_pool(self) -> Executor:
        # spawn: a fork would copy the loop, the database pool and the sockets into each worker
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(self.settings, os.getpid()))

    @property
    def signs(self) -> bool:
        return self._local.signer is not None

    async def start(self) -> None:
        """Start every worker now (each loads its templates and keys), not on the first claim."""
        if self._pool is not None:
            loop = asyncio.get_running_loop()
            ready: set[int] = set()
            for _ in range(20):
                pool = self._pool
                ready.update(await asyncio.gather(*(loop.run_in_executor(pool, _ready)
                                                    for _ in range(self.workers))))
                if len(ready) >= self.workers:
                    break
            log.info("rendering in %d worker process(es)", self.workers)

    async def compose(self, specs: Sequence[MessageSpec]) -> list[Composed | ComposeFailure]:
        return await self._chunked(list(specs), _compose_in_worker, self._local.compose)

    async def sign(self, message: bytes, at: datetime | None = None) -> bytes:
        """`message` with its DKIM-Signature (unchanged when DKIM is off); `at` is the signature time."""
        if self._local.signer is None:
            return message
        return (await self._chunked([message], partial(_sign_in_worker, at=at),
                                    partial(self._local.sign, at=at)))[0]

    async def _chunked(self, items: list[T], remote: Callable[[list[T]], list[R]],
                       local: Callable[[list[T]], list[R]]) -> list[R]:
        if not items:
            return []
        pool = self._pool
        if pool is None:
            return local(items)
        loop = asyncio.get_running_loop()
        chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
        try:
            results = await asyncio.gather(*(loop.run_in_executor(pool, remote, chunk) for chunk in chunks))
        except BrokenProcessPool:
            # a worker died (killed, out of memory): new workers for what comes next, this batch here
            log.error("a render worker died; starting new ones, this batch is composed in the dispatcher")
            metrics.RENDER_WORKERS_LOST.inc()
            if self._pool is pool:
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            return local(items)
        return [result for chunk in results for result in chunk]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
