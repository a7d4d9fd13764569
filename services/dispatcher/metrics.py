"""Every dispatcher metric, declared once."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRIGGERS = Counter("lifecycle_dispatcher_triggers_consumed_total", "Triggers read from Kafka.")
UNREADABLE = Counter("lifecycle_dispatcher_triggers_unreadable_total", "Trigger messages that could not be decoded.")
DEAD_LETTERED = Counter(
    "lifecycle_dispatcher_triggers_dead_lettered_total",
    "Triggers sent to the dead-letter topic: unreadable, or failing every attempt.",
)
LOOP_ERRORS = Counter(
    "lifecycle_dispatcher_loop_errors_total",
    "Failures of a loop phase, retried after a backoff (transient: database or broker away).",
    ["phase", "kind"],
)
RUNS_STARTED = Counter("lifecycle_dispatcher_runs_started_total", "Journey runs started.", ["journey"])
CAMPAIGNS_STARTED = Counter("lifecycle_dispatcher_campaigns_started_total",
                            "Campaigns started: their audience written as runs.")
RUNS_ENDED = Counter("lifecycle_dispatcher_runs_ended_total", "Journey runs ended.", ["journey", "outcome"])
RUNS_ACTIVE = Gauge("lifecycle_dispatcher_runs_active", "Journey runs in progress.", ["journey"])
SENDS = Counter(
    "lifecycle_dispatcher_sends_total",
    "Send steps by outcome (sent, skipped:<reason>, deferred, retried, failed, bounced).",
    ["journey", "step", "result"],
)
LAG = Gauge("lifecycle_dispatcher_consumer_lag_messages", "Triggers not yet consumed, per partition.", ["partition"])
STEPS_DUE = Gauge("lifecycle_dispatcher_steps_due", "Steps due now and not yet handled.")
OLDEST_DUE_AGE = Gauge("lifecycle_dispatcher_oldest_due_step_age_seconds", "How late the oldest due step is.")
SMTP_DURATION = Histogram("lifecycle_dispatcher_smtp_duration_seconds", "Time to hand one message to SMTP.")
RESENT_AFTER_LEASE = Counter(
    "lifecycle_dispatcher_sends_reclaimed_total",
    "Sends taken over after a lease ran out (a dispatcher died between claim and commit).",
)
SMTP_ACCEPTED = Counter(
    "lifecycle_dispatcher_smtp_accepted_total",
    "Messages the SMTP server answered 250 to, counted before the `sent` commit: above"
    " sends_total{result=\"sent\"} by the 250s whose commit was lost (each a possible duplicate).",
)
SUPPRESSIONS = Counter(
    "lifecycle_dispatcher_suppressions_total", "Addresses the dispatcher suppressed, by reason (bounced).",
    ["reason"],
)
SMTP_POSTPONED = Counter(
    "lifecycle_dispatcher_smtp_postponed_total",
    "Sends put back for later because the rate limits (or a slow server) left no time for them in this round.",
)
LEASES_LOST = Counter(
    "lifecycle_dispatcher_leases_lost_total",
    "Sends not started because another dispatcher had taken their lease over.",
)
MARK_SENT_RETRIES = Counter(
    "lifecycle_dispatcher_mark_sent_retries_total",
    "Attempts to record a 250 that failed and were tried again (PostgreSQL away).",
)
SENT_TWICE = Counter(
    "lifecycle_dispatcher_sent_twice_total",
    "250s whose `sent` could not be recorded because another dispatcher had taken the send over.",
)
SMTP_CONNECTIONS = Counter(
    "lifecycle_dispatcher_smtp_connections_opened_total", "SMTP connections opened (pooled, so few).",
)
UNRECORDED = Gauge(
    "lifecycle_dispatcher_sends_unrecorded",
    "Messages the SMTP server accepted (250) whose `sent` is not committed yet: what a crash now would send"
    " twice (the crash window of batched records).",
)
RECORD_DELAY = Histogram(
    "lifecycle_dispatcher_record_delay_seconds",
    "From a 250 to the commit of its `sent`: how long each accepted message stays in the crash window.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0),
)
RECORD_BATCH = Histogram(
    "lifecycle_dispatcher_record_batch_size",
    "250s recorded per UPDATE (those that arrived within the gather time or while the previous write was in flight).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500),
)
RENDER_SECONDS = Histogram(
    "lifecycle_dispatcher_compose_seconds",
    "Composing one claim's emails (templates, MIME) in the render workers, per claim.",
)
RENDER_WORKERS_LOST = Counter(
    "lifecycle_dispatcher_render_workers_lost_total",
    "Times a render worker process died and the workers were started again (that claim was composed in the"
    " dispatcher itself).",
)
