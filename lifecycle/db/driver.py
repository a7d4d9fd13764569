"""Hot statements run on asyncpg itself, on a connection of the engine's pool.

SQLAlchemy's way to a statement (a Connection, the compiled cache, the adapter's cursor, a greenlet
switch each way, the result's rows) took about 0.78 ms of CPU for the dispatcher's one-row UPDATE
of its 250s; asyncpg on a connection checked out of the same pool took 0.25 ms. The few statements
that run for every email go this way; every other statement goes through SQLAlchemy.

A statement is written once, with SQLAlchemy's `:name` parameters like every other in the services'
`sql.py`, and turned into asyncpg's `$n` form when it is defined. No transaction is opened: each
statement commits as it returns. The connection has the engine's settings (application name,
timeouts) and codecs (JSON read with `lifecycle.jsoncodec`); one that broke is dropped from the pool.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

# SQLAlchemy's own pattern for text() parameters: `:name`, not a `::type` cast
_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


class DriverStatement:
    """A `:name` statement in asyncpg's `$n` form, with the order its parameters go in."""

    def __init__(self, sql: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in names:
                names.append(name)
            return f"${names.index(name) + 1}"

        self.text = sql
        self.sql = _PARAMETER.sub(number, sql)
        self.names = tuple(names)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        missing = [name for name in self.names if name not in params]
        if missing:
            raise KeyError(f"no value for parameter(s) {', '.join(missing)} of: {self.text[:80]}")
        return [params[name] for name in self.names]


# asyncpg's errors that say the connection itself is gone, rather than the statement wrong
_CONNECTION_GONE = ("ConnectionDoesNotExistError", "InterfaceError", "InternalClientError", "ConnectionFailureError")


def asyncpg_connection_gone(exc: BaseException) -> bool:
    """Whether `exc` is one of asyncpg's errors for a connection that is gone."""
    return type(exc).__module__.startswith("asyncpg") and type(exc).__name__ in _CONNECTION_GONE


def _connection_broke(exc: BaseException) -> bool:
    return isinstance(exc, OSError | ConnectionError | TimeoutError) or asyncpg_connection_gone(exc)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """The asyncpg connection of a pooled connection, back in the pool afterwards (dropped if it broke)."""
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except BaseException as exc:
        if _connection_broke(exc):
            await greenlet_spawn(pooled.invalidate, exc)
        raise
    finally:
        # in a greenlet: returning a connection may close it (pool overflow, invalidated), which awaits
        await greenlet_spawn(pooled.close)


async def fetch(engine: AsyncEngine, statement: DriverStatement, params: Mapping[str, Any]) -> Sequence[Any]:
    """The rows (asyncpg records: `row["name"]`) of one statement, committed as it returns."""
    async with driver_connection(engine) as connection:
        rows: Sequence[Any] = await connection.fetch(statement.sql, *statement.arguments(params))
        return rows
