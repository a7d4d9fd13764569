"""Aliases: the ids a customer was known by before (an anonymous visitor's, an old one) and the profile
that holds what they did since it was merged.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STATEMENTS = [
    "CREATE TABLE aliases (previous_id text PRIMARY KEY, customer_id text NOT NULL, merged_at timestamptz NOT NULL)",
    "CREATE INDEX aliases_customer ON aliases (customer_id)",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS aliases")
