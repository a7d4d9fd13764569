"""Keeping the promises: scoped event ids, journey versions, fenced leases, opt-out fences.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATEMENTS = [
    # an event id is unique per customer, not across the shop: two customers may use the same ids
    "ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey",
    "ALTER TABLE processed_events ADD PRIMARY KEY (customer_id, event_id)",
    "ALTER TABLE email_events DROP CONSTRAINT email_events_event_id_key",
    "ALTER TABLE email_events ADD CONSTRAINT email_events_customer_event UNIQUE (customer_id, event_id)",
    # every journey definition ever used, immutable; the highest version_id of a name is the current one
    """CREATE TABLE journey_versions (
        version_id bigserial PRIMARY KEY,
        journey text NOT NULL,
        version integer NOT NULL,
        source text NOT NULL,
        origin text NOT NULL,
        digest text NOT NULL,
        definition text NOT NULL,
        retired boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        UNIQUE (journey, version)
    )""",
    # a run keeps the version it started on, and its next send step by id, not by position
    "ALTER TABLE journey_runs ADD COLUMN version_id bigint",
    "ALTER TABLE journey_runs ADD COLUMN step_id text",
    # who holds a `sending` row: every change after SMTP names the token it was claimed with
    "ALTER TABLE sends ADD COLUMN lease_token uuid",
    # the frequency cap counts sends and sends in flight per customer: an index with that predicate
    "CREATE INDEX sends_customer_marketing_recent ON sends (customer_id, sent_at)"
    " WHERE marketing AND status IN ('sent', 'sending')",
    # opt-outs the ingest API acknowledged and the stager has not applied yet: the dispatcher honours them
    # what the API accepts: amounts below 10^14 with 4 decimals, and totals of any size
    "ALTER TABLE orders ALTER COLUMN value TYPE numeric(18, 4)",
    "ALTER TABLE product_sales ALTER COLUMN price TYPE numeric(18, 4)",
    "ALTER TABLE customers ALTER COLUMN total_spent TYPE numeric",
    """CREATE TABLE consent_fences (
        customer_id text NOT NULL,
        event_id text NOT NULL,
        category text NOT NULL,
        acknowledged_at timestamptz NOT NULL,
        PRIMARY KEY (customer_id, event_id, category)
    )""",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS consent_fences")
    op.execute("ALTER TABLE customers ALTER COLUMN total_spent TYPE numeric(14, 2)")
    op.execute("ALTER TABLE product_sales ALTER COLUMN price TYPE numeric(14, 2)")
    op.execute("ALTER TABLE orders ALTER COLUMN value TYPE numeric(14, 2)")
    op.execute("DROP INDEX IF EXISTS sends_customer_marketing_recent")
    op.execute("ALTER TABLE sends DROP COLUMN IF EXISTS lease_token")
    op.execute("ALTER TABLE journey_runs DROP COLUMN IF EXISTS step_id")
    op.execute("ALTER TABLE journey_runs DROP COLUMN IF EXISTS version_id")
    op.execute("DROP TABLE IF EXISTS journey_versions")
    op.execute("ALTER TABLE email_events DROP CONSTRAINT email_events_customer_event")
    op.execute("ALTER TABLE email_events ADD CONSTRAINT email_events_event_id_key UNIQUE (event_id)")
    op.execute("ALTER TABLE processed_events DROP CONSTRAINT processed_events_pkey")
    op.execute("ALTER TABLE processed_events ADD PRIMARY KEY (event_id)")
