"""tick_10k_s, tick_1m_s, tick_ratio: the cost of one time-driven pass of the stager (stage expiry, cart
abandonment, birthdays) with 1,000 changes due, over 10,000 and over 1,000,000 customers.

Customers are loaded with COPY (asyncpg copy_records_to_table). Their rows are what the stager itself
writes: states made by the rules from real events (lifecycle.core.rules.apply_event), turned into rows by
the stager's own _customer_row, then copied under other ids. A third of the due customers have a stage
expiring (one order 90 days ago: new -> at_risk), a third a cart left an hour ago, a third a birthday;
every other customer has one change due later (a birthday in the coming year), so `due_changes` holds a
row per customer. ANALYZE follows the load, as autovacuum would soon after.

The pass runs in this process (more precise than watching a stager drain the table): the stager's own
StagerStore.apply_due_changes(batch_size), called until it returns 0, timed around the loop. A warm-up
pass over a few customers first, so neither size pays for the first statements.
"""

from __future__ import annotations

import cProfile
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from bench.common import TICK_DUE, TICK_LARGE, TICK_SMALL, Results, Row, Scale, ratio, say
from bench.stack import BenchStack, reset, scalar
from bench.workload import parsed
from lifecycle.clock import SystemClock
from lifecycle.core.rules import DueKind, apply_event
from lifecycle.core.state import CustomerState
from lifecycle.db.notify import asyncpg_dsn
from services.stager.worker import CUSTOMER_COLUMNS, StagerStore, _customer_row, rule_config

PLACEHOLDER = "TEMPLATECUSTOMER"
COLUMNS = ("customer_id", "state", "stage", "consent", "email", "suppressed", "last_engagement_at", "orders_count",
           "total_spent", "first_order_at", "last_order_at", "updated_at")
DUE_KINDS = (DueKind.STAGE, DueKind.CART, DueKind.BIRTHDAY)


def _template(stack: BenchStack, events: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The customers row the stager would write after `events` (applied at their own times)."""
    config = rule_config(stack.settings)
    state = CustomerState(PLACEHOLDER)
    for event in parsed(events, now):
        apply_event(state, event, event.occurred_at, config)
    row = dict(zip(CUSTOMER_COLUMNS, _customer_row(state), strict=True))
    return {**row, "state": json.loads(row["state"]), "updated_at": now}


def _signup(at: datetime, birthday: str | None = None) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": f"{PLACEHOLDER}@example.com", "first_name": "Bench", "consent": "opted_in"}
    if birthday:
        traits["birthday"] = birthday
    return {"event_id": "s", "type": "customer_signed_up", "customer_id": PLACEHOLDER,
            "occurred_at": at.isoformat(), "traits": traits}


def templates(stack: BenchStack, now: datetime) -> dict[str, dict[str, Any]]:
    item = {"product_id": "sku-001", "name": "Product 1", "quantity": 1, "price": 10.75}
    ordered = now - timedelta(days=stack.settings.new_customer_days, minutes=1)
    carted = now - timedelta(minutes=stack.settings.cart_abandon_minutes + 1)
    today = f"--{now.month:02d}-{now.day:02d}"
    return {
        DueKind.STAGE: _template(stack, [_signup(ordered - timedelta(days=10)), {
            "event_id": "o", "type": "order_placed", "customer_id": PLACEHOLDER, "occurred_at": ordered.isoformat(),
            "properties": {"order_id": f"order-{PLACEHOLDER}", "currency": "EUR", "value": 10.75, "items": [item]}}],
            now),
        DueKind.CART: _template(stack, [_signup(carted - timedelta(days=3)), {
            "event_id": "c", "type": "cart_updated", "customer_id": PLACEHOLDER, "occurred_at": carted.isoformat(),
            "properties": {"cart_id": f"cart-{PLACEHOLDER}", "currency": "EUR", "value": 10.75, "items": [item]}}],
            now),
        DueKind.BIRTHDAY: _template(stack, [_signup(now - timedelta(days=200), today)], now),
        "later": _template(stack, [_signup(now - timedelta(days=200), "--01-15")], now),
    }


def _records(template: dict[str, Any], ids: range, prefix: str) -> Iterator[tuple[Any, ...]]:
    state = json.dumps(template["state"], separators=(",", ":"))
    spent = Decimal(str(template["total_spent"]))
    for n in ids:
        cid = f"{prefix}-{n}"
        yield (cid, state.replace(PLACEHOLDER, cid), template["stage"], template["consent"],
               template["email"].replace(PLACEHOLDER, cid), template["suppressed"], template["last_engagement_at"],
               template["orders_count"], spent, template["first_order_at"], template["last_order_at"],
               template["updated_at"])


async def load(stack: BenchStack, customers: int, due: int, now: datetime) -> None:
    """`customers` rows by COPY, `due` of them with a change due a minute ago, the others a birthday later."""
    rows = templates(stack, now)
    conn = await asyncpg.connect(asyncpg_dsn(stack.settings.database_url))
    try:
        for k, kind in enumerate(DUE_KINDS):
            ids = range(k, due, len(DUE_KINDS))
            await conn.copy_records_to_table("customers", records=_records(rows[kind], ids, "due"), columns=COLUMNS)
            await conn.copy_records_to_table("due_changes", columns=("customer_id", "kind", "due_at"), records=(
                (f"due-{n}", kind, now - timedelta(minutes=1)) for n in ids))
        rest = range(customers - due)
        await conn.copy_records_to_table("customers", records=_records(rows["later"], rest, "c"), columns=COLUMNS)
        await conn.copy_records_to_table("due_changes", columns=("customer_id", "kind", "due_at"), records=(
            (f"c-{n}", DueKind.BIRTHDAY, now + timedelta(hours=1 + n % (365 * 24))) for n in rest))
        await conn.execute("ANALYZE customers")
        await conn.execute("ANALYZE due_changes")
    finally:
        await conn.close()


async def one_pass(stack: BenchStack, customers: int, due: int, label: str) -> float:
    await reset(stack)
    now = datetime.now(UTC)
    started = time.perf_counter()
    await load(stack, customers, due, now)
    say(f"  {label}: {customers:,} customers loaded with COPY in {time.perf_counter() - started:.1f} s")
    engine = await stack.database()
    store = StagerStore(engine, SystemClock(), rule_config(stack.settings), stack.settings.attribution_days)
    profile = cProfile.Profile() if stack.profile_dir is not None else None
    applied = 0
    if profile is not None:
        profile.enable()
    started = time.perf_counter()
    while (done := await store.apply_due_changes(stack.settings.batch_size)) > 0:
        applied += done
    elapsed = time.perf_counter() - started
    if profile is not None:
        profile.disable()
        assert stack.profile_dir is not None
        stack.profile_dir.mkdir(parents=True, exist_ok=True)
        profile.dump_stats(str(stack.profile_dir / f"tick-{label}.prof"))
    left = await scalar(engine, "SELECT count(*) FROM due_changes WHERE due_at <= now()")
    triggers = await scalar(engine, "SELECT count(*) FROM outbox")
    if applied != due or left:
        raise RuntimeError(f"tick over {customers} customers: {applied} changes applied, {left} still due, "
                           f"expected {due} applied")
    say(f"  {label}: {applied} changes applied in {elapsed:.3f} s ({triggers} triggers in the outbox)")
    return elapsed


async def run(stack: BenchStack, scale: Scale, results: Results) -> None:
    small, large = scale.count(TICK_SMALL, 10), scale.count(TICK_LARGE, 10)
    due = min(scale.count(TICK_DUE, 3), small)
    say(f"tick: one time-driven pass of the stager (in process) with {due} changes due, over {small:,} and "
        f"over {large:,} customers; every service stopped")
    stack.only((), phase="tick")
    await one_pass(stack, 30, 9, "warm-up")
    small_s = await one_pass(stack, small, due, "small")
    large_s = await one_pass(stack, large, due, "large")
    await reset(stack)
    results.set("tick_10k_s", small_s)
    results.set("tick_1m_s", large_s)
    results.set("tick_ratio", ratio(large_s, small_s))
    results.rows.append(Row(f"tick, {due} due over {small:,} customers (s)", small_s, unit=" s"))
    results.rows.append(Row(f"tick, {due} due over {large:,} customers (s)", large_s, small_s, " s"))
