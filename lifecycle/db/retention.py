"""Retention: what only guards against a message delivered twice, and stored message bodies, kept
`LIFECYCLE_RETENTION_DAYS` (30 by default); opens, clicks and bounces (`email_events`) kept
`LIFECYCLE_EMAIL_EVENT_RETENTION_DAYS` and the record of sends `LIFECYCLE_SEND_RETENTION_DAYS` (395 each:
a year of reports, and a month); then deleted a batch at a time.

Ids and bodies are aged on the database's wall clock: a message comes again within a physical time (Kafka
keeps messages 7 days by default), whatever a virtual business clock says. Email events and sends are
business history, aged on the services' clock (`now`).
"""

from __future__ import annotations

from datetime import datetime

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

# the reports' history: opens, clicks, bounces and complaints, and the sends no longer in flight. Their
# times are the business clock's (virtual in scenarios), so their age is measured on it: `:now`.
PRUNE_EMAIL_EVENTS = text(
    "DELETE FROM email_events WHERE id IN ("
    " SELECT id FROM email_events"
    " WHERE occurred_at < CAST(:now AS timestamptz) - make_interval(days => CAST(:days AS int)) LIMIT :n)"
)
PRUNE_SENDS = text(
    "DELETE FROM sends WHERE send_id IN ("
    " SELECT send_id FROM sends WHERE status <> 'sending'"
    " AND created_at < CAST(:now AS timestamptz) - make_interval(days => CAST(:days AS int)) LIMIT :n)"
)


PRUNED = Counter("lifecycle_retention_pruned_total",
                 "Rows past their retention removed: processed event and trigger ids, message bodies cleared"
                 " (LIFECYCLE_RETENTION_DAYS), email events and sends (LIFECYCLE_EMAIL_EVENT_RETENTION_DAYS,"
                 " LIFECYCLE_SEND_RETENTION_DAYS)",
                 ["what"])


async def prune(engine: AsyncEngine, what: str, days: int, limit: int = PRUNE_BATCH,
                now: datetime | None = None) -> int:
    """One batch of `what` (processed_events, processed_triggers, message_bodies, email_events or sends): the
    rows it removed. `now`: the services' clock, which email_events and sends are aged on."""
    if what in ("email_events", "sends") and now is None:
        raise ValueError(f"{what} are aged on the services' clock: pass now")
    async with engine.begin() as conn:
        result = await conn.execute(_BY_NAME[what], {"days": days, "n": limit, "now": now})
    pruned = int(result.rowcount or 0)
    PRUNED.labels(what=what).inc(pruned)
    return pruned


_BY_NAME = {"processed_events": PRUNE_PROCESSED_EVENTS, "processed_triggers": PRUNE_PROCESSED_TRIGGERS,
            "message_bodies": PRUNE_MESSAGE_BODIES, "email_events": PRUNE_EMAIL_EVENTS, "sends": PRUNE_SENDS}
RETAINED = tuple(_BY_NAME)
