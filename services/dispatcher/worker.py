"""The dispatcher: triggers in, journey runs and emails out.

Runs and their next due step are rows in `journey_runs`, claimed with
`FOR UPDATE SKIP LOCKED` so several dispatchers share the work. A send is first
recorded in `sends` under the unique (run, step) key with its whole message and
status `sending`, committed, then handed to SMTP and marked `sent` after the
server's 250. A `sending` row whose lease ran out (a dispatcher died mid-send)
is sent again with the same Message-ID.

DispatcherStore is put together from its concerns: triggers.py (incoming triggers), claim.py
(claiming and planning due steps), writes.py (a claim's sends and run moves), leases.py (sends
around SMTP); their SQL is in sql.py.
"""

from __future__ import annotations

from datetime import time

from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import Clock
from lifecycle.core.journeys import SendPolicy
from lifecycle.journey_catalog import JourneyCatalog
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from services.dispatcher.claim import ClaimSteps
from services.dispatcher.leases import SendLeases, suppress
from services.dispatcher.rendering import Renderer
from services.dispatcher.sql import (
    INSERT_SENDS,
    MARK_SENT_SQL,
    MOVE_RUNS_ON,
    RECHECK_SQL,
    RECIPIENTS_SQL,
    SEND_COLUMNS,
)
from services.dispatcher.store_base import Outgoing
from services.dispatcher.triggers import TriggerHandling

# the names other modules imported from here before the split still import from here
__all__ = [
    "INSERT_SENDS",
    "MARK_SENT_SQL",
    "MOVE_RUNS_ON",
    "RECHECK_SQL",
    "RECIPIENTS_SQL",
    "SEND_COLUMNS",
    "DispatcherStore",
    "Outgoing",
    "send_policy",
    "suppress",
]


class DispatcherStore(TriggerHandling, ClaimSteps, SendLeases):
    def __init__(self, settings: Settings, engine: AsyncEngine, clock: Clock, catalog: JourneyCatalog,
                 renderer: Renderer) -> None:
        self.settings = settings
        self.engine = engine
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.clock = clock
        self.catalog = catalog
        self.renderer = renderer
        self.policy = send_policy(settings)
        self.keys = SigningKeys.from_settings(settings)


def _clock_time(value: str | None) -> time | None:
    return time.fromisoformat(value) if value else None


def send_policy(settings: Settings) -> SendPolicy:
    return SendPolicy(
        sunset_days=settings.sunset_days,
        frequency_cap_count=settings.frequency_cap_count,
        frequency_cap_hours=settings.frequency_cap_hours,
        quiet_start=_clock_time(settings.quiet_hours_start),
        quiet_end=_clock_time(settings.quiet_hours_end),
        timezone=settings.shop_timezone,
    )
