"""Erasing and exporting one customer (GDPR articles 17 and 15), shared by the admin API and the CLI.

Erasing, in one transaction holding the customer's stager and dispatcher locks (so no batch of
either service writes to them at the same time):
- every address the customer had (their profile's, those emails went to) is suppressed by its salted
  hash alone (`sha256:<hex>`, reason `erased`); the plain suppressions of those addresses go;
- the customer's id is kept as a salted hash with the time of the erasure (`erasures`): the stager
  drops their events received before it and the dispatcher their triggers, so that a replay of the
  topics, or a message already on its way, brings nothing back;
- every row about the customer goes: profile, due changes, outbox, processed event ids, runs, sends
  and their stored bodies, opens and clicks, opt-out fences, coupons, orders, products bought, the
  ids merged into theirs and their own id as an alias.
Then a tombstone (the customer's key, a null value) goes to the events and triggers topics; each
consumer erases again when it reads it, behind whatever of theirs was already in the topic.

The salt is drawn once per installation by the migration that made these tables (0008).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Final, TypeVar, cast
from uuid import UUID

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.db.locks import DISPATCHER_LOCKS, STAGER_LOCKS, lock_customers
from lifecycle.db.queries import ADDRESS_HASH_SQL, customer_hash_sql
from lifecycle.kafka import delivered

PRIVACY = Counter(
    "lifecycle_privacy_total",
    "Privacy work by action: erased and exported (customers, by the API or the CLI), tombstone_applied (an"
    " erasure done again by a consumer reading its tombstone), event_dropped and trigger_dropped (an erased"
    " customer's, from before the erasure).",
    ["action"],
)

# the tables with a customer_id column, in the order they are emptied (and exported)
# (sends before journey_runs: a send refers to its run)
CUSTOMER_TABLES: Final = ("customers", "due_changes", "outbox", "processed_events", "sends", "journey_runs",
                          "email_events", "consent_fences", "coupons", "coupon_attempts", "orders",
                          "customer_products", "aliases")

_ADDRESSES = text(
    "SELECT DISTINCT lower(a) AS address FROM ("
    " SELECT email AS a FROM customers WHERE customer_id = :id"
    " UNION ALL SELECT to_address FROM sends WHERE customer_id = :id) found WHERE a IS NOT NULL"
)
_SUPPRESS_HASHED = text(
    "INSERT INTO suppressions (address, reason, suppressed_at)"
    f" SELECT {ADDRESS_HASH_SQL.format(address='a')}, 'erased', :now FROM unnest(CAST(:addresses AS text[])) AS a"
    " ON CONFLICT (address) DO NOTHING"
)
_DELETE_PLAIN_SUPPRESSIONS = text("DELETE FROM suppressions WHERE address = ANY(CAST(:addresses AS text[]))")
_RECORD_ERASURE = text(
    f"INSERT INTO erasures (customer_hash, erased_at) VALUES ({customer_hash_sql(':id')}, :now)"
    " ON CONFLICT (customer_hash) DO UPDATE SET erased_at = greatest(erasures.erased_at, EXCLUDED.erased_at)"
)
_ERASED = text(
    f"SELECT t.id, e.erased_at FROM unnest(CAST(:ids AS text[])) AS t(id)"
    f" JOIN erasures e ON e.customer_hash = {customer_hash_sql('t.id')}"
)
_DELETES: Final = {table: text(f"DELETE FROM {table} WHERE customer_id = :id") for table in CUSTOMER_TABLES}
_SELECTS: Final = {table: text(f"SELECT * FROM {table} WHERE customer_id = :id") for table in CUSTOMER_TABLES}
_DELETE_AS_ALIAS = text("DELETE FROM aliases WHERE previous_id = :id")
_SUPPRESSIONS_OF = text("SELECT * FROM suppressions WHERE address = ANY(CAST(:addresses AS text[]))")


@dataclass(frozen=True)
class Tombstone:
    """A message with the customer's key and no value: the customer was erased."""

    customer_id: str


def read_tombstone(key: bytes | None) -> Tombstone:
    if not key:
        raise ValueError("a message without a value nor a key: no customer to erase")
    return Tombstone(key.decode("utf-8"))


T = TypeVar("T")


def split_at_tombstones(items: Sequence[T | Tombstone]) -> list[list[T] | Tombstone]:
    """The batch in its order: runs of messages, and the tombstones between them."""
    if not any(type(item) is Tombstone for item in items):
        # the common case, without a look at each item's place
        return [cast(list[T], list(items))] if items else []
    parts: list[list[T] | Tombstone] = []
    for item in items:
        if isinstance(item, Tombstone):
            parts.append(item)
        elif parts and isinstance(parts[-1], list):
            parts[-1].append(item)
        else:
            parts.append([item])
    return parts


async def erase_rows(conn: AsyncConnection, customer_id: str, now: datetime, *, record: bool) -> dict[str, int]:
    """Everything held about the customer, gone, in the caller's transaction; the rows removed by table.
    `record`: keep the erasure (its time) so that older events of theirs are dropped from now on."""
    await lock_customers(conn, STAGER_LOCKS, [customer_id])
    await lock_customers(conn, DISPATCHER_LOCKS, [customer_id])
    addresses = list((await conn.execute(_ADDRESSES, {"id": customer_id})).scalars().all())
    if addresses:
        await conn.execute(_DELETE_PLAIN_SUPPRESSIONS, {"addresses": addresses})
        await conn.execute(_SUPPRESS_HASHED, {"addresses": addresses, "now": now})
    if record:
        await conn.execute(_RECORD_ERASURE, {"id": customer_id, "now": now})
    removed: dict[str, int] = {}
    for table, statement in _DELETES.items():
        result = await conn.execute(statement, {"id": customer_id})
        removed[table] = int(result.rowcount or 0)
    # the ids merged into them are in `aliases` above; the profile they were merged into keeps nothing of
    # this id but what their events did there
    removed["aliases"] += int((await conn.execute(_DELETE_AS_ALIAS, {"id": customer_id})).rowcount or 0)
    removed["addresses_suppressed"] = len(addresses)
    return removed


async def erase_customer(engine: AsyncEngine, customer_id: str, now: datetime) -> dict[str, int]:
    """Erase the customer in PostgreSQL and keep the erasure; `publish_tombstones` comes next. An erasure
    is repeatable: a failure halfway is mended by asking again."""
    async with engine.begin() as conn:
        return await erase_rows(conn, customer_id, now, record=True)


async def publish_tombstones(producer: Any, topics: Sequence[str], customer_id: str) -> list[str]:
    """The customer's tombstone on each topic, acknowledged by the broker; the topics."""
    key = customer_id.encode()
    await delivered([await producer.send(topic, value=None, key=key) for topic in topics])
    return list(topics)


# the customers a shop's data may be held under when it came through Shopify (lifecycle/shopify.py's ids)
_SHOPIFY_CUSTOMERS = text(
    "SELECT customer_id FROM customers WHERE customer_id ~ '^[0-9]+$' OR customer_id LIKE 'shopify-guest:%'"
    " UNION SELECT customer_id FROM orders WHERE customer_id ~ '^[0-9]+$' OR customer_id LIKE 'shopify-guest:%'"
    " LIMIT :n"
)


async def shopify_customers(engine: AsyncEngine, limit: int) -> list[str]:
    """Up to `limit` customers whose ids came from Shopify: what its shop/redact erases."""
    async with engine.connect() as conn:
        return list((await conn.execute(_SHOPIFY_CUSTOMERS, {"n": limit})).scalars().all())


async def erased_at(conn: AsyncConnection, customer_ids: Sequence[str]) -> dict[str, datetime]:
    """When each of these customers was last erased (those never erased are absent)."""
    if not customer_ids:
        return {}
    rows = (await conn.execute(_ERASED, {"ids": sorted(set(customer_ids))})).all()
    return {row.id: row.erased_at for row in rows}


async def export_customer(engine: AsyncEngine, customer_id: str, now: datetime) -> dict[str, Any] | None:
    """Everything held about the customer, as JSON-ready values; None when nothing is."""
    async with engine.begin() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        tables = {table: [_plain(dict(row._mapping)) for row in (await conn.execute(query, {"id": customer_id}))]
                  for table, query in _SELECTS.items()}
        addresses = list((await conn.execute(_ADDRESSES, {"id": customer_id})).scalars().all())
        suppressions = [_plain(dict(row._mapping))
                        for row in await conn.execute(_SUPPRESSIONS_OF, {"addresses": addresses})]
    if not any(tables.values()):
        return None
    profile = tables.pop("customers")
    state = profile[0]["state"] if profile else {}
    return {
        "customer_id": customer_id,
        "exported_at": _plain(now),
        "profile": profile[0] if profile else None,
        # every consent change with its source, time and, from our links and pages, IP and browser
        "consent_proof": state.get("consent_log", []) if isinstance(state, Mapping) else [],
        "suppressions": suppressions,
        **tables,
    }


def _plain(value: Any) -> Any:
    """A value from PostgreSQL as JSON can hold it: times in ISO 8601, numbers exact as text,
    a stored email as its text."""
    if isinstance(value, dict):
        return {str(name): _plain(item) for name, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, bytes | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    return value
