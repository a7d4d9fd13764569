"""Pooled connections: one idle for a while is pinged and replaced if its backend is gone; one used a
moment ago is not pinged, and if it broke, its statement fails as transient and the next one works."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.consuming import is_transient
from lifecycle.db.engine import make_engine
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration


async def _pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})).scalar_one()


async def test_an_idle_connection_whose_backend_was_terminated_is_replaced_before_use(infra: Settings) -> None:
    engine, other = make_engine(infra, "test-ping", pool_size=1), make_engine(infra, "test-terminator")
    try:
        first = await _pid(engine)
        await _terminate(other, first)
        await asyncio.sleep(1.2)  # beyond PING_AFTER_IDLE_SECONDS: pinged at checkout
        assert await _pid(engine) != first
    finally:
        await engine.dispose()
        await other.dispose()


async def test_a_connection_used_a_moment_ago_fails_as_transient_once_then_a_new_one_is_used(
        infra: Settings) -> None:
    engine, other = make_engine(infra, "test-ping", pool_size=1), make_engine(infra, "test-terminator")
    try:
        first = await _pid(engine)
        await _terminate(other, first)
        await asyncio.sleep(0.2)  # back in the pool for less than PING_AFTER_IDLE_SECONDS: not pinged
        with pytest.raises(sa_exc.DBAPIError) as failure:
            await _pid(engine)
        assert is_transient(failure.value)
        assert await _pid(engine) != first
    finally:
        await engine.dispose()
        await other.dispose()
