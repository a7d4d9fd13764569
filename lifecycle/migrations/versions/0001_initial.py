"""Initial schema: customers, due changes, outbox, journey runs, sends, virtual clock.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = [
    """CREATE TABLE customers (
        customer_id text PRIMARY KEY,
        state jsonb NOT NULL,
        stage text,
        consent text,
        email text,
        suppressed text,
        last_engagement_at timestamptz,
        orders_count integer NOT NULL DEFAULT 0,
        total_spent numeric(14, 2) NOT NULL DEFAULT 0,
        first_order_at timestamptz,
        last_order_at timestamptz,
        updated_at timestamptz NOT NULL
    )""",
    """CREATE TABLE processed_events (
        event_id text PRIMARY KEY,
        customer_id text NOT NULL,
        processed_at timestamptz NOT NULL
    )""",
    """CREATE TABLE due_changes (
        customer_id text NOT NULL,
        kind text NOT NULL,
        due_at timestamptz NOT NULL,
        PRIMARY KEY (customer_id, kind)
    )""",
    "CREATE INDEX due_changes_due_at ON due_changes (due_at)",
    """CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        customer_id text NOT NULL,
        payload jsonb NOT NULL,
        created_at timestamptz NOT NULL
    )""",
    """CREATE TABLE virtual_clock (
        id integer PRIMARY KEY CHECK (id = 1),
        now_at timestamptz NOT NULL
    )""",
    """CREATE TABLE journey_runs (
        run_id bigserial PRIMARY KEY,
        customer_id text NOT NULL,
        journey text NOT NULL,
        status text NOT NULL,
        entry_key text NOT NULL,
        step_index integer,
        due_at timestamptz,
        started_at timestamptz NOT NULL,
        ended_at timestamptz,
        exit_reason text,
        context jsonb NOT NULL,
        clicks jsonb NOT NULL DEFAULT '[]'
    )""",
    "CREATE UNIQUE INDEX journey_runs_one_active ON journey_runs (customer_id, journey) WHERE status = 'active'",
    "CREATE INDEX journey_runs_due ON journey_runs (due_at) WHERE status = 'active'",
    "CREATE INDEX journey_runs_customer ON journey_runs (customer_id)",
    """CREATE TABLE processed_triggers (
        trigger_id text PRIMARY KEY,
        processed_at timestamptz NOT NULL
    )""",
    """CREATE TABLE sends (
        send_id bigserial PRIMARY KEY,
        run_id bigint NOT NULL REFERENCES journey_runs (run_id),
        step integer NOT NULL,
        customer_id text NOT NULL,
        journey text NOT NULL,
        marketing boolean NOT NULL,
        status text NOT NULL,
        reason text,
        message_id text NOT NULL UNIQUE,
        to_address text,
        subject text,
        message bytea,
        due_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL,
        sent_at timestamptz,
        lease_until timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        UNIQUE (run_id, step)
    )""",
    "CREATE INDEX sends_in_flight ON sends (lease_until) WHERE status = 'sending'",
    "CREATE INDEX sends_customer_marketing ON sends (customer_id, sent_at) WHERE marketing AND status = 'sent'",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("sends", "processed_triggers", "journey_runs", "virtual_clock", "outbox", "due_changes",
                  "processed_events", "customers"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
