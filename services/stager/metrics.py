"""Every stager metric, declared once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("lifecycle_stager_events_consumed_total", "Events read from Kafka.")
APPLIED = Counter("lifecycle_stager_events_applied_total", "New events applied to customer state.")
ALIASED = Counter(
    "lifecycle_stager_aliases_total",
    "Profiles merged into another (customer_merged: an anonymous visitor identified, an alias), and events"
    " applied to the profile their customer's id was merged into (redirected).",
    ["what"],
)
DUPLICATES = Counter("lifecycle_stager_events_duplicate_total", "Events ignored because their event_id was seen.")
_READ = Counter(
    "lifecycle_stager_events_read_total",
    "Messages read, by how: sealed (by the ingest API, read as written) or checked (every check run again; "
    "a message of another writer, or a key the stager does not hold).",
    ["reading"],
)
READ_SEALED = _READ.labels(reading="sealed")
READ_CHECKED = _READ.labels(reading="checked")
UNREADABLE = Counter("lifecycle_stager_events_unreadable_total", "Messages that could not be decoded.")
DEAD_LETTERED = Counter(
    "lifecycle_stager_events_dead_lettered_total",
    "Events sent to the dead-letter topic: unreadable, or failing every attempt.",
)
LOOP_ERRORS = Counter(
    "lifecycle_stager_loop_errors_total",
    "Failures of a loop phase, retried after a backoff (transient: database or broker away).",
    ["phase", "kind"],
)
TRANSITIONS = Counter(
    "lifecycle_stager_stage_transitions_total", "Lifecycle stage changes.", ["from_stage", "to_stage"]
)
BATCH_SIZE = Histogram(
    "lifecycle_stager_batch_size_events", "Events per consumer batch.",
    buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000),
)
BATCH_DURATION = Histogram("lifecycle_stager_batch_duration_seconds", "Time to apply one batch.")
DUE_APPLIED = Counter("lifecycle_stager_due_changes_applied_total", "Time-driven changes applied.")
TRIGGERS_RELAYED = Counter("lifecycle_stager_triggers_relayed_total", "Outbox triggers published to Kafka.")
OUTBOX_WAITING = Gauge("lifecycle_stager_outbox_rows", "Triggers waiting in the outbox.")
OUTBOX_OLDEST = Gauge("lifecycle_stager_outbox_oldest_age_seconds", "Age of the oldest outbox row.")
DUE_WAITING = Gauge("lifecycle_stager_due_changes_waiting", "Time-driven changes due now and not yet applied.")
LAG = Gauge("lifecycle_stager_consumer_lag_messages", "Events not yet consumed, per partition.", ["partition"])


def record_transition(before: str | None, after: str | None) -> None:
    if before != after:
        TRANSITIONS.labels(from_stage=before or "none", to_stage=after or "none").inc()
