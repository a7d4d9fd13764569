"""Outbox rows carry the events partition of their customer: each stager relays the rows of the
partitions it consumes, so relays scale out with the stagers.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # rows written before this have no partition: any relay takes them
    op.execute("ALTER TABLE outbox ADD COLUMN partition integer")
    op.execute("CREATE INDEX outbox_partition_id ON outbox (partition, id)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS outbox_partition_id")
    op.execute("ALTER TABLE outbox DROP COLUMN IF EXISTS partition")
