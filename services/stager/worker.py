"""The stager: events in, customer state and triggers out.

Each consumer batch is applied in one transaction (states, due times, outbox,
processed event ids); Kafka offsets are committed only after it. Due
time-driven changes are claimed from `due_changes` and go through the same
rules. Each outbox row carries its customer's partition of the events topic;
each stager relays the rows of the partitions it consumes, in id order, and
deletes them once the broker acknowledged (no transaction is held while it
waits for the broker).

Its SQL, and that of facts.py, is in sql.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from aiokafka.partitioner import murmur2
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle import jsoncodec
from lifecycle.clock import Clock
from lifecycle.core.rules import Decision, RuleConfig, apply_due, apply_event
from lifecycle.core.state import CustomerState
from lifecycle.db.locks import STAGER_LOCKS, lock_customers, try_lock_customers
from lifecycle.db.notify import OUTBOX_CHANNEL, notify
from lifecycle.events import CustomerMergedProperties, Event, EventType
from lifecycle.kafka import delivered
from lifecycle.privacy import PRIVACY, erase_rows
from services.stager import metrics
from services.stager.facts import record_facts
from services.stager.sql import (
    CLAIM_EVENT_IDS,
    CLEAR_DUES,
    CUSTOMER_COLUMNS,
    DELETE_APPLIED_FENCES,
    DELETE_MERGED,
    DELETE_OUTBOX,
    DUE_CHANGES_OF,
    DUE_CUSTOMERS,
    INSERT_OUTBOX,
    LOCK_AND_RESOLVE,
    LOCK_STATES,
    LOCK_STATES_SKIP_LOCKED,
    MOVE_MERGED_FACTS,
    RECORD_ALIAS,
    REPOINT_ALIASES,
    SELECT_OUTBOX_ALL,
    SELECT_OUTBOX_OF,
    SWEEP_FENCES,
    UPSERT_CUSTOMERS,
    UPSERT_DUES,
)

# the statements that lived here before sql.py still import from here
__all__ = [
    "CLAIM_EVENT_IDS",
    "CLEAR_DUES",
    "CUSTOMER_COLUMNS",
    "DELETE_OUTBOX",
    "INSERT_OUTBOX",
    "SELECT_OUTBOX_ALL",
    "SELECT_OUTBOX_OF",
    "UPSERT_CUSTOMERS",
    "UPSERT_DUES",
    "StagerStore",
    "partition_of",
    "rule_config",
]

log = logging.getLogger("lifecycle.stager")


def partition_of(customer_id: str, partitions: int) -> int:
    """The customer's partition in a topic of `partitions`: Kafka's default partitioner for the key."""
    return int(murmur2(customer_id.encode()) & 0x7FFFFFFF) % partitions


def rule_config(settings: Any) -> RuleConfig:
    return RuleConfig(
        new_customer_days=settings.new_customer_days,
        lapsed_days=settings.lapsed_days,
        cart_abandon_minutes=settings.cart_abandon_minutes,
        backfill_hours=settings.backfill_hours,
        birthday_hour=settings.birthday_hour,
        soft_bounce_limit=settings.soft_bounce_limit,
    )


class StagerStore:
    """The stager's PostgreSQL work, one method per transaction."""

    def __init__(self, engine: AsyncEngine, clock: Clock, config: RuleConfig, attribution_days: int = 5,
                 partitions: int | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.config = config
        self.attribution_days = attribution_days
        # the events topic's partitions (the stager sets it once the consumer knows); None: rows any relay takes
        self.partitions = partitions

    async def apply_events(self, events: list[Event]) -> int:
        """Apply a batch; returns how many events were new. An event id counts per customer."""
        unique: dict[tuple[str, str], Event] = {}
        for event in events:
            unique.setdefault((event.customer_id, event.event_id), event)
        if not unique:
            return 0
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            merged = EventType.CUSTOMER_MERGED
            previous_ids = {e.properties_as(CustomerMergedProperties).previous_id
                            for e in unique.values() if e.type is merged}
            named = {customer for customer, _ in unique} | previous_ids
            # customers first, then their event ids. Then the profiles their ids were merged into: a wait out
            # of order, rare (only behind a merge), which PostgreSQL's deadlock detection ends with a retry of
            # the batch at worst
            aliases, erased = await _lock_and_resolve(conn, named)
            await lock_customers(conn, STAGER_LOCKS, set(aliases.values()) - named)
            if erased:
                # an erased customer's events from before the erasure (a replay, or on their way then) leave
                # no trace, not even their ids
                dropped = [key for key, e in unique.items()
                           if key[0] in erased and e.received_at <= erased[key[0]]]
                PRIVACY.labels(action="event_dropped").inc(len(dropped))
                for key in dropped:
                    del unique[key]
            fresh = await _claim_event_ids(conn, [unique[key] for key in sorted(unique)])
            new_events = [e for key, e in unique.items() if key in fresh]
            metrics.DUPLICATES.inc(len(unique) - len(new_events))
            if not new_events:
                return 0
            # their profiles (or those their ids were merged into), and the profiles merges take in
            states = await _lock_states(conn, previous_ids | {aliases.get(c, c) for c in {e.customer_id
                                                                                          for e in new_events}})
            changes = _Changes()
            applied: list[Event] = []  # as applied: under the profile their customer's id was merged into
            merges: list[tuple[str, str]] = []
            for event in new_events:
                target = aliases.get(event.customer_id, event.customer_id)
                if target != event.customer_id:
                    event = event.model_copy(update={"customer_id": target})
                    metrics.ALIASED.labels(what="redirected").inc()
                state = states.setdefault(target, CustomerState(target))
                merging = None
                if event.type is EventType.CUSTOMER_MERGED:
                    previous = event.properties_as(CustomerMergedProperties).previous_id
                    if previous != target and aliases.get(previous) != target:
                        merging = states.pop(previous, None)
                        changes.forget(previous)
                        merges.append((previous, target))
                        aliases = {k: target if v == previous else v for k, v in aliases.items()}
                        aliases[previous] = target
                        metrics.ALIASED.labels(what="merged").inc()
                before = state.stage
                decision = apply_event(state, event, now, self.config, merging)
                changes.add(decision)
                applied.append(event)
                metrics.record_transition(before, state.stage)
            await changes.save(conn, now, self.partitions)
            for previous, target in merges:
                await _merged(conn, previous, target, now)
            emails = {cid: state.traits.get("email") for cid, state in states.items()}
            suppressed = {cid for cid, state in states.items() if state.suppressed}
            await record_facts(conn, applied, emails, self.attribution_days, suppressed)
            # the opt-outs applied here no longer need the fence the ingest API put up for them
            await conn.execute(
                DELETE_APPLIED_FENCES,
                {"c": [e.customer_id for e in new_events], "e": [e.event_id for e in new_events]},
            )
        metrics.APPLIED.inc(len(new_events))
        return len(new_events)

    async def erase(self, customer_id: str) -> None:
        """The customer's tombstone: whatever their earlier events wrote since the erasure goes too."""
        async with self.engine.begin() as conn:
            await erase_rows(conn, customer_id, await self.clock.now(), record=False)
        PRIVACY.labels(action="tombstone_applied").inc()

    async def apply_due_changes(self, limit: int) -> int:
        """Apply time-driven changes due by now, in due-time order."""
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            candidates = (
                await conn.execute(
                    DUE_CUSTOMERS,
                    {"now": now, "n": limit},
                )
            ).scalars().all()
            if not candidates:
                return 0
            # customers first, then their due rows: the same lock order as apply_events; a customer
            # whose events are being applied right now is left for the next round
            free = await try_lock_customers(conn, STAGER_LOCKS, candidates)
            states = await _lock_states(conn, free, skip_locked=True)
            if not states:
                return 0
            rows = (
                await conn.execute(
                    DUE_CHANGES_OF,
                    {"ids": list(states), "now": now},
                )
            ).all()
            changes = _Changes()
            for row in rows:
                state = states[row.customer_id]
                before = state.stage
                decision = apply_due(state, row.kind, row.due_at, now, self.config)
                decision.dues.setdefault(row.kind, None)
                changes.add(decision)
                metrics.record_transition(before, state.stage)
            await changes.save(conn, now, self.partitions)
            if changes.triggers:
                # these customers' partitions may be another stager's: its relay is woken at the commit
                await conn.execute(notify(OUTBOX_CHANNEL))
        return len(rows)

    async def sweep_fences(self) -> int:
        """Fences whose opt-out the stager applied before the ingest API wrote them: they hold nothing."""
        async with self.engine.begin() as conn:
            result = await conn.execute(SWEEP_FENCES)
        return int(result.rowcount or 0)

    async def relay_outbox(self, producer: Any, topic: str, limit: int, mine: list[int] | None = None) -> int:
        """Publish the outbox rows of the partitions in `mine` (all rows when None), in id order, then
        delete them. Rows without a partition, or of a partition the topic no longer has, are anyone's.

        No transaction is open while the broker is awaited. Two stagers may both publish a row for a
        moment while a partition moves between them: the dispatcher counts each trigger id once."""
        async with self.engine.connect() as conn:
            if mine is None:
                rows = (await conn.execute(SELECT_OUTBOX_ALL, {"n": limit})).all()
            else:
                rows = (await conn.execute(SELECT_OUTBOX_OF, {"mine": mine, "count": self.partitions or 0,
                                                              "n": limit})).all()
        if not rows:
            return 0
        futures = [
            await producer.send(
                topic,
                value=row.payload.encode(),
                key=row.customer_id.encode(),
            )
            for row in rows
        ]
        await delivered(futures)
        async with self.engine.begin() as conn:
            await conn.execute(DELETE_OUTBOX, {"ids": [row.id for row in rows]})
        metrics.TRIGGERS_RELAYED.inc(len(rows))
        return len(rows)


async def _lock_and_resolve(conn: AsyncConnection, ids: set[str]) -> tuple[dict[str, str], dict[str, datetime]]:
    """Hold the customers' locks; the profile each id was merged into, and when each id was erased (for those
    with either), as they stand once the locks are held."""
    aliases: dict[str, str] = {}
    erased: dict[str, datetime] = {}
    for row in await conn.execute(LOCK_AND_RESOLVE, {"space": STAGER_LOCKS, "ids": sorted(ids)}):
        if row.merged_into is not None:
            aliases[row.found_id] = row.merged_into
        if row.erased_when is not None:
            erased[row.found_id] = row.erased_when
    return aliases, erased


async def _merged(conn: AsyncConnection, previous: str, target: str, now: datetime) -> None:
    """The merged profile is gone (its state joined the target's), its facts are the target's, and its id
    points at the target, as do the ids that pointed at it."""
    await conn.execute(REPOINT_ALIASES, {"previous": previous, "target": target})
    await conn.execute(RECORD_ALIAS, {"previous": previous, "target": target, "now": now})
    for statement in DELETE_MERGED:
        await conn.execute(statement, {"previous": previous})
    for statement in MOVE_MERGED_FACTS:
        await conn.execute(statement, {"previous": previous, "target": target})


class _Changes:
    """What a transaction writes back: states, due times and triggers, in order."""

    def __init__(self) -> None:
        self.states: dict[str, CustomerState] = {}
        self.dues: dict[tuple[str, str], datetime | None] = {}
        self.triggers: list[dict[str, Any]] = []

    def forget(self, customer_id: str) -> None:
        """A profile merged into another in this batch: nothing of it is written back."""
        self.states.pop(customer_id, None)
        self.dues = {key: at for key, at in self.dues.items() if key[0] != customer_id}

    def add(self, decision: Decision) -> None:
        customer_id = decision.state.customer_id
        self.states[customer_id] = decision.state
        for kind, due_at in decision.dues.items():
            self.dues[(customer_id, kind)] = due_at
        self.triggers.extend(t.to_json() for t in decision.triggers)

    async def save(self, conn: AsyncConnection, now: datetime, partitions: int | None) -> None:
        if self.states:
            rows = [_customer_row(state) for state in self.states.values()]
            await conn.execute(UPSERT_CUSTOMERS, {**{name: [row[i] for row in rows]
                                                     for i, name in enumerate(CUSTOMER_COLUMNS)}, "now": now})
        to_set = [(c, k, at) for (c, k), at in self.dues.items() if at is not None]
        to_clear = [(c, k) for (c, k), at in self.dues.items() if at is None]
        if to_set:
            await conn.execute(UPSERT_DUES, {"c": [c for c, _, _ in to_set], "k": [k for _, k, _ in to_set],
                                             "at": [at for _, _, at in to_set]})
        if to_clear:
            await conn.execute(CLEAR_DUES, {"c": [c for c, _ in to_clear], "k": [k for _, k in to_clear]})
        if self.triggers:
            customers = [t["customer_id"] for t in self.triggers]
            await conn.execute(INSERT_OUTBOX, {
                "c": customers, "p": [_json(t) for t in self.triggers], "now": now,
                "k": [partition_of(c, partitions) if partitions else None for c in customers]})


def _json(value: object) -> str:
    return jsoncodec.dumps(value)


def _customer_row(state: CustomerState) -> tuple[Any, ...]:
    summary = state.order_summary()
    return (state.customer_id, _json(state.to_json()), state.stage, state.consent, state.traits.get("email"),
            state.suppressed, state.last_engagement_at, summary["orders_count"],
            Decimal(str(summary["total_spent"])), summary["first_order_at"], summary["last_order_at"])


async def _claim_event_ids(conn: AsyncConnection, events: Iterable[Event]) -> set[tuple[str, str]]:
    claimed = list(events)
    result = await conn.execute(CLAIM_EVENT_IDS, {"c": [e.customer_id for e in claimed],
                                                  "e": [e.event_id for e in claimed]})
    return {(row.customer_id, row.event_id) for row in result}


async def _lock_states(
    conn: AsyncConnection, customer_ids: set[str], skip_locked: bool = False
) -> dict[str, CustomerState]:
    rows = (
        await conn.execute(
            LOCK_STATES_SKIP_LOCKED if skip_locked else LOCK_STATES,
            {"ids": sorted(customer_ids)},
        )
    ).all()
    return {row.customer_id: CustomerState.from_json(row.state) for row in rows}
