"""Retention: indexes on the times that processed ids and stored message bodies expire by.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STATEMENTS = [
    "CREATE INDEX processed_events_processed_at ON processed_events (processed_at)",
    "CREATE INDEX processed_triggers_processed_at ON processed_triggers (processed_at)",
    "CREATE INDEX sends_body_retention ON sends (created_at) WHERE message IS NOT NULL AND status <> 'sending'",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for name in ("sends_body_retention", "processed_triggers_processed_at", "processed_events_processed_at"):
        op.execute(f"DROP INDEX IF EXISTS {name}")
