"""Retention: what only guards against a message delivered twice, and stored message bodies, kept
`LIFECYCLE_RETENTION_DAYS` (30 by default), then deleted a batch at a time.

Times are the database's wall clock: a message comes again within a physical time (Kafka keeps
messages 7 days by default), whatever a virtual business clock says.
"""

from __future__ import annotations

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# each statement removes at most this many rows: short transactions, the next pass takes the rest
PRUNE_BATCH = 5_000

# Each one reads its rows from an index on the time it compares (migration 0004): never a table scan.
PRUNE_PROCESSED_EVENTS = text(
    "DELETE FROM processed_events WHERE (customer_id, event_id) IN ("
    " SELECT customer_id, event_id FROM processed_events"
    " WHERE processed_at < now() - make_interval(days => CAST(:days AS int)) LIMIT :n)"
)
PRUNE_PROCESSED_TRIGGERS = text(
    "DELETE FROM processed_triggers WHERE trigger_id IN ("
    " SELECT trigger_id FROM processed_triggers"
    " WHERE processed_at < now() - make_interval(days => CAST(:days AS int)) LIMIT :n)"
)
# a body is needed only while the send may still go (status `sending`)
PRUNE_MESSAGE_BODIES = text(
    "UPDATE sends SET message = NULL WHERE send_id IN ("
    " SELECT send_id FROM sends WHERE message IS NOT NULL AND status <> 'sending'"
    " AND created_at < now() - make_interval(days => CAST(:days AS int)) LIMIT :n)"
)


PRUNED = Counter("lifecycle_retention_pruned_total",
                 "Rows past LIFECYCLE_RETENTION_DAYS removed: processed event and trigger ids, message bodies cleared",
                 ["what"])


async def prune(engine: AsyncEngine, what: str, days: int, limit: int = PRUNE_BATCH) -> int:
    """One batch of `what` (processed_events, processed_triggers or message_bodies): the rows it removed."""
    async with engine.begin() as conn:
        result = await conn.execute(_BY_NAME[what], {"days": days, "n": limit})
    pruned = int(result.rowcount or 0)
    PRUNED.labels(what=what).inc(pruned)
    return pruned


_BY_NAME = {"processed_events": PRUNE_PROCESSED_EVENTS, "processed_triggers": PRUNE_PROCESSED_TRIGGERS,
            "message_bodies": PRUNE_MESSAGE_BODIES}
RETAINED = tuple(_BY_NAME)
