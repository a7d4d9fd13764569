"""Table definitions used by the queries. Migrations own the DDL (lifecycle/migrations)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

TS = DateTime(timezone=True)

customers = Table(
    "customers", metadata,
    Column("customer_id", Text, primary_key=True),
    Column("state", JSONB, nullable=False),
    Column("stage", Text),
    Column("consent", Text),
    Column("email", Text),
    Column("suppressed", Text),
    Column("last_engagement_at", TS),
    Column("orders_count", Integer, nullable=False),
    Column("total_spent", Numeric, nullable=False),
    Column("first_order_at", TS),
    Column("last_order_at", TS),
    Column("updated_at", TS, nullable=False),
)

processed_events = Table(
    "processed_events", metadata,
    Column("customer_id", Text, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("processed_at", TS, nullable=False),
)

due_changes = Table(
    "due_changes", metadata,
    Column("customer_id", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("due_at", TS, nullable=False),
)

outbox = Table(
    "outbox", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("customer_id", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("partition", Integer),  # the customer's partition of the events topic; NULL: any relay
)

virtual_clock = Table(
    "virtual_clock", metadata,
    Column("id", Integer, primary_key=True),
    Column("now_at", TS, nullable=False),
)

journey_runs = Table(
    "journey_runs", metadata,
    Column("run_id", BigInteger, primary_key=True, autoincrement=True),
    Column("customer_id", Text, nullable=False),
    Column("journey", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("entry_key", Text, nullable=False),
    Column("step_index", Integer),
    Column("due_at", TS),
    Column("started_at", TS, nullable=False),
    Column("ended_at", TS),
    Column("exit_reason", Text),
    Column("context", JSONB, nullable=False),
    Column("clicks", JSONB, nullable=False),
    Column("version_id", BigInteger),
    Column("step_id", Text),
)

journey_versions = Table(
    "journey_versions", metadata,
    Column("version_id", BigInteger, primary_key=True, autoincrement=True),
    Column("journey", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("origin", Text, nullable=False),
    Column("digest", Text, nullable=False),
    Column("definition", Text, nullable=False),
    Column("retired", Boolean, nullable=False),
    Column("created_at", TS, nullable=False),
)

processed_triggers = Table(
    "processed_triggers", metadata,
    Column("trigger_id", Text, primary_key=True),
    Column("processed_at", TS, nullable=False),
)

sends = Table(
    "sends", metadata,
    Column("send_id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", BigInteger, nullable=False),
    Column("step", Integer, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("journey", Text, nullable=False),
    Column("marketing", Boolean, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    Column("message_id", Text, nullable=False),
    Column("to_address", Text),
    Column("subject", Text),
    Column("message", LargeBinary),
    Column("due_at", TS, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("sent_at", TS),
    Column("lease_until", TS),
    Column("attempts", Integer, nullable=False),
    Column("variant", Text),
    Column("links", JSONB, nullable=False),
    Column("category", Text),
    Column("delivered_at", TS),
    Column("next_attempt_at", TS),
    Column("lease_token", UUID(as_uuid=False)),
)

email_events = Table(
    "email_events", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("message_id", Text),
    Column("journey", Text),
    Column("step", Integer),
    Column("variant", Text),
    Column("kind", Text, nullable=False),
    Column("link", Text),
    Column("occurred_at", TS, nullable=False),
)

consent_fences = Table(
    "consent_fences", metadata,
    Column("customer_id", Text, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("category", Text, primary_key=True),  # "*": every marketing email (an opt-out)
    Column("acknowledged_at", TS, nullable=False),
)

suppressions = Table(
    "suppressions", metadata,
    Column("address", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("suppressed_at", TS, nullable=False),
)

coupons = Table(
    "coupons", metadata,
    Column("code", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("run_id", BigInteger, nullable=False),
    Column("journey", Text, nullable=False),
    Column("step", Integer, nullable=False),
    Column("kind", Text, nullable=False),
    Column("amount", Numeric(12, 2), nullable=False),
    Column("currency", Text),
    Column("issued_at", TS, nullable=False),
    Column("expires_at", TS, nullable=False),
    Column("redeemed_at", TS),
    Column("redeemed_order_id", Text),
)

coupon_attempts = Table(
    "coupon_attempts", metadata,
    Column("order_id", Text, primary_key=True),
    Column("code", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("occurred_at", TS, nullable=False),
)

orders = Table(
    "orders", metadata,
    Column("order_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
    Column("occurred_at", TS, nullable=False),
    Column("value", Numeric(18, 4), nullable=False),
    Column("currency", Text, nullable=False),
    Column("coupon_code", Text),
    Column("voided", Boolean, nullable=False),
    Column("attributed_send_id", BigInteger),
    Column("attributed_journey", Text),
    Column("attributed_step", Integer),
    Column("attributed_variant", Text),
)

customer_products = Table(
    "customer_products", metadata,
    Column("customer_id", Text, primary_key=True),
    Column("product_id", Text, primary_key=True),
)

product_sales = Table(
    "product_sales", metadata,
    Column("product_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("price", Numeric(18, 4)),
    Column("currency", Text),
    Column("orders", Integer, nullable=False),
)

co_purchases = Table(
    "co_purchases", metadata,
    Column("product_id", Text, primary_key=True),
    Column("other_id", Text, primary_key=True),
    Column("orders", Integer, nullable=False),
)

campaigns = Table(
    "campaigns", metadata,
    Column("name", Text, primary_key=True),
    Column("source", Text, nullable=False),  # file | api
    Column("origin", Text, nullable=False),
    Column("definition", Text, nullable=False),  # YAML
    Column("digest", Text, nullable=False),
    Column("status", Text, nullable=False),  # scheduled | started | cancelled
    Column("start_at", TS, nullable=False),
    Column("created_at", TS, nullable=False),
    Column("updated_at", TS, nullable=False),
    Column("started_at", TS),
    Column("cancelled_at", TS),
    Column("audience", Integer),  # runs written when it started
    Column("passed", Integer),  # customers whose local moment had passed at the start (sent at once or skipped)
    Column("version_id", BigInteger),
)
