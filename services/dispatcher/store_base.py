"""What the parts of DispatcherStore (services/dispatcher/worker.py) share: its attributes, the runs
it reads, and the records a claim passes from planning to writing and on to SMTP."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.clock import Clock
from lifecycle.core.journeys import Journey, Run, SendAudience, SendNow, SendPolicy, SendStep
from lifecycle.journey_catalog import JourneyCatalog
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from services.dispatcher.compose import MessageSpec
from services.dispatcher.rendering import Renderer


class _Incrementable(Protocol):
    def inc(self, amount: float = 1) -> None: ...


# While a claim decides its runs together, what they count waits here: if one run fails, they are
# decided again one by one, and a count made in the attempt that was undone must not stay.
_PENDING_COUNTS: ContextVar[list[Callable[[], None]] | None] = ContextVar("pending_counts", default=None)


def count(counter: _Incrementable) -> None:
    """`counter.inc()`, or once the claim's decisions are kept."""
    pending = _PENDING_COUNTS.get()
    if pending is None:
        counter.inc()
    else:
        pending.append(counter.inc)


@dataclass(frozen=True)
class _Claim:
    token: str  # fencing token of this claim's sends
    lease_deadline: float  # monotonic() when their lease may run out
    now: datetime


@dataclass(frozen=True)
class _Planned:
    """A run whose due step sends an email, decided, waiting for the email to be composed."""

    run: Run
    journey: Journey
    version_id: int | None
    index: int
    step: SendStep
    decision: SendNow
    values: dict[str, Any]  # the send row so far
    spec: MessageSpec


@dataclass(frozen=True)
class Outgoing:
    send_id: int
    to_address: str
    message: bytes
    journey: str
    step: int
    customer_id: str
    lease_token: str  # the claim's fencing token: every change after SMTP names it
    lease_deadline: float  # monotonic() by which our lease may have run out
    audience: SendAudience  # what the run's journey version accepts (checked again before SMTP)
    signed: bytes | None = None  # `message` DKIM-signed when it was composed (first attempts only)


def _run_from_row(row: Any) -> Run:
    return Run(
        run_id=row.run_id,
        journey=row.journey,
        status=row.status,
        entry_key=row.entry_key,
        step_index=row.step_index,
        due_at=row.due_at,
        started_at=row.started_at,
        context=dict(row.context),
        clicks=list(row.clicks),
        version_id=row.version_id,
        step_id=row.step_id,
    )


class StoreBase:
    # set by DispatcherStore.__init__; the parts' methods stay methods of the store, so a test that
    # patches one on DispatcherStore changes what the others call
    settings: Settings
    engine: AsyncEngine
    # the same pool, for single statements: no BEGIN and COMMIT round trips around them (one statement
    # is atomic and durable on its own)
    autocommit: AsyncEngine
    clock: Clock
    catalog: JourneyCatalog
    renderer: Renderer
    policy: SendPolicy
    keys: SigningKeys

    async def _run_journeys(self, conn: AsyncConnection, runs: list[Run],
                            current: dict[str, tuple[int, Journey]]) -> dict[int, tuple[int | None, Journey | None]]:
        """Per run: (version_id, journey) of the version it runs on. A run from before versions existed
        takes the current version of its journey."""
        versions = await self.catalog.versions(conn, {r.version_id for r in runs if r.version_id is not None})
        found: dict[int, tuple[int | None, Journey | None]] = {}
        for run in runs:
            if run.version_id is not None:
                found[run.run_id] = (run.version_id, versions.get(run.version_id))
            else:
                version_id, journey = current.get(run.journey, (None, None))
                found[run.run_id] = (version_id, journey)
        return found
