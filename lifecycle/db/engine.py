"""The services' database engine: connections named after the service, checked before use, never stuck."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lifecycle import jsoncodec
from lifecycle.settings import Settings

# A statement waits at most this long for a lock (an idle transaction holding rows) or runs at most
# this long: then it fails, the loop backs off and tries again, rather than hanging forever.
LOCK_TIMEOUT = "15s"
STATEMENT_TIMEOUT = "60s"


def make_engine(settings: Settings, service: str, pool_size: int = 5) -> AsyncEngine:
    """`application_name` says which service a connection belongs to (pg_stat_activity, pg_terminate_backend);
    a pooled connection that a restart or a terminated backend broke is noticed and replaced."""
    return create_async_engine(
        settings.database_url, pool_size=pool_size, pool_pre_ping=True,
        json_deserializer=jsoncodec.loads,  # JSONB read in C: the stager reads a state per customer per batch
        connect_args={"server_settings": {"application_name": f"lifecycle-{service}", "lock_timeout": LOCK_TIMEOUT,
                                          "statement_timeout": STATEMENT_TIMEOUT}},
    )
