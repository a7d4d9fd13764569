"""The one source of "now" for every service.

`SystemClock` in production; `VirtualClock` reads a single row in PostgreSQL that
tests, the demo and the scenario runner set and advance; `ManualClock` for unit
tests. Business code receives a clock and never reads the system time itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


class Clock(Protocol):
    async def now(self) -> datetime: ...


class SystemClock:
    async def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    async def now(self) -> datetime:
        return self.current

    def set(self, moment: datetime) -> None:
        self.current = moment


class ClockNotSet(RuntimeError):
    """The virtual clock has no reading yet."""


class VirtualClock:
    """Reads the shared virtual time from the `virtual_clock` row."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def now(self) -> datetime:
        async with self._engine.connect() as conn:
            value = (await conn.execute(text("SELECT now_at FROM virtual_clock WHERE id = 1"))).scalar()
        if value is None:
            raise ClockNotSet("the virtual clock is not set yet: the scenario runner or `lifecycle demo` sets it")
        moment: datetime = value
        return moment.astimezone(UTC)


async def set_virtual_time(engine: AsyncEngine, moment: datetime) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO virtual_clock (id, now_at) VALUES (1, :t) "
                "ON CONFLICT (id) DO UPDATE SET now_at = EXCLUDED.now_at"
            ),
            {"t": moment},
        )


async def virtual_time_is_set(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT count(*) FROM virtual_clock"))).scalar() == 1


def make_clock(kind: str, engine: AsyncEngine) -> Clock:
    if kind == "virtual":
        return VirtualClock(engine)
    return SystemClock()
