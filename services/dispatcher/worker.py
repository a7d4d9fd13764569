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
    Skip,
    StartRun,
    decide_step,
    on_trigger,
)
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.db.queries import CUSTOMER_SUPPRESSION_SQL
from lifecycle.db.schema import journey_runs, processed_triggers, sends
from lifecycle.settings import Settings
from lifecycle.templates import TemplateError, Templates
from lifecycle.tokens import SigningKeys
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
        self.keys = SigningKeys.from_settings(settings)

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
                    try:
                        composed = compose_email(self.settings, self.keys, self.templates, MessageSpec(
                            journey=journey.name, step=step.number, template=decision.template,
                            message_id=message_id, to_address=recipient.email,
                            customer={**profile, "customer_id": row.customer_id},
                            context=run.context, extras=extras, date=now,
                        ))
                    except TemplateError as exc:
                        # one broken template must not hold back the batch: recorded, visible, never sent
                        log.error("template failed, step not sent: %s", exc, extra={
                            "customer_id": row.customer_id, "journey": journey.name, "step": step.number})
                        values.update(status="failed", reason=f"template: {exc.message}"[:500],
                                      variant=decision.variant, category=journey.category)
                        metrics.SENDS.labels(journey=journey.name, step=str(step.number), result="failed").inc()
                        decision = Skip(step, "template")
                    else:
                        values.update(status="sending", to_address=recipient.email,
                                      subject=composed.message["Subject"], message=bytes(composed.message),
                                      links=composed.links, sent_at=now, lease_until=func.now() + lease)
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
                    f" {CUSTOMER_SUPPRESSION_SQL} AS suppressed, c.last_engagement_at,"
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
        # The key that signs links: with only LIFECYCLE_SIGNING_SECRET set it is that secret, so
        # Message-IDs stay what they were before key rotation existed.
        digest = hashlib.sha256(f"{self.keys.signing_secret}:{run_id}:{step}".encode()).hexdigest()[:16]
        domain = self.settings.mail_from.rsplit("@", 1)[-1].strip(">") or "lifecycle.local"
        return f"<{run_id}.{step}.{digest}@{domain}>"

    # --- after SMTP: each outcome is one transaction (see docs/sending.md) -------------------------

    async def mark_sent(self, send_id: int) -> bool:
        """After the server's 250. This one UPDATE is the whole window in which a crash sends twice.

        False when the row was no longer ours (another dispatcher took it over and finished it)."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sends).where(sends.c.send_id == send_id, sends.c.status == "sending")
                .values(status="sent", delivered_at=func.now(), lease_until=None, next_attempt_at=None,
                        attempts=sends.c.attempts + 1)
            )
        return bool(result.rowcount)

    async def mark_retry(self, send_id: int, reason: str) -> str | None:
        """A 4xx or a lost connection: due again after a backoff that grows with the attempts, as a row
        (status stays `sending`, `next_attempt_at` = `lease_until`), not a sleep; `failed` after
        smtp_max_attempts. Returns the new status, None when the row was no longer ours."""
        from lifecycle.smtp import retry_delay

        async with self.engine.begin() as conn:
            attempts = (
                await conn.execute(
                    text("SELECT attempts FROM sends WHERE send_id = :id AND status = 'sending' FOR UPDATE"),
                    {"id": send_id},
                )
            ).scalar()
            if attempts is None:
                return None
            attempts += 1
            if attempts >= self.settings.smtp_max_attempts:
                await conn.execute(
                    update(sends).where(sends.c.send_id == send_id)
                    .values(status="failed", reason=f"gave up after {attempts} attempts: {reason}",
                            attempts=attempts, lease_until=None, next_attempt_at=None)
                )
                return "failed"
            # backoff settings proposed to the lead; the defaults give 2, 4, 8 ... 300 s
            delay = retry_delay(attempts, float(getattr(self.settings, "smtp_retry_base_seconds", 2.0)),
                                float(getattr(self.settings, "smtp_retry_max_seconds", 300.0)))
            await conn.execute(
                text(
                    "UPDATE sends SET attempts = :a, reason = :r,"
                    " next_attempt_at = now() + make_interval(secs => :d),"
                    " lease_until = now() + make_interval(secs => :d)"
                    " WHERE send_id = :id"
                ),
                {"a": attempts, "r": reason, "d": delay, "id": send_id},
            )
        return "sending"

    async def mark_bounced(self, send_id: int, address: str, reason: str) -> bool:
        """A 5xx to RCPT or DATA: the send fails and the address is suppressed, in one transaction.
        Returns whether the address was newly suppressed."""
        at = await self.clock.now()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(sends).where(sends.c.send_id == send_id, sends.c.status == "sending")
                .values(status="failed", reason=reason, attempts=sends.c.attempts + 1, lease_until=None,
                        next_attempt_at=None)
            )
            return await suppress(conn, address, reason, at)

    async def mark_failed(self, send_id: int, reason: str) -> bool:
        """This message can never go (the address is not to blame): failed, nothing suppressed."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(sends).where(sends.c.send_id == send_id, sends.c.status == "sending")
                .values(status="failed", reason=reason, attempts=sends.c.attempts + 1, lease_until=None,
                        next_attempt_at=None)
            )
        return bool(result.rowcount)

    async def postpone_sends(self, delays: list[tuple[int, float]]) -> None:
        """Sends the rate limits left no time for in this round: due again later, no attempt counted."""
        if not delays:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE sends s SET next_attempt_at = now() + make_interval(secs => p.delay),"
                    " lease_until = now() + make_interval(secs => p.delay)"
                    " FROM unnest(CAST(:ids AS bigint[]), CAST(:delays AS float8[])) AS p(send_id, delay)"
                    " WHERE s.send_id = p.send_id AND s.status = 'sending'"
                ),
                {"ids": [i for i, _ in delays], "delays": [d for _, d in delays]},
            )

    async def claim_due_retries(self, limit: int) -> list[Outgoing]:
        """Sends whose retry (or postponed turn) is due: take them for this attempt."""
        return await self._take_sends("s.next_attempt_at IS NOT NULL AND s.lease_until <= now()", limit)

    async def reclaim_stale_sends(self, limit: int) -> list[Outgoing]:
        """Sends whose lease ran out during an attempt (a dispatcher died between claim and 250 or
        commit): take them over; they go again with the same Message-ID."""
        return await self._take_sends("s.next_attempt_at IS NULL AND s.lease_until < now()", limit)

    async def _take_sends(self, due: str, limit: int) -> list[Outgoing]:
        """Lease `sending` rows that are `due`. Those whose address was suppressed or whose customer
        left the journey's consent since the claim are skipped instead: a retry never outlives an
        opt-out or a bounce."""
        outgoing: list[Outgoing] = []
        async with self.engine.begin() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT s.send_id, s.to_address, s.message, s.journey, s.step, c.consent,"
                        " coalesce((SELECT x.reason FROM suppressions x WHERE x.address = lower(s.to_address)),"
                        "  CASE WHEN lower(c.email) = lower(s.to_address) THEN c.suppressed END) AS suppressed"
                        " FROM sends s LEFT JOIN customers c ON c.customer_id = s.customer_id"
                        f" WHERE s.status = 'sending' AND {due}"
                        " ORDER BY s.lease_until, s.send_id LIMIT :n FOR UPDATE OF s SKIP LOCKED"
                    ),
                    {"n": limit},
                )
            ).all()
            skipped: dict[int, str] = {}
            for row in rows:
                journey = self.journeys.get(row.journey)
                if row.suppressed:
                    skipped[row.send_id] = f"suppressed:{row.suppressed}"
                elif journey is not None and row.consent not in journey.consent:
                    skipped[row.send_id] = f"consent:{row.consent or 'unknown'}"
                else:
                    outgoing.append(Outgoing(row.send_id, row.to_address, bytes(row.message), row.journey, row.step))
                    continue
                metrics.SENDS.labels(journey=row.journey, step=str(row.step),
                                     result=f"skipped:{skipped[row.send_id].split(':')[0]}").inc()
            if outgoing:
                await conn.execute(
                    text("UPDATE sends SET lease_until = now() + make_interval(secs => :s), next_attempt_at = NULL"
                         " WHERE send_id = ANY(:ids)"),
                    {"s": self.settings.send_lease_seconds, "ids": [o.send_id for o in outgoing]},
                )
            for send_id, reason in skipped.items():
                await conn.execute(
                    update(sends).where(sends.c.send_id == send_id)
                    .values(status="skipped", reason=reason, lease_until=None, next_attempt_at=None)
                )
        return outgoing


async def suppress(conn: AsyncConnection, address: str, reason: str, at: datetime) -> bool:
    """Never send to `address` again (lower-cased); the first reason stays. Returns whether it is new."""
    result = await conn.execute(
        text("INSERT INTO suppressions (address, reason, suppressed_at) VALUES (lower(:a), :r, :t)"
             " ON CONFLICT (address) DO NOTHING"),
        {"a": address, "r": reason, "t": at},
    )
    return bool(result.rowcount)


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


