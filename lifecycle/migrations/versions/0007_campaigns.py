"""Campaigns: one email to a segment at a chosen moment (lifecycle/campaign_store.py).

A campaign is scheduled until its start, when its audience is written as journey runs of its own
journey version (`campaign:<name>`) in the same transaction that marks it started: the audience is
fixed then, and only once.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE campaigns (
            name text PRIMARY KEY,
            source text NOT NULL,
            origin text NOT NULL,
            definition text NOT NULL,
            digest text NOT NULL,
            status text NOT NULL CHECK (status IN ('scheduled', 'started', 'cancelled')),
            start_at timestamptz NOT NULL,
            created_at timestamptz NOT NULL,
            updated_at timestamptz NOT NULL,
            started_at timestamptz,
            cancelled_at timestamptz,
            audience integer,
            passed integer,
            version_id bigint
        )""")
    op.execute("CREATE INDEX campaigns_to_start ON campaigns (start_at) WHERE status = 'scheduled'")
    # a campaign's runs, for its progress and its cancellation; journeys' runs stay out of it, so the
    # dispatcher's moves of their runs do not maintain it
    op.execute("CREATE INDEX journey_runs_campaign ON journey_runs (journey, status) WHERE journey LIKE 'campaign:%'")
    op.execute("CREATE INDEX sends_campaign ON sends (journey, status) WHERE journey LIKE 'campaign:%'")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS sends_campaign")
    op.execute("DROP INDEX IF EXISTS journey_runs_campaign")
    op.execute("DROP TABLE IF EXISTS campaigns")
