"""One index fewer on `sends`.

`sends_customer_marketing` (customer, sent_at) over the marketing sends `sent` is a part of two
other indexes on the same columns: `sends_customer_sent` (every send `sent`) and
`sends_customer_marketing_recent` (the marketing sends `sent` or `sending`). The query for a
customer's first marketing send (services/dispatcher/sql.py) is served by the first, filtering on
`marketing`; no other statement reads it. Each marketing send recorded as sent added an entry to all
three (the change of status is never a HOT update).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX IF EXISTS sends_customer_marketing")


def downgrade() -> None:
    op.execute("CREATE INDEX IF NOT EXISTS sends_customer_marketing ON sends (customer_id, sent_at)"
               " WHERE marketing AND status = 'sent'")
