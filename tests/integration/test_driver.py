"""Hot statements on asyncpg itself (lifecycle/db/driver.py): the pool's connections, their codecs and
settings, each statement committed, and a connection that broke dropped from the pool."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from lifecycle.consuming import is_transient
from lifecycle.db.driver import DriverStatement, fetch
from lifecycle.db.engine import make_engine
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration

PID = DriverStatement("SELECT pg_backend_pid() AS pid, current_setting('application_name') AS name")


async def test_a_statement_runs_on_a_pooled_connection_with_the_engines_settings_and_codecs(infra: Settings) -> None:
    engine = make_engine(infra, "test-driver", pool_size=1)
    try:
        rows = await fetch(engine, DriverStatement(
            "SELECT CAST(:doc AS text)::jsonb AS doc, CAST(:n AS int) + CAST(:n AS int) AS twice"),
            {"doc": '{"a": [1, 2.5, "é"]}', "n": 21})
        assert [dict(row) for row in rows] == [{"doc": {"a": [1, 2.5, "é"]}, "twice": 42}]
        first = (await fetch(engine, PID, {}))[0]
        assert first["name"] == "lifecycle-test-driver"
        async with engine.connect() as conn:  # the same pooled connection: it went back to the pool
            assert (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one() == first["pid"]
    finally:
        await engine.dispose()


async def test_each_statement_is_committed_as_it_returns(infra: Settings) -> None:
    engine = make_engine(infra, "test-driver", pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS driver_probe (n int)"))
            await conn.execute(text("TRUNCATE driver_probe"))
        await fetch(engine, DriverStatement("INSERT INTO driver_probe SELECT unnest(CAST(:n AS int[])) RETURNING n"),
                    {"n": [1, 2, 3]})
        other = make_engine(infra, "test-reader")
        try:
            async with other.connect() as conn:
                assert (await conn.execute(text("SELECT sum(n) FROM driver_probe"))).scalar_one() == 6
        finally:
            await other.dispose()
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE driver_probe"))
    finally:
        await engine.dispose()


async def test_a_connection_that_broke_fails_as_transient_and_is_dropped_from_the_pool(infra: Settings) -> None:
    engine, other = make_engine(infra, "test-driver", pool_size=1), make_engine(infra, "test-terminator")
    try:
        first = (await fetch(engine, PID, {}))[0]["pid"]
        async with other.connect() as conn:
            assert (await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first})).scalar_one()
        await asyncio.sleep(0.2)  # not idle long enough to be pinged at checkout
        with pytest.raises(Exception) as failure:
            await fetch(engine, PID, {})
        assert is_transient(failure.value)
        assert (await fetch(engine, PID, {}))[0]["pid"] != first
    finally:
        await engine.dispose()
        await other.dispose()


def test_parameters_are_numbered_in_order_of_first_use_and_casts_are_left_alone_as_text_does() -> None:
    statement = DriverStatement("SELECT CAST(:b AS jsonb), CAST(:a AS int), :b, 'x::y', a.c::text FROM a WHERE :c = 1")
    assert statement.sql == "SELECT CAST($1 AS jsonb), CAST($2 AS int), $1, 'x::y', a.c::text FROM a WHERE $3 = 1"
    assert statement.names == ("b", "a", "c")
    assert statement.arguments({"a": 1, "b": "{}", "c": 3, "unused": 4}) == ["{}", 1, 3]
    with pytest.raises(KeyError, match="c"):
        statement.arguments({"a": 1, "b": 2})
