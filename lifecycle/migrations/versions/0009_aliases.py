"""Aliases: the ids a customer was known by before (an anonymous visitor's, an old one) and the profile
that holds what they did since it was merged; the stager's lock of a batch's customers, which reads
their aliases and erasures in the same round trip.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

from lifecycle.db.queries import customer_hash_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The stager's first statement of an event batch, in one round trip: it waits for the batch's customers'
# locks (in the order given), then reads, in a snapshot taken once they are held (a function's statements
# take one each), which of them were merged into another profile and which were erased.
LOCK_AND_RESOLVE = f"""
CREATE FUNCTION lifecycle_lock_customers(lock_space int, ids text[])
RETURNS TABLE (found_id text, merged_into text, erased_when timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_space, hashtext(u.x)) FROM unnest(ids) WITH ORDINALITY AS u(x, n) ORDER BY u.n;
    RETURN QUERY
        SELECT t.x, a.customer_id, e.erased_at FROM unnest(ids) AS t(x)
        LEFT JOIN aliases a ON a.previous_id = t.x
        LEFT JOIN erasures e ON e.customer_hash = {customer_hash_sql("t.x")}
        WHERE a.customer_id IS NOT NULL OR e.erased_at IS NOT NULL;
END
$$"""

STATEMENTS = [
    "CREATE TABLE aliases (previous_id text PRIMARY KEY, customer_id text NOT NULL, merged_at timestamptz NOT NULL)",
    "CREATE INDEX aliases_customer ON aliases (customer_id)",
    LOCK_AND_RESOLVE,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS lifecycle_lock_customers(int, text[])")
    op.execute("DROP TABLE IF EXISTS aliases")
