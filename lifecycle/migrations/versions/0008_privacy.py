"""Privacy: erased customers (salted hashes only), the salt, and indexes for the retention of sends and
email events.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATEMENTS = [
    # one random salt per installation, drawn here once: the hashes of erased customers and addresses
    # mean nothing outside this database, and a list of common addresses cannot be hashed in advance
    "CREATE TABLE privacy_salt (id int PRIMARY KEY CHECK (id = 1), salt text NOT NULL)",
    "INSERT INTO privacy_salt (id, salt)"
    " VALUES (1, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''))",
    # who was erased, and when: events of theirs received before that are dropped, even replayed
    "CREATE TABLE erasures (customer_hash text PRIMARY KEY, erased_at timestamptz NOT NULL)",
    "CREATE INDEX email_events_retention ON email_events (occurred_at)",
    "CREATE INDEX sends_retention ON sends (created_at) WHERE status <> 'sending'",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for name in ("sends_retention", "email_events_retention"):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS erasures")
    op.execute("DROP TABLE IF EXISTS privacy_salt")
