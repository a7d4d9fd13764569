"""The dispatcher: triggers in, journey runs and emails out.

Runs and their next due step are rows in `journey_runs`, claimed with
`FOR UPDATE SKIP LOCKED` so several dispatchers share the work. A send is first
recorded in `sends` under the unique (run, step) key with its whole message and
status `sending`, committed, then handed to SMTP and marked `sent` after the
server's 250. A `sending` row whose lease ran out (a dispatcher died mid-send)
is sent again with the same Message-ID.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from typing import Any

from sqlalchemy import func, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.clock import Clock
from lifecycle.core.journeys import (
    Defer,
    ExitRun,
    Journey,
    Recipient,
    RecordClick,
    Run,
    SendNow,
    SendPolicy,
    SendStep,
    StartRun,
    decide_step,
    on_trigger,
)
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.db.schema import journey_runs, processed_triggers, sends
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.dispatcher import metrics, offers
from services.dispatcher.compose import MessageSpec, compose_email

log = logging.getLogger("lifecycle.dispatcher")


@dataclass(frozen=True)
class Outgoing:
    send_id: int
    to_address: str
    message: bytes
    journey: str
    step: int


def _run_from_row(row: Any) -> Run:
    return Run(
        run_id=row.run_id,
        journey=row.journey,
        status=row.status,
        entry_key=row.entry_key,
        step_index=row.step_index,
        due_at=row.due_at,
        started_at=row.started_at,
        context=dict(row.context),
        clicks=list(row.clicks),
    )


class DispatcherStore:
    def __init__(self, settings: Settings, engine: AsyncEngine, clock: Clock, journeys: list[Journey],
                 templates: Templates) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.journeys = {j.name: j for j in journeys}
        self.templates = templates
        self.policy = send_policy(settings)

    async def handle_triggers(self, triggers: list[Trigger]) -> int:
        unique: dict[str, Trigger] = {}
        for trigger in triggers:
            unique.setdefault(trigger.trigger_id, trigger)
        if not unique:
            return 0
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            claimed = (
                await conn.execute(
                    insert(processed_triggers)
                    .values([{"trigger_id": t, "processed_at": now} for t in unique])
                    .on_conflict_do_nothing()
                    .returning(processed_triggers.c.trigger_id)
                )
            ).scalars().all()
            fresh = [t for t in unique.values() if t.trigger_id in set(claimed)]
            if not fresh:
                return 0
            rows = (
                await conn.execute(
                    text(
                        "SELECT * FROM journey_runs WHERE customer_id = ANY(:ids)"
                        " ORDER BY customer_id, run_id FOR UPDATE"
                    ),
                    {"ids": sorted({t.customer_id for t in fresh})},
                )
            ).all()
            runs: dict[str, list[Run]] = {}
            for row in rows:
                runs.setdefault(row.customer_id, []).append(_run_from_row(row))
            journeys = list(self.journeys.values())
            fresh = [await _with_run_of_message(conn, t) for t in fresh]
            for trigger in fresh:
                customer_runs = runs.setdefault(trigger.customer_id, [])
                for action in on_trigger(journeys, customer_runs, trigger):
                    await self._apply(conn, trigger, action, customer_runs, now)
        return len(fresh)

    async def _apply(self, conn: AsyncConnection, trigger: Trigger, action: StartRun | ExitRun | RecordClick,
                     customer_runs: list[Run], now: datetime) -> None:
        if isinstance(action, StartRun):
            run_id = (
                await conn.execute(
                    insert(journey_runs)
                    .values(
                        customer_id=trigger.customer_id, journey=action.journey, status="active",
                        entry_key=action.entry_key, step_index=action.step_index, due_at=action.due_at,
                        started_at=action.started_at, context=action.context, clicks=[],
                    )
                    .returning(journey_runs.c.run_id)
                )
            ).scalar_one()
            customer_runs.append(Run(run_id, action.journey, "active", action.entry_key, action.step_index,
                                     action.due_at, action.started_at, action.context, []))
            metrics.RUNS_STARTED.labels(journey=action.journey).inc()
        elif isinstance(action, ExitRun):
            await conn.execute(
                update(journey_runs)
                .where(journey_runs.c.run_id == action.run_id)
                .values(status="exited", exit_reason=action.reason, ended_at=now, due_at=None)
            )
            for run in customer_runs:
                if run.run_id == action.run_id:
                    run.status = "exited"
                    metrics.RUNS_ENDED.labels(journey=run.journey, outcome="exited").inc()
        else:
            click = {"step": action.step, "link": action.link}
            await conn.execute(
                text("UPDATE journey_runs SET clicks = clicks || CAST(:c AS jsonb) WHERE run_id = :r"),
                {"c": json.dumps([click]), "r": action.run_id},
            )
            for run in customer_runs:
                if run.run_id == action.run_id:
                    run.clicks.append(click)

    async def claim_due_steps(self, limit: int) -> list[Outgoing]:
        """Decide every step due by now; record sends and skips; return what to hand to SMTP."""
        outgoing: list[Outgoing] = []
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            rows = (
                await conn.execute(
                    text(
                        "SELECT * FROM journey_runs WHERE status = 'active' AND due_at <= :now"
                        " ORDER BY due_at, run_id LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"now": now, "n": limit},
                )
            ).all()
            if not rows:
                return []
            recipients = await self._recipients(conn, sorted({r.customer_id for r in rows}), now)
            # leases are about process liveness: wall time from the database, even on the virtual clock
            lease = timedelta(seconds=self.settings.send_lease_seconds)
            for row in rows:
                run = _run_from_row(row)
                journey = self.journeys.get(run.journey)
                if journey is None or run.step_index is None:
                    await self._end_run(conn, run, "exited", "journey_removed", now)
                    continue
                profile, recipient = recipients.get(row.customer_id, ({}, _NOBODY))
                decision = decide_step(journey, run, recipient, row.customer_id, now, self.policy)
                step = journey.send_step(run.step_index)
                if isinstance(decision, Defer):
                    # quiet hours: the same step falls due again when they end; nothing is recorded as sent
                    await conn.execute(update(journey_runs).where(journey_runs.c.run_id == run.run_id)
                                       .values(due_at=decision.until))
                    metrics.SENDS.labels(journey=journey.name, step=str(step.number), result="deferred").inc()
                    continue
                message_id = self._message_id(run.run_id, step.number)
                assert run.due_at is not None
                values: dict[str, Any] = {
                    "run_id": run.run_id, "step": step.number, "customer_id": row.customer_id,
                    "journey": journey.name, "marketing": journey.marketing, "message_id": message_id,
                    "due_at": run.due_at, "created_at": now, "attempts": 0,
                }
                if isinstance(decision, SendNow):
                    assert recipient.email is not None
                    extras = await self._extras(conn, journey, run, step, row.customer_id, decision, now,
                                                recipient.timezone)
                    message = compose_email(self.settings, self.templates, MessageSpec(
                        journey=journey.name, step=step.number, template=decision.template, message_id=message_id,
                        to_address=recipient.email, customer={**profile, "customer_id": row.customer_id},
                        context=run.context, extras=extras, date=now,
                    ))
                    values.update(status="sending", to_address=recipient.email, subject=message["Subject"],
                                  message=bytes(message), sent_at=now,
                                  lease_until=func.now() + lease)
                    values.update(variant=decision.variant, category=journey.category)
                else:
                    values.update(status="skipped", reason=decision.reason)
                    metrics.SENDS.labels(journey=journey.name, step=str(step.number),
                                         result=f"skipped:{decision.reason.split(':')[0]}").inc()
                send_id = (
                    await conn.execute(
                        insert(sends).values(values).on_conflict_do_nothing().returning(sends.c.send_id)
                    )
                ).scalar()
                if send_id is not None and isinstance(decision, SendNow) and recipient.email:
                    outgoing.append(Outgoing(send_id, recipient.email, values["message"], journey.name,
                                             step.number))
                following = journey.next_send(run.step_index, run.due_at)
                if following is None:
                    await self._end_run(conn, run, "completed", None, now)
                else:
                    index, due_at = following
                    await conn.execute(
                        update(journey_runs).where(journey_runs.c.run_id == run.run_id)
                        .values(step_index=index, due_at=due_at)
                    )
        return outgoing

    async def _end_run(self, conn: AsyncConnection, run: Run, status: str, reason: str | None,
                       now: datetime) -> None:
        await conn.execute(
            update(journey_runs).where(journey_runs.c.run_id == run.run_id)
            .values(status=status, exit_reason=reason, ended_at=now, due_at=None, step_index=None)
        )
        metrics.RUNS_ENDED.labels(journey=run.journey, outcome=status).inc()

    async def _extras(self, conn: AsyncConnection, journey: Journey, run: Run, step: SendStep, customer_id: str,
                      decision: SendNow, now: datetime, timezone: str | None) -> dict[str, Any]:
        """Per-send additions to the template context: tier, offer, coupon, recommendations, variant."""
        extras: dict[str, Any] = {}
        if decision.variant is not None:
            extras["variant"] = {"name": decision.variant, "subject": decision.subject}
        if step.coupon is not None:
            tier = await offers.customer_tier(conn, customer_id, self.settings)
            extras["tier"] = tier
            coupon = await offers.coupon_for(conn, journey, run, step, customer_id, tier, now, timezone)
            if coupon is not None:
                extras["coupon"] = coupon
                if coupon["kind"] == "percent":
                    extras["offer"] = {"percent": coupon["amount"]}
        if step.recommendations:
            extras["recommendations"] = await offers.recommendations(conn, customer_id, step.recommendations,
                                                                     self.settings)
        return extras

    async def _recipients(self, conn: AsyncConnection, customer_ids: list[str],
                          now: datetime) -> dict[str, tuple[dict[str, Any], Recipient]]:
        rows = (
            await conn.execute(
                text(
                    "SELECT c.customer_id, c.state -> 'traits' AS traits, c.consent, c.email,"
                    " coalesce(c.suppressed, (SELECT x.reason FROM suppressions x WHERE x.address = lower(c.email)))"
                    " AS suppressed, c.last_engagement_at,"
                    " (SELECT min(s.sent_at) FROM sends s WHERE s.customer_id = c.customer_id"
                    "  AND s.marketing AND s.status = 'sent') AS first_marketing,"
                    " (SELECT count(*) FROM sends s WHERE s.customer_id = c.customer_id AND s.marketing"
                    "  AND s.status IN ('sent', 'sending') AND s.sent_at > :since) AS recent"
                    " FROM customers c WHERE c.customer_id = ANY(:ids)"
                ),
                {"ids": customer_ids, "since": now - timedelta(hours=self.settings.frequency_cap_hours)},
            )
        ).all()
        found: dict[str, tuple[dict[str, Any], Recipient]] = {}
        for row in rows:
            traits: dict[str, Any] = dict(row.traits or {})
            categories = traits.pop("unsubscribed_categories", None) or []
            found[row.customer_id] = (
                traits,
                Recipient(row.email, row.consent, row.suppressed, row.first_marketing, row.last_engagement_at,
                          tuple(categories), traits.get("timezone"), int(row.recent)),
            )
        return found

    def _message_id(self, run_id: int, step: int) -> str:
        digest = hashlib.sha256(f"{self.settings.signing_secret}:{run_id}:{step}".encode()).hexdigest()[:16]
        domain = self.settings.mail_from.rsplit("@", 1)[-1].strip(">") or "lifecycle.local"
        return f"<{run_id}.{step}.{digest}@{domain}>"

    async def mark_sent(self, send_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sends).where(sends.c.send_id == send_id, sends.c.status == "sending")
                .values(status="sent", lease_until=None, attempts=sends.c.attempts + 1)
            )

    async def mark_failed(self, send_id: int, permanent: bool, reason: str) -> None:
        async with self.engine.begin() as conn:
            if permanent:
                await conn.execute(
                    update(sends).where(sends.c.send_id == send_id)
                    .values(status="failed", reason=reason, lease_until=None, attempts=sends.c.attempts + 1)
                )
            else:
                # retried when the lease runs out; backoff grows with attempts
                await conn.execute(
                    text(
                        "UPDATE sends SET attempts = attempts + 1, reason = :r,"
                        " lease_until = now() + make_interval(secs => least(300, 2 ^ attempts))"
                        " WHERE send_id = :id"
                    ),
                    {"r": reason, "id": send_id},
                )

    async def reclaim_stale_sends(self, limit: int) -> list[Outgoing]:
        """Sends left `sending` by a dispatcher that died or failed: take them over."""
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT send_id, to_address, message, journey, step FROM sends"
                        " WHERE status = 'sending' AND lease_until < now()"
                        " ORDER BY send_id LIMIT :n FOR UPDATE SKIP LOCKED"
                    ),
                    {"n": limit},
                )
            ).all()
            if rows:
                await conn.execute(
                    text("UPDATE sends SET lease_until = now() + make_interval(secs => :s)"
                         " WHERE send_id = ANY(:ids)"),
                    {"s": self.settings.send_lease_seconds, "ids": [r.send_id for r in rows]},
                )
        return [Outgoing(r.send_id, r.to_address, bytes(r.message), r.journey, r.step) for r in rows]


_NOBODY = Recipient(None, None, None, None, None)


async def _with_run_of_message(conn: AsyncConnection, trigger: Trigger) -> Trigger:
    """An engagement trigger names the email; the journey engine wants the run it belongs to."""
    message_id = trigger.data.get("message_id")
    if trigger.type is not TriggerType.ENGAGEMENT or not message_id:
        return trigger
    run_id = (await conn.execute(text("SELECT run_id FROM sends WHERE message_id = :m"), {"m": message_id})).scalar()
    if run_id is None:
        return trigger
    return replace(trigger, data={**trigger.data, "run_id": run_id})


def _clock_time(value: str | None) -> time | None:
    return time.fromisoformat(value) if value else None


def send_policy(settings: Settings) -> SendPolicy:
    return SendPolicy(
        sunset_days=settings.sunset_days,
        frequency_cap_count=settings.frequency_cap_count,
        frequency_cap_hours=settings.frequency_cap_hours,
        quiet_start=_clock_time(settings.quiet_hours_start),
        quiet_end=_clock_time(settings.quiet_hours_end),
    )


