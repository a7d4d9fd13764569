"""Every SQL statement of the dispatcher (its store, offers and gauges), in one place.

A name ending in `_SQL` is a string (wrapped in `text()` where it runs, or formatted first when it
has a `{placeholder}`); the others are ready `text()` clauses. SQLAlchemy Core statements
(`insert(sends)`, `update(journey_runs)`, ...) stay with their code.
"""

from __future__ import annotations

from sqlalchemy import text

from lifecycle.db.queries import CUSTOMER_SUPPRESSION_SQL, PENDING_FENCES_SQL, address_suppression_sql

# --- triggers ---------------------------------------------------------------------------------

# The runs of a batch's customers, locked, to apply the triggers to.
CUSTOMER_RUNS = text("SELECT * FROM journey_runs WHERE customer_id = ANY(:ids) ORDER BY customer_id, run_id"
                     " FOR UPDATE")

# A click recorded on its run, for the journey's click conditions.
APPEND_CLICK = text("UPDATE journey_runs SET clicks = clicks || CAST(:c AS jsonb) WHERE run_id = :r")

# The run an engagement trigger's email belongs to.
RUN_OF_MESSAGE = text("SELECT run_id FROM sends WHERE message_id = :m")

# --- claiming due steps -----------------------------------------------------------------------

# The runs whose step is due, locked and skipped by the other dispatchers.
DUE_RUNS = text(
    "SELECT * FROM journey_runs WHERE status = 'active' AND due_at <= :now"
    " ORDER BY due_at, run_id LIMIT :n FOR UPDATE SKIP LOCKED"
)

# Who may receive what, per customer of a claim: profile, consent, suppression, engagement, the
# frequency cap's count (an index serves it: sends_customer_marketing_recent), the first marketing
# send (sends_customer_sent), pending opt-outs.
RECIPIENTS_SQL = (
    "SELECT c.customer_id, c.state -> 'traits' AS traits, c.consent, c.email,"
    f" {CUSTOMER_SUPPRESSION_SQL} AS suppressed, c.last_engagement_at,"
    " (SELECT min(s.sent_at) FROM sends s WHERE s.customer_id = c.customer_id"
    "  AND s.marketing AND s.status = 'sent') AS first_marketing,"
    " (SELECT count(*) FROM sends s WHERE s.customer_id = c.customer_id AND s.marketing"
    "  AND s.status IN ('sent', 'sending') AND s.sent_at > :since) AS recent,"
    f" {PENDING_FENCES_SQL} AS fences"
    " FROM customers c WHERE c.customer_id = ANY(:ids)"
)

# A claim's sends in one statement over arrays (compiled and prepared once, whatever the claim's
# size); a run whose step has its send already gets none (ON CONFLICT), as before.
SEND_COLUMNS = ("run_id", "step", "customer_id", "journey", "marketing", "status", "reason", "message_id",
                "to_address", "subject", "message", "due_at", "created_at", "sent_at", "attempts", "variant",
                "links", "category", "lease_token")
_SEND_TYPES = ("bigint", "int", "text", "text", "boolean", "text", "text", "text", "text", "text", "bytea",
               "timestamptz", "timestamptz", "timestamptz", "int", "text", "text", "text", "uuid")
INSERT_SENDS = text(
    f"INSERT INTO sends ({', '.join(SEND_COLUMNS)}, lease_until)"
    f" SELECT {', '.join('u.links::jsonb' if c == 'links' else 'u.' + c for c in SEND_COLUMNS)},"
    " CASE WHEN u.status = 'sending' THEN now() + make_interval(secs => :lease) END"
    " FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(SEND_COLUMNS, _SEND_TYPES, strict=True))
    + f") AS u({', '.join(SEND_COLUMNS)})"
    " ON CONFLICT DO NOTHING RETURNING run_id, send_id"
)
# Runs to their next step (status active) or completed (ended_at set, no step, no due time).
MOVE_RUNS_ON = text(
    "UPDATE journey_runs r SET status = p.status, step_index = p.step_index, due_at = p.due_at,"
    " version_id = coalesce(p.version_id, r.version_id), step_id = coalesce(p.step_id, r.step_id),"
    " ended_at = p.ended_at, exit_reason = NULL"
    " FROM unnest(CAST(:run_id AS bigint[]), CAST(:status AS text[]), CAST(:step_index AS int[]),"
    " CAST(:due_at AS timestamptz[]), CAST(:version_id AS bigint[]), CAST(:step_id AS text[]),"
    " CAST(:ended_at AS timestamptz[])) AS p(run_id, status, step_index, due_at, version_id, step_id, ended_at)"
    " WHERE r.run_id = p.run_id"
)

# --- sends held under a lease: taken, checked right before SMTP, their outcome after it ---------

# Lease the `sending` rows matching `{due}` (one of the two conditions below) under a new token.
TAKE_SENDS_SQL = (
    "WITH due AS (SELECT s.send_id FROM sends s WHERE s.status = 'sending' AND "
    "{due} ORDER BY s.lease_until, s.send_id LIMIT :n FOR UPDATE SKIP LOCKED)"
    " UPDATE sends s SET lease_until = now() + make_interval(secs => :lease),"
    " next_attempt_at = NULL, lease_token = :token FROM due WHERE s.send_id = due.send_id"
    " RETURNING s.send_id, s.to_address, s.message, s.journey, s.step, s.customer_id, s.run_id"
)
# `{due}` of TAKE_SENDS_SQL for sends whose retry (or postponed turn) is due.
RETRY_DUE_SQL = "s.next_attempt_at IS NOT NULL AND s.lease_until <= now()"
# `{due}` of TAKE_SENDS_SQL for sends whose lease ran out during an attempt.
LEASE_RUN_OUT_SQL = "s.next_attempt_at IS NULL AND s.lease_until < now()"

# The journey version of each taken send's run, for its audience.
RUN_VERSIONS = text("SELECT run_id, version_id FROM journey_runs WHERE run_id = ANY(:ids)")

# Right before SMTP, for a group of sends: still ours? and the customer and the run as they stand now.
RECHECK_SQL = (
    "SELECT p.send_id, (s.status = 'sending' AND s.lease_token = p.token) AS held, r.status AS run_status,"
    " c.consent, c.email, c.state -> 'traits' -> 'unsubscribed_categories' AS categories,"
    f" coalesce({address_suppression_sql('s.to_address')},"
    "  CASE WHEN lower(c.email) = lower(s.to_address) THEN c.suppressed END) AS suppressed,"
    f" {PENDING_FENCES_SQL} AS fences"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[])) AS p(send_id, token)"
    " JOIN sends s ON s.send_id = p.send_id"
    " LEFT JOIN journey_runs r ON r.run_id = s.run_id"
    " LEFT JOIN customers c ON c.customer_id = s.customer_id"
)

# The sends the recheck found no longer wanted, skipped with their reasons, each fenced by its token.
SKIP_SENDS = text(
    "UPDATE sends s SET status = 'skipped', reason = p.reason, lease_until = NULL,"
    " next_attempt_at = NULL"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]), CAST(:reasons AS text[]))"
    " AS p(send_id, token, reason)"
    " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"
)

# A change (`{values}`, a SET list) to one send, only while it is still held under our token.
UPDATE_HELD_SQL = "UPDATE sends SET {values} WHERE send_id = :id AND lease_token = :token AND status = 'sending'"
# `{values}` of UPDATE_HELD_SQL for a message that can never go.
FAILED_HELD_SQL = "status = 'failed', reason = :r, attempts = attempts + 1, lease_until = NULL, next_attempt_at = NULL"

# The 250s of a batch, each row fenced by the token of the claim that sent it.
MARK_SENT_SQL = (
    "UPDATE sends s SET status = 'sent', delivered_at = now(), lease_until = NULL, next_attempt_at = NULL,"
    " attempts = s.attempts + 1"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[])) AS p(send_id, token)"
    " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"
    " RETURNING s.send_id"
)

# The attempts of a send still held, locked while its retry is decided.
HELD_ATTEMPTS = text(
    "SELECT attempts FROM sends WHERE send_id = :id AND lease_token = :token"
    " AND status = 'sending' FOR UPDATE"
)

# A send due again after the backoff: both its retry and its lease end then.
RETRY_LATER = text(
    "UPDATE sends SET attempts = :a, reason = :r,"
    " next_attempt_at = now() + make_interval(secs => :d),"
    " lease_until = now() + make_interval(secs => :d)"
    " WHERE send_id = :id"
)

# A bounced send, failed, if still held under our token.
FAIL_BOUNCED = text(
    "UPDATE sends SET status = 'failed', reason = :r, attempts = attempts + 1, lease_until = NULL,"
    " next_attempt_at = NULL WHERE send_id = :id AND lease_token = :token AND status = 'sending'"
)

# Sends due again after their own delay, no attempt counted, each fenced by its token.
POSTPONE_SENDS = text(
    "UPDATE sends s SET next_attempt_at = now() + make_interval(secs => p.delay),"
    " lease_until = now() + make_interval(secs => p.delay)"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]), CAST(:delays AS float8[]))"
    " AS p(send_id, token, delay)"
    " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"
)

# An address never to send to again; the first reason stays.
SUPPRESS_ADDRESS = text(
    "INSERT INTO suppressions (address, reason, suppressed_at) VALUES (lower(:a), :r, :t)"
    " ON CONFLICT (address) DO NOTHING"
)

# --- offers: tier, coupon, recommendations (offers.py) ----------------------------------------

# What the customer spent and ordered, for their tier.
CUSTOMER_SPEND = text("SELECT total_spent, orders_count FROM customers WHERE customer_id = :c")

# A step's coupon, issued once per run and step (a retried step keeps the code it had).
ISSUE_COUPON = text(
    "INSERT INTO coupons (code, customer_id, run_id, journey, step, kind, amount, currency, issued_at,"
    " expires_at) VALUES (:code, :c, :r, :j, :s, :k, :a, :cur, :now, :exp)"
    " ON CONFLICT (run_id, step) DO NOTHING"
)

# The coupon a run's step issued, for that step or a later one that reuses it.
COUPON_OF_STEP = text("SELECT code, kind, amount, currency, expires_at FROM coupons WHERE run_id = :r AND step = :s")

# Often bought together with what the customer bought, never what they bought; then best sellers.
RECOMMENDATIONS = text(
    "WITH bought AS (SELECT product_id FROM customer_products WHERE customer_id = :c),"
    " together AS ("
    "  SELECT cp.other_id AS product_id, sum(cp.orders) AS score FROM co_purchases cp"
    "  WHERE cp.product_id IN (SELECT product_id FROM bought)"
    "  AND cp.other_id NOT IN (SELECT product_id FROM bought)"
    "  GROUP BY cp.other_id),"
    " ranked AS ("
    "  SELECT product_id, score, 0 AS tier FROM together"
    "  UNION ALL SELECT ps.product_id, ps.orders, 1 FROM product_sales ps"
    "  WHERE ps.product_id NOT IN (SELECT product_id FROM bought))"
    " SELECT r.product_id, ps.name, ps.price, ps.currency FROM ("
    "  SELECT DISTINCT ON (product_id) product_id, tier, score FROM ranked"
    "  ORDER BY product_id, tier, score DESC) r"
    " JOIN product_sales ps USING (product_id)"
    " ORDER BY r.tier, r.score DESC, r.product_id LIMIT :n"
)

# --- gauges (main.py) -------------------------------------------------------------------------

# Steps due by `:now` and the oldest of their due times.
STEPS_DUE = text(
    "SELECT count(*) AS n, min(due_at) AS oldest FROM journey_runs"
    " WHERE status = 'active' AND due_at <= :now"
)

# Active runs per journey.
ACTIVE_RUNS = text("SELECT journey, count(*) FROM journey_runs WHERE status = 'active' GROUP BY journey")
