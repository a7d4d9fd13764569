"""Incoming triggers: each applied once (`processed_triggers`) to its customer's runs, which it
starts, exits or adds a click to."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.core.journeys import ExitRun, Journey, RecordClick, Run, StartRun, on_trigger
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.db.locks import DISPATCHER_LOCKS, lock_customers
from lifecycle.db.schema import journey_runs, processed_triggers
from lifecycle.privacy import PRIVACY, Tombstone, erase_rows, erased_at, split_at_tombstones
from services.dispatcher import metrics
from services.dispatcher.sql import APPEND_CLICK, CUSTOMER_RUNS, RUN_OF_MESSAGE
from services.dispatcher.store_base import StoreBase, _run_from_row


class TriggerHandling(StoreBase):
    async def handle_messages(self, messages: list[Trigger | Tombstone]) -> None:
        """A batch of the triggers topic: triggers, and the tombstones of customers erased, in order."""
        for part in split_at_tombstones(messages):
            if isinstance(part, Tombstone):
                async with self.engine.begin() as conn:
                    await erase_rows(conn, part.customer_id, await self.clock.now(), record=False)
                PRIVACY.labels(action="tombstone_applied").inc()
            else:
                await self.handle_triggers(part)

    async def handle_triggers(self, triggers: list[Trigger]) -> int:
        unique: dict[str, Trigger] = {}
        for trigger in triggers:
            unique.setdefault(trigger.trigger_id, trigger)
        if not unique:
            return 0
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            claimed = set(
                (
                    await conn.execute(
                        insert(processed_triggers)
                        .values([{"trigger_id": t, "processed_at": func.now()} for t in sorted(unique)])  # wall time
                        .on_conflict_do_nothing()
                        .returning(processed_triggers.c.trigger_id)
                    )
                ).scalars().all()
            )
            fresh = [t for t in unique.values() if t.trigger_id in claimed]
            if not fresh:
                return 0
            customer_ids = sorted({t.customer_id for t in fresh})
            await lock_customers(conn, DISPATCHER_LOCKS, customer_ids)
            # read once the locks are held: an erasure holds them too, so one committed while this batch
            # waited is seen here, and its customer gets no run back
            erased = await erased_at(conn, customer_ids)
            if erased:
                # caused before the customer was erased: on its way then, it must not bring them back
                kept = [t for t in fresh if t.customer_id not in erased or t.occurred_at > erased[t.customer_id]]
                PRIVACY.labels(action="trigger_dropped").inc(len(fresh) - len(kept))
                fresh = kept
                if not fresh:
                    return 0
                customer_ids = sorted({t.customer_id for t in fresh})
            rows = (await conn.execute(CUSTOMER_RUNS, {"ids": customer_ids})).all()
            runs: dict[str, list[Run]] = {}
            for row in rows:
                runs.setdefault(row.customer_id, []).append(_run_from_row(row))
            current = await self.catalog.current(conn)
            by_run = await self._run_journeys(conn, [r for found in runs.values() for r in found], current)
            journeys = [journey for _, journey in current.values()]

            def journey_of(run: Run) -> Journey | None:
                return by_run.get(run.run_id, (None, current.get(run.journey, (None, None))[1]))[1]

            fresh = [await _with_run_of_message(conn, t) for t in fresh]
            for trigger in fresh:
                customer_runs = runs.setdefault(trigger.customer_id, [])
                for action in on_trigger(journeys, customer_runs, trigger, journey_of):
                    await self._apply(conn, trigger, action, customer_runs, current, now)
        return len(fresh)

    async def _apply(self, conn: AsyncConnection, trigger: Trigger, action: StartRun | ExitRun | RecordClick,
                     customer_runs: list[Run], current: dict[str, tuple[int, Journey]], now: datetime) -> None:
        if isinstance(action, StartRun):
            version_id, journey = current[action.journey]
            step_id = journey.send_step(action.step_index).id
            run_id = (
                await conn.execute(
                    insert(journey_runs)
                    .values(
                        customer_id=trigger.customer_id, journey=action.journey, status="active",
                        entry_key=action.entry_key, step_index=action.step_index, due_at=action.due_at,
                        started_at=action.started_at, context=action.context, clicks=[],
                        version_id=version_id, step_id=step_id,
                    )
                    .returning(journey_runs.c.run_id)
                )
            ).scalar_one()
            customer_runs.append(Run(run_id, action.journey, "active", action.entry_key, action.step_index,
                                     action.due_at, action.started_at, action.context, [], version_id, step_id))
            metrics.RUNS_STARTED.labels(journey=action.journey).inc()
        elif isinstance(action, ExitRun):
            await conn.execute(
                update(journey_runs)
                .where(journey_runs.c.run_id == action.run_id, journey_runs.c.status == "active")
                .values(status="exited", exit_reason=action.reason, ended_at=now, due_at=None)
            )
            for run in customer_runs:
                if run.run_id == action.run_id:
                    run.status = "exited"
                    metrics.RUNS_ENDED.labels(journey=run.journey, outcome="exited").inc()
        else:
            click = {"step": action.step, "link": action.link}
            await conn.execute(APPEND_CLICK, {"c": json.dumps([click]), "r": action.run_id})
            for run in customer_runs:
                if run.run_id == action.run_id:
                    run.clicks.append(click)


async def _with_run_of_message(conn: AsyncConnection, trigger: Trigger) -> Trigger:
    """An engagement trigger names the email; the journey engine wants the run it belongs to."""
    message_id = trigger.data.get("message_id")
    if trigger.type is not TriggerType.ENGAGEMENT or not message_id:
        return trigger
    run_id = (await conn.execute(RUN_OF_MESSAGE, {"m": message_id})).scalar()
    if run_id is None:
        return trigger
    return replace(trigger, data={**trigger.data, "run_id": run_id})
