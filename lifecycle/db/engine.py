"""The services' database engine: connections named after the service, checked before use, never stuck."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lifecycle import jsoncodec
from lifecycle.settings import Settings

# A statement waits at most this long for a lock (an idle transaction holding rows) or runs at most
# this long: then it fails, the loop backs off and tries again, rather than hanging forever.
LOCK_TIMEOUT = "15s"
STATEMENT_TIMEOUT = "60s"
# A pooled connection idle for longer than this is pinged before it is handed out (the pool replaces
# it if PostgreSQL restarted or its backend was terminated meanwhile). One back in the pool more
# recently is handed out as it is: the services hand out a connection for every batch, and the
# pre-ping of every checkout (BEGIN, an empty query, ROLLBACK with asyncpg) took 13% of the
# dispatcher's CPU. A connection that broke since all the same fails its statement; every caller
# treats that as transient and tries again, and the pool then replaces every connection it holds.
PING_AFTER_IDLE_SECONDS = 1.0
_RETURNED_AT = "lifecycle_returned_at"


def make_engine(settings: Settings, service: str, pool_size: int = 5,
                ping_after_idle: float = PING_AFTER_IDLE_SECONDS) -> AsyncEngine:
    """`application_name` says which service a connection belongs to (pg_stat_activity, pg_terminate_backend);
    a pooled connection that a restart or a terminated backend broke is noticed and replaced (pinged when
    idle longer than `ping_after_idle`: 0 pings at every checkout)."""
    engine = create_async_engine(
        settings.database_url, pool_size=pool_size,
        json_deserializer=jsoncodec.loads,  # JSONB read in C: the stager reads a state per customer per batch
        connect_args={"server_settings": {"application_name": f"lifecycle-{service}", "lock_timeout": LOCK_TIMEOUT,
                                          "statement_timeout": STATEMENT_TIMEOUT}},
    )
    ping_when_idle(engine, ping_after_idle)
    return engine


def ping_when_idle(engine: AsyncEngine, idle_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Ping a pooled connection at checkout only when it was idle for more than `idle_seconds`."""
    dialect = engine.sync_engine.dialect

    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.pop(_RETURNED_AT, None)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # new, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # the pool discards this connection and hands out another (a new one if need be)
            raise sa_exc.DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc

    event.listen(engine.sync_engine, "checkin", checkin)
    event.listen(engine.sync_engine, "checkout", checkout)
