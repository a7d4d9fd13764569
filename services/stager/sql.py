"""Every SQL statement of the stager, in one place.

A name ending in `_SQL` is a string; the others are ready `text()` clauses.
"""

from __future__ import annotations

from sqlalchemy import text

# --- a batch of events ------------------------------------------------------------------------

# The batch's event ids not seen before, claimed in the same transaction as their effects.
CLAIM_EVENT_IDS = text(
    "INSERT INTO processed_events (customer_id, event_id, processed_at)"
    " SELECT c, e, now() FROM unnest(CAST(:c AS text[]), CAST(:e AS text[])) AS u(c, e)"  # wall time: retention
    " ON CONFLICT DO NOTHING RETURNING customer_id, event_id"
)

# The states of a batch's customers, locked in one order (customer id) by every stager.
_LOCK_STATES_SQL = (
    "SELECT customer_id, state FROM customers WHERE customer_id = ANY(:ids)"
    " ORDER BY customer_id FOR UPDATE"
)
# Waiting for a state another transaction holds: its events must be applied.
LOCK_STATES = text(_LOCK_STATES_SQL)
# Skipping a state another transaction holds: its due changes wait for the next round.
LOCK_STATES_SKIP_LOCKED = text(_LOCK_STATES_SQL + " SKIP LOCKED")

# The fences of the opt-outs this batch applied: they hold nothing any more.
DELETE_APPLIED_FENCES = text(
    "DELETE FROM consent_fences f USING unnest(CAST(:c AS text[]), CAST(:e AS text[])) AS a(c, e)"
    " WHERE f.customer_id = a.c AND f.event_id = a.e"
)

# --- merged profiles (customer_merged) ---------------------------------------------------------

# Wait for these customers' locks (sorted ids: two stagers never wait on each other in a circle), then
# say, of them, where each one's events go now (the profile it was merged into: chains are kept flat) and
# when it was erased: one round trip (the function of migration 0009 reads once the locks are held).
LOCK_AND_RESOLVE = text("SELECT found_id, merged_into, erased_when"
                        " FROM lifecycle_lock_customers(:space, CAST(:ids AS text[]))")
# `:previous` is `:target` from now on, and so is every id that pointed at `:previous`.
RECORD_ALIAS = text(
    "INSERT INTO aliases (previous_id, customer_id, merged_at) VALUES (:previous, :target, :now)"
    " ON CONFLICT (previous_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, merged_at = EXCLUDED.merged_at"
)
REPOINT_ALIASES = text("UPDATE aliases SET customer_id = :target WHERE customer_id = :previous")
# The merged profile's rows: its state joined the target's, its facts are the target's now.
DELETE_MERGED = [
    text("DELETE FROM customers WHERE customer_id = :previous"),
    text("DELETE FROM due_changes WHERE customer_id = :previous"),
]
MOVE_MERGED_FACTS = [
    text("UPDATE orders SET customer_id = :target WHERE customer_id = :previous"),
    text("UPDATE email_events SET customer_id = :target WHERE customer_id = :previous"),
    text("INSERT INTO customer_products (customer_id, product_id)"
         " SELECT :target, product_id FROM customer_products WHERE customer_id = :previous ON CONFLICT DO NOTHING"),
    text("DELETE FROM customer_products WHERE customer_id = :previous"),
]

# --- time-driven changes ----------------------------------------------------------------------

# The customers of the earliest due changes, at most `:n` changes' worth.
DUE_CUSTOMERS = text(
    "SELECT DISTINCT customer_id FROM ("
    " SELECT customer_id FROM due_changes WHERE due_at <= :now ORDER BY due_at LIMIT :n) d"
)

# The due changes of the customers whose states this stager locked, locked too, in due-time order.
DUE_CHANGES_OF = text(
    "SELECT customer_id, kind, due_at FROM due_changes"
    " WHERE customer_id = ANY(:ids) AND due_at <= :now ORDER BY due_at, kind FOR UPDATE"
)

# --- a transaction's writes -------------------------------------------------------------------

# Every batch write is one statement of fixed text over arrays: compiled and prepared once, whatever
# the batch's size (a multi-row VALUES is a new statement, compiled anew, for every batch).
CUSTOMER_COLUMNS = ("customer_id", "state", "stage", "consent", "email", "suppressed", "last_engagement_at",
                    "orders_count", "total_spent", "first_order_at", "last_order_at")
_CUSTOMER_TYPES = ("text", "text", "text", "text", "text", "text", "timestamptz", "int", "numeric", "timestamptz",
                   "timestamptz")
# The customers' states and the columns read from them, inserted or replaced.
UPSERT_CUSTOMERS = text(
    f"INSERT INTO customers ({', '.join(CUSTOMER_COLUMNS)}, updated_at)"
    f" SELECT u.customer_id, u.state::jsonb, {', '.join('u.' + c for c in CUSTOMER_COLUMNS[2:])}, :now"
    " FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(CUSTOMER_COLUMNS, _CUSTOMER_TYPES, strict=True))
    + f") AS u({', '.join(CUSTOMER_COLUMNS)})"
    " ON CONFLICT (customer_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*CUSTOMER_COLUMNS[1:], "updated_at"))
)
# Due times set or moved, one per customer and kind.
UPSERT_DUES = text(
    "INSERT INTO due_changes (customer_id, kind, due_at)"
    " SELECT * FROM unnest(CAST(:c AS text[]), CAST(:k AS text[]), CAST(:at AS timestamptz[]))"
    " ON CONFLICT (customer_id, kind) DO UPDATE SET due_at = EXCLUDED.due_at"
)
# Due times no longer wanted (applied, or made moot by an event).
CLEAR_DUES = text(
    "DELETE FROM due_changes d USING unnest(CAST(:c AS text[]), CAST(:k AS text[])) AS u(c, k)"
    " WHERE d.customer_id = u.c AND d.kind = u.k"
)
# Triggers for the relay, in the batch's order: the relay publishes triggers in id order.
INSERT_OUTBOX = text(
    "INSERT INTO outbox (customer_id, payload, created_at, partition)"
    " SELECT u.c, u.p::jsonb, :now, u.k"
    " FROM unnest(CAST(:c AS text[]), CAST(:p AS text[]), CAST(:k AS int[])) WITH ORDINALITY AS u(c, p, k, n)"
    " ORDER BY u.n"
)

# --- the outbox relay -------------------------------------------------------------------------

# The oldest rows, whatever their partition. The payload as the text jsonb prints (compact, keys in
# jsonb's order): published as it is, not decoded and encoded again.
SELECT_OUTBOX_ALL = text("SELECT id, customer_id, payload::text AS payload FROM outbox ORDER BY id LIMIT :n")
# The oldest rows of the partitions in `:mine`, and those of no partition or of one the topic (`:count`
# partitions) no longer has; the payload as above.
SELECT_OUTBOX_OF = text(
    "SELECT id, customer_id, payload::text AS payload FROM outbox"
    " WHERE partition = ANY(CAST(:mine AS int[])) OR partition IS NULL OR partition >= :count"
    " ORDER BY id LIMIT :n"
)
# Rows the broker acknowledged.
DELETE_OUTBOX = text("DELETE FROM outbox WHERE id = ANY(CAST(:ids AS bigint[]))")

# --- housekeeping -----------------------------------------------------------------------------

# Fences whose opt-out the stager applied before the ingest API wrote them.
SWEEP_FENCES = text(
    "DELETE FROM consent_fences f USING processed_events p"
    " WHERE p.customer_id = f.customer_id AND p.event_id = f.event_id"
)

# The outbox gauges: rows waiting, and the age of the oldest.
OUTBOX_BACKLOG = text("SELECT count(*) AS n, extract(epoch FROM now() - min(created_at)) AS age FROM outbox")

# The due-changes gauge: changes due by `:now` and not yet applied.
DUE_BACKLOG = text("SELECT count(*) FROM due_changes WHERE due_at <= :now")

# --- facts beside the state (facts.py) --------------------------------------------------------

# Cancelled and refunded orders, kept but no longer counted.
VOID_ORDERS = text("UPDATE orders SET voided = true WHERE order_id = ANY(CAST(:o AS text[]))")
# Bounced and complaining addresses, in the batch's order: the first reason recorded for an address stays.
SUPPRESS = text(
    "INSERT INTO suppressions (address, reason, suppressed_at)"
    " SELECT u.a, u.r, u.t FROM unnest(CAST(:a AS text[]), CAST(:r AS text[]), CAST(:t AS timestamptz[]))"
    " WITH ORDINALITY AS u(a, r, t, n) ORDER BY u.n ON CONFLICT (address) DO NOTHING"
)
# The journey, step and variant of the messages we sent, by message id.
SENT_MESSAGES = text("SELECT message_id, journey, step, variant FROM sends WHERE message_id = ANY(CAST(:m AS text[]))")
# Engagement rows; an event id counts once per customer.
INSERT_EMAIL_EVENTS = text(
    "INSERT INTO email_events (event_id, customer_id, message_id, journey, step, variant, kind, link, occurred_at)"
    " SELECT * FROM unnest(CAST(:e AS text[]), CAST(:c AS text[]), CAST(:m AS text[]), CAST(:j AS text[]),"
    " CAST(:s AS int[]), CAST(:v AS text[]), CAST(:k AS text[]), CAST(:l AS text[]), CAST(:t AS timestamptz[]))"
    " ON CONFLICT (customer_id, event_id) DO NOTHING"
)
# One row per order, in the batch's order: the customer's last click before it, within the window.
LAST_CLICKS = text(
    "SELECT a.message_id, a.journey, a.step, a.variant, a.send_id"
    " FROM unnest(CAST(:c AS text[]), CAST(:t AS timestamptz[])) WITH ORDINALITY AS u(c, t, n)"
    " LEFT JOIN LATERAL (SELECT e.message_id, e.journey, e.step, e.variant, s.send_id FROM email_events e"
    "  LEFT JOIN sends s ON s.message_id = e.message_id"
    "  WHERE e.customer_id = u.c AND e.kind = 'clicked' AND e.occurred_at <= u.t"
    "  AND e.occurred_at > u.t - make_interval(days => CAST(:days AS int))"
    "  ORDER BY e.occurred_at DESC, e.id DESC LIMIT 1) a ON true"
    " ORDER BY u.n"
)
# The batch's orders with their attribution; returns the ids that were new.
INSERT_ORDERS = text(
    "INSERT INTO orders (order_id, customer_id, occurred_at, value, currency, coupon_code,"
    " attributed_send_id, attributed_journey, attributed_step, attributed_variant)"
    " SELECT u.o, u.c, u.t, u.v, u.cur, u.code, u.sid, u.j, u.s, u.var FROM unnest(CAST(:o AS text[]),"
    " CAST(:c AS text[]), CAST(:t AS timestamptz[]), CAST(:v AS numeric[]), CAST(:cur AS text[]),"
    " CAST(:code AS text[]), CAST(:sid AS bigint[]), CAST(:j AS text[]), CAST(:s AS int[]), CAST(:var AS text[]))"
    " WITH ORDINALITY AS u(o, c, t, v, cur, code, sid, j, s, var, n) ORDER BY u.n"
    " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)

# An order's coupon, locked while its redemption is decided.
LOCK_COUPON = text("SELECT customer_id, expires_at, redeemed_order_id FROM coupons WHERE code = :k FOR UPDATE")
# The coupon redeemed by the order.
REDEEM_COUPON = text("UPDATE coupons SET redeemed_at = :t, redeemed_order_id = :o WHERE code = :k")
# What became of an order's coupon code (redeemed, or why not), once per order and code.
RECORD_COUPON_ATTEMPT = text(
    "INSERT INTO coupon_attempts (order_id, code, customer_id, outcome, occurred_at)"
    " VALUES (:o, :k, :c, :r, :t) ON CONFLICT DO NOTHING"
)

# Orders per product, with the latest order's name, price and currency.
UPSERT_PRODUCT_SALES = text(
    "INSERT INTO product_sales (product_id, orders, name, price, currency)"
    " SELECT * FROM unnest(CAST(:p AS text[]), CAST(:k AS int[]), CAST(:n AS text[]), CAST(:pr AS numeric[]),"
    " CAST(:cur AS text[]))"
    " ON CONFLICT (product_id) DO UPDATE SET orders = product_sales.orders + EXCLUDED.orders, name = EXCLUDED.name,"
    " price = EXCLUDED.price, currency = EXCLUDED.currency"
)
# What each customer bought, never to be recommended to them.
INSERT_CUSTOMER_PRODUCTS = text(
    "INSERT INTO customer_products (customer_id, product_id)"
    " SELECT * FROM unnest(CAST(:c AS text[]), CAST(:p AS text[])) ON CONFLICT DO NOTHING"
)
# Orders per pair of products bought together, counted both ways.
UPSERT_CO_PURCHASES = text(
    "INSERT INTO co_purchases (product_id, other_id, orders)"
    " SELECT * FROM unnest(CAST(:a AS text[]), CAST(:b AS text[]), CAST(:k AS int[]))"
    " ON CONFLICT (product_id, other_id) DO UPDATE SET orders = co_purchases.orders + EXCLUDED.orders"
)
