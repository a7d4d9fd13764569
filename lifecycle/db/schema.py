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
from sqlalchemy.dialects.postgresql import JSONB

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
    Column("total_spent", Numeric(14, 2), nullable=False),
    Column("first_order_at", TS),
    Column("last_order_at", TS),
    Column("updated_at", TS, nullable=False),
)

processed_events = Table(
    "processed_events", metadata,
    Column("event_id", Text, primary_key=True),
    Column("customer_id", Text, nullable=False),
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
)
