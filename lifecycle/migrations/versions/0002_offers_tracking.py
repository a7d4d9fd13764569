"""Offers, tracking, suppression, attribution: coupons, email events, orders, co-purchases.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

STATEMENTS = [
    # what a send was made of: its A/B variant, its links (the only click targets), its category
    "ALTER TABLE sends ADD COLUMN variant text",
    "ALTER TABLE sends ADD COLUMN links jsonb NOT NULL DEFAULT '[]'",
    "ALTER TABLE sends ADD COLUMN category text",
    "ALTER TABLE sends ADD COLUMN delivered_at timestamptz",
    "ALTER TABLE sends ADD COLUMN next_attempt_at timestamptz",
    "CREATE INDEX sends_customer_sent ON sends (customer_id, sent_at) WHERE status = 'sent'",
    # opens, clicks, bounces, complaints, unsubscribes tied to a message when known
    """CREATE TABLE email_events (
        id bigserial PRIMARY KEY,
        event_id text NOT NULL UNIQUE,
        customer_id text NOT NULL,
        message_id text,
        journey text,
        step integer,
        variant text,
        kind text NOT NULL,
        link text,
        occurred_at timestamptz NOT NULL
    )""",
    "CREATE INDEX email_events_customer ON email_events (customer_id, kind, occurred_at)",
    "CREATE INDEX email_events_journey ON email_events (journey, step, kind)",
    """CREATE TABLE suppressions (
        address text PRIMARY KEY,
        reason text NOT NULL,
        suppressed_at timestamptz NOT NULL
    )""",
    """CREATE TABLE coupons (
        code text PRIMARY KEY,
        customer_id text NOT NULL,
        run_id bigint NOT NULL,
        journey text NOT NULL,
        step integer NOT NULL,
        kind text NOT NULL,
        amount numeric(12, 2) NOT NULL,
        currency text,
        issued_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        redeemed_at timestamptz,
        redeemed_order_id text,
        UNIQUE (run_id, step)
    )""",
    """CREATE TABLE coupon_attempts (
        order_id text NOT NULL,
        code text NOT NULL,
        customer_id text NOT NULL,
        outcome text NOT NULL,
        occurred_at timestamptz NOT NULL,
        PRIMARY KEY (order_id, code)
    )""",
    """CREATE TABLE orders (
        order_id text PRIMARY KEY,
        customer_id text NOT NULL,
        occurred_at timestamptz NOT NULL,
        value numeric(14, 2) NOT NULL,
        currency text NOT NULL,
        coupon_code text,
        voided boolean NOT NULL DEFAULT false,
        attributed_send_id bigint,
        attributed_journey text,
        attributed_step integer,
        attributed_variant text
    )""",
    "CREATE INDEX orders_attribution ON orders (attributed_journey, attributed_step)",
    """CREATE TABLE customer_products (
        customer_id text NOT NULL,
        product_id text NOT NULL,
        PRIMARY KEY (customer_id, product_id)
    )""",
    """CREATE TABLE product_sales (
        product_id text PRIMARY KEY,
        name text NOT NULL,
        price numeric(14, 2),
        currency text,
        orders integer NOT NULL
    )""",
    """CREATE TABLE co_purchases (
        product_id text NOT NULL,
        other_id text NOT NULL,
        orders integer NOT NULL,
        PRIMARY KEY (product_id, other_id)
    )""",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for table in ("co_purchases", "product_sales", "customer_products", "orders", "coupon_attempts", "coupons",
                  "suppressions", "email_events"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("DROP INDEX IF EXISTS sends_customer_sent")
    for column in ("next_attempt_at", "delivered_at", "category", "links", "variant"):
        op.execute(f"ALTER TABLE sends DROP COLUMN IF EXISTS {column}")
