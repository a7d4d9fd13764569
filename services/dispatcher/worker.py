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
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from datetime import datetime, time, timedelta
from time import monotonic
from typing import Any, TypeVar

from sqlalchemy import func, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.clock import Clock
from lifecycle.consuming import is_transient
from lifecycle.core.journeys import (
    Defer,
    ExitRun,
    Journey,
    Recipient,
    RecordClick,
    Run,
    SendAudience,
    SendFacts,
    SendNow,
    SendPolicy,
    SendStep,
    StartRun,
    decide_step,
    on_trigger,
    still_wanted,
)
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.db.locks import DISPATCHER_LOCKS, lock_customers
from lifecycle.db.queries import CUSTOMER_SUPPRESSION_SQL, PENDING_FENCES_SQL
from lifecycle.db.schema import journey_runs, processed_triggers, sends
from lifecycle.journey_catalog import JourneyCatalog
from lifecycle.settings import Settings
from lifecycle.smtp import retry_delay
from lifecycle.tokens import SigningKeys
from services.dispatcher import metrics, offers
from services.dispatcher.compose import MessageSpec
from services.dispatcher.rendering import Composed, ComposeFailure, Renderer

log = logging.getLogger("lifecycle.dispatcher")

T = TypeVar("T")

# Who may receive what, per customer of a claim: profile, consent, suppression, engagement, the
# frequency cap's count (an index serves it: sends_customer_marketing_recent), pending opt-outs.
RECIPIENTS_SQL = (
    "SELECT c.customer_id, c.state -> 'traits' AS traits, c.consent, c.email,"
    f" {CUSTOMER_SUPPRESSION_SQL} AS suppressed, c.last_engagement_at,"
    " (SELECT min(s.sent_at) FROM sends s WHERE s.customer_id = c.customer_id"
    "  AND s.marketing AND s.status = 'sent') AS first_marketing,"
    " (SELECT count(*) FROM sends s WHERE s.customer_id = c.customer_id AND s.marketing"
    "  AND s.status IN ('sent', 'sending') AND s.sent_at > :since) AS recent,"
    f" {PENDING_FENCES_SQL} AS fences"
    " FROM customers c WHERE c.customer_id = ANY(:ids)"
)

# Right before SMTP, for a group of sends: still ours? and the customer and the run as they stand now.
RECHECK_SQL = (
    "SELECT p.send_id, (s.status = 'sending' AND s.lease_token = p.token) AS held, r.status AS run_status,"
    " c.consent, c.email, c.state -> 'traits' -> 'unsubscribed_categories' AS categories,"
    " coalesce((SELECT x.reason FROM suppressions x WHERE x.address = lower(s.to_address)),"
    "  CASE WHEN lower(c.email) = lower(s.to_address) THEN c.suppressed END) AS suppressed,"
    f" {PENDING_FENCES_SQL} AS fences"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[])) AS p(send_id, token)"
    " JOIN sends s ON s.send_id = p.send_id"
    " LEFT JOIN journey_runs r ON r.run_id = s.run_id"
    " LEFT JOIN customers c ON c.customer_id = s.customer_id"
)


# A claim's sends in one statement over arrays (compiled and prepared once, whatever the claim's
# size); a run whose step has its send already gets none (ON CONFLICT), as before.
SEND_COLUMNS = ("run_id", "step", "customer_id", "journey", "marketing", "status", "reason", "message_id",
                "to_address", "subject", "message", "due_at", "created_at", "sent_at", "attempts", "variant",
                "links", "category", "lease_token")
_SEND_TYPES = ("bigint", "int", "text", "text", "boolean", "text", "text", "text", "text", "text", "bytea",
               "timestamptz", "timestamptz", "timestamptz", "int", "text", "text", "text", "uuid")
INSERT_SENDS = text(
    f"INSERT INTO sends ({', '.join(SEND_COLUMNS)}, lease_until)"
    f" SELECT {', '.join('u.links::jsonb' if c == 'links' else 'u.' + c for c in SEND_COLUMNS)},"
    " CASE WHEN u.status = 'sending' THEN now() + make_interval(secs => :lease) END"
    " FROM unnest("
    + ", ".join(f"CAST(:{c} AS {t}[])" for c, t in zip(SEND_COLUMNS, _SEND_TYPES, strict=True))
    + f") AS u({', '.join(SEND_COLUMNS)})"
    " ON CONFLICT DO NOTHING RETURNING run_id, send_id"
)
# Runs to their next step (status active) or completed (ended_at set, no step, no due time).
MOVE_RUNS_ON = text(
    "UPDATE journey_runs r SET status = p.status, step_index = p.step_index, due_at = p.due_at,"
    " version_id = coalesce(p.version_id, r.version_id), step_id = coalesce(p.step_id, r.step_id),"
    " ended_at = p.ended_at, exit_reason = NULL"
    " FROM unnest(CAST(:run_id AS bigint[]), CAST(:status AS text[]), CAST(:step_index AS int[]),"
    " CAST(:due_at AS timestamptz[]), CAST(:version_id AS bigint[]), CAST(:step_id AS text[]),"
    " CAST(:ended_at AS timestamptz[])) AS p(run_id, status, step_index, due_at, version_id, step_id, ended_at)"
    " WHERE r.run_id = p.run_id"
)

# The 250s of a batch, each row fenced by the token of the claim that sent it.
MARK_SENT_SQL = (
    "UPDATE sends s SET status = 'sent', delivered_at = now(), lease_until = NULL, next_attempt_at = NULL,"
    " attempts = s.attempts + 1"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[])) AS p(send_id, token)"
    " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"
    " RETURNING s.send_id"
)


@dataclass(frozen=True)
class _Claim:
    token: str  # fencing token of this claim's sends
    lease_deadline: float  # monotonic() when their lease may run out
    now: datetime


@dataclass(frozen=True)
class _Planned:
    """A run whose due step sends an email, decided, waiting for the email to be composed."""

    run: Run
    journey: Journey
    version_id: int | None
    index: int
    step: SendStep
    decision: SendNow
    values: dict[str, Any]  # the send row so far
    spec: MessageSpec


@dataclass(frozen=True)
class Outgoing:
    send_id: int
    to_address: str
    message: bytes
    journey: str
    step: int
    customer_id: str
    lease_token: str  # the claim's fencing token: every change after SMTP names it
    lease_deadline: float  # monotonic() by which our lease may have run out
    audience: SendAudience  # what the run's journey version accepts (checked again before SMTP)


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
        version_id=row.version_id,
        step_id=row.step_id,
    )


class DispatcherStore:
    def __init__(self, settings: Settings, engine: AsyncEngine, clock: Clock, catalog: JourneyCatalog,
                 renderer: Renderer) -> None:
        self.settings = settings
        self.engine = engine
        self.clock = clock
        self.catalog = catalog
        self.renderer = renderer
        self.policy = send_policy(settings)
        self.keys = SigningKeys.from_settings(settings)

    async def _run_journeys(self, conn: AsyncConnection, runs: list[Run],
                            current: dict[str, tuple[int, Journey]]) -> dict[int, tuple[int | None, Journey | None]]:
        """Per run: (version_id, journey) of the version it runs on. A run from before versions existed
        takes the current version of its journey."""
        versions = await self.catalog.versions(conn, {r.version_id for r in runs if r.version_id is not None})
        found: dict[int, tuple[int | None, Journey | None]] = {}
        for run in runs:
            if run.version_id is not None:
                found[run.run_id] = (run.version_id, versions.get(run.version_id))
            else:
                version_id, journey = current.get(run.journey, (None, None))
                found[run.run_id] = (version_id, journey)
        return found

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
            rows = (
                await conn.execute(
                    text("SELECT * FROM journey_runs WHERE customer_id = ANY(:ids) ORDER BY customer_id, run_id"
                         " FOR UPDATE"),
                    {"ids": customer_ids},
                )
            ).all()
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
            await conn.execute(
                text("UPDATE journey_runs SET clicks = clicks || CAST(:c AS jsonb) WHERE run_id = :r"),
                {"c": json.dumps([click]), "r": action.run_id},
            )
            for run in customer_runs:
                if run.run_id == action.run_id:
                    run.clicks.append(click)

    async def claim_due_steps(self, limit: int) -> list[Outgoing]:
        """Decide every step due by now; record sends and skips; return what to hand to SMTP.

        Three passes in one transaction: decide each run (skips, deferrals and ends are written at
        once), compose every email of the claim together in the render workers, then write each
        send and its run's next step. Each run's writes are in a savepoint: one that cannot be
        processed (an unusable journey version, a bug) becomes `failed` with the reason, and the
        rest of the batch goes on."""
        async with self.engine.begin() as conn:
            now = await self.clock.now()
            claimed_at = monotonic()  # before the lease starts in the database: a safe deadline
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
            runs = [_run_from_row(row) for row in rows]
            current = await self.catalog.current(conn)
            by_run = await self._run_journeys(conn, runs, current)
            recipients = await self._recipients(conn, sorted({r.customer_id for r in rows}), now)
            claim = _Claim(str(uuid.uuid4()), claimed_at + self.settings.send_lease_seconds, now)
            planned: list[_Planned] = []
            for row, run in zip(rows, runs, strict=True):
                found = await self._isolated(conn, row.customer_id, run, now, self._plan(
                    conn, row.customer_id, run, by_run[run.run_id], recipients, claim))
                if isinstance(found, _Planned):
                    planned.append(found)
            started = monotonic()
            composed = await self.renderer.compose([p.spec for p in planned]) if planned else []
            if planned:
                metrics.RENDER_SECONDS.observe(monotonic() - started)
            done = list(zip(planned, composed, strict=True))
            try:
                async with conn.begin_nested():
                    return await self._record(conn, done, claim)
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.warning("writing the claim's sends together failed (%s: %s); writing them run by run",
                            type(exc).__name__, exc)
            outgoing: list[Outgoing] = []
            for plan, email in done:
                sent = await self._isolated(conn, str(plan.values["customer_id"]), plan.run, now,
                                            self._record(conn, [(plan, email)], claim))
                outgoing.extend(sent or [])
        return outgoing

    async def _isolated(self, conn: AsyncConnection, customer_id: str, run: Run, now: datetime,
                        work: Awaitable[T]) -> T | None:
        """`work` in a savepoint; a run it fails on (not for a transient reason) is marked failed."""
        try:
            async with conn.begin_nested():
                return await work
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("run %d of %s could not be processed; it is marked failed", run.run_id,
                          run.journey, extra={"customer_id": customer_id, "journey": run.journey})
            await self._end_run(conn, run, "failed", f"error: {type(exc).__name__}: {exc}"[:500], now)
            return None

    async def _plan(self, conn: AsyncConnection, customer_id: str, run: Run,
                    version: tuple[int | None, Journey | None],
                    recipients: dict[str, tuple[dict[str, Any], Recipient]], claim: _Claim) -> _Planned | None:
        """Decide the run's due step. A skip, a deferral or an end is written now; an email to
        compose comes back as a plan."""
        now = claim.now
        version_id, journey = version
        if journey is None:
            reason = "journey_removed" if version_id is None else "version_unusable"
            await self._end_run(conn, run, "exited" if version_id is None else "failed", reason, now)
            return None
        index = journey.index_of(run.step_id) if run.step_id else run.step_index
        try:
            step = journey.send_step(index if index is not None else -1)
        except ValueError:
            await self._end_run(conn, run, "exited", f"step_removed:{run.step_id or run.step_index}", now)
            return None
        assert index is not None
        run.step_index = index
        profile, recipient = recipients.get(customer_id, ({}, _NOBODY))
        decision = decide_step(journey, run, recipient, customer_id, now, self.policy)
        if isinstance(decision, Defer):
            # quiet hours: the same step falls due again when they end; nothing is recorded as sent
            await conn.execute(update(journey_runs).where(journey_runs.c.run_id == run.run_id)
                               .values(due_at=decision.until, version_id=version_id, step_id=step.id))
            metrics.SENDS.labels(journey=journey.name, step=str(step.number), result="deferred").inc()
            return None
        message_id = self._message_id(run.run_id, step.number)
        assert run.due_at is not None
        values: dict[str, Any] = {
            "run_id": run.run_id, "step": step.number, "customer_id": customer_id,
            "journey": journey.name, "marketing": journey.marketing, "message_id": message_id,
            "due_at": run.due_at, "created_at": now, "attempts": 0,
        }
        if not isinstance(decision, SendNow):
            values.update(status="skipped", reason=decision.reason)
            metrics.SENDS.labels(journey=journey.name, step=str(step.number),
                                 result=f"skipped:{decision.reason.split(':')[0]}").inc()
            await self._write_step(conn, run, journey, version_id, index, values)
            return None
        assert recipient.email is not None
        extras = await self._extras(conn, journey, run, step, customer_id, decision, now, recipient.timezone)
        if journey.marketing:
            # the frequency cap counts what this batch already decided for the customer
            recipients[customer_id] = (profile, replace(
                recipient, recent_marketing_sends=recipient.recent_marketing_sends + 1))
        spec = MessageSpec(journey=journey.name, step=step.number, template=decision.template,
                           message_id=message_id, to_address=recipient.email,
                           customer={**profile, "customer_id": customer_id},
                           context=run.context, extras=extras, date=now)
        return _Planned(run, journey, version_id, index, step, decision, values, spec)

    async def _record(self, conn: AsyncConnection, done: list[tuple[_Planned, Composed | ComposeFailure]],
                      claim: _Claim) -> list[Outgoing]:
        """Write the composed sends (`sending`, leased under the claim's token) and the template
        failures, then move each run on: two statements for the whole claim."""
        rows: list[dict[str, Any]] = []
        for plan, email in done:
            journey, decision = plan.journey, plan.decision
            values = {**plan.values, "variant": decision.variant, "category": journey.category,
                      "reason": None, "to_address": None, "subject": None, "message": None, "sent_at": None,
                      "links": [], "lease_token": None}
            if isinstance(email, ComposeFailure):
                # one broken template must not hold back the batch: recorded, visible, never sent
                values.update(status="failed", reason=f"template: {email.message}"[:500])
            else:
                values.update(status="sending", to_address=plan.spec.to_address, subject=email.subject,
                              message=email.message, links=email.links, sent_at=claim.now,
                              lease_token=claim.token)
            rows.append(values)
        params: dict[str, Any] = {c: [row[c] for row in rows] for c in SEND_COLUMNS}
        params["links"] = [json.dumps(links) for links in params["links"]]
        # leases are about process liveness: wall time from the database, even on the virtual clock
        params["lease"] = float(self.settings.send_lease_seconds)
        inserted: dict[int, int] = {run: send for run, send in (await conn.execute(INSERT_SENDS, params)).all()}
        await self._move_on(conn, [(plan.run, plan.journey, plan.version_id, plan.index) for plan, _ in done],
                            claim.now)
        outgoing: list[Outgoing] = []
        for plan, email in done:
            if isinstance(email, ComposeFailure):  # counted once written (a failed batch is written again)
                log.error("template failed, step not sent: %s", email, extra={
                    "customer_id": plan.values["customer_id"], "journey": plan.journey.name,
                    "step": plan.step.number})
                metrics.SENDS.labels(journey=plan.journey.name, step=str(plan.step.number), result="failed").inc()
            send_id = inserted.get(plan.run.run_id)
            if send_id is not None and isinstance(email, Composed):
                outgoing.append(Outgoing(send_id, plan.spec.to_address, email.message, plan.journey.name,
                                         plan.step.number, str(plan.values["customer_id"]), claim.token,
                                         claim.lease_deadline, SendAudience.of(plan.journey)))
        return outgoing

    async def _move_on(self, conn: AsyncConnection, runs: list[tuple[Run, Journey, int | None, int]],
                       now: datetime) -> None:
        """Each run to its next send step, or completed after its last: one statement."""
        moves: list[tuple[int, str, int | None, datetime | None, int | None, str | None, datetime | None]] = []
        for run, journey, version_id, index in runs:
            assert run.due_at is not None
            following = journey.next_send(index, run.due_at)
            if following is None:
                moves.append((run.run_id, "completed", None, None, None, None, now))
            else:
                next_index, due_at = following
                moves.append((run.run_id, "active", next_index, due_at, version_id,
                              journey.send_step(next_index).id, None))
        await conn.execute(MOVE_RUNS_ON, {name: [move[i] for move in moves] for i, name in enumerate(
            ("run_id", "status", "step_index", "due_at", "version_id", "step_id", "ended_at"))})
        for (run, _, _, _), move in zip(runs, moves, strict=True):
            if move[1] == "completed":
                metrics.RUNS_ENDED.labels(journey=run.journey, outcome="completed").inc()

    async def _write_step(self, conn: AsyncConnection, run: Run, journey: Journey, version_id: int | None,
                          index: int, values: dict[str, Any]) -> int | None:
        """The send row of the run's step (None if the step had one already), then the run moves on."""
        send_id: int | None = (
            await conn.execute(insert(sends).values(values).on_conflict_do_nothing().returning(sends.c.send_id))
        ).scalar()
        await self._move_on(conn, [(run, journey, version_id, index)], values["created_at"])
        return send_id

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
            await conn.execute(text(RECIPIENTS_SQL),
                               {"ids": customer_ids, "since": now - timedelta(hours=self.settings.frequency_cap_hours)})
        ).all()
        found: dict[str, tuple[dict[str, Any], Recipient]] = {}
        for row in rows:
            traits: dict[str, Any] = dict(row.traits or {})
            categories = list(traits.pop("unsubscribed_categories", None) or [])
            pending = list(row.fences or [])
            # an opt-out the API acknowledged counts before the stager has applied it
            consent = "opted_out" if "*" in pending else row.consent
            found[row.customer_id] = (
                traits,
                Recipient(row.email, consent, row.suppressed, row.first_marketing, row.last_engagement_at,
                          tuple(categories + [c for c in pending if c != "*"]), traits.get("timezone"),
                          int(row.recent)),
            )
        return found

    def _message_id(self, run_id: int, step: int) -> str:
        # The key that signs links: with only LIFECYCLE_SIGNING_SECRET set it is that secret, so
        # Message-IDs stay what they were before key rotation existed.
        digest = hashlib.sha256(f"{self.keys.signing_secret}:{run_id}:{step}".encode()).hexdigest()[:16]
        domain = self.settings.mail_from.rsplit("@", 1)[-1].strip(">") or "lifecycle.local"
        return f"<{run_id}.{step}.{digest}@{domain}>"

    # --- right before SMTP ----------------------------------------------------------------------

    async def recheck(self, items: list[Outgoing]) -> tuple[list[Outgoing], list[tuple[Outgoing, str]]]:
        """One query for a group about to go: (still to send, skipped with the reason). A send whose
        lease another dispatcher now holds is in neither: it is theirs. The skips are recorded."""
        if not items:
            return [], []
        rows = {
            row.send_id: row for row in (await self._read(
                RECHECK_SQL, {"ids": [i.send_id for i in items], "tokens": [i.lease_token for i in items]}))
        }
        go: list[Outgoing] = []
        skipped: list[tuple[Outgoing, str]] = []
        for item in items:
            row = rows.get(item.send_id)
            if row is None or not row.held:
                log.info("send %d is no longer ours (lease taken over): not sent by this dispatcher", item.send_id)
                metrics.LEASES_LOST.inc()
                continue
            reason = still_wanted(item.audience, SendFacts(
                item.to_address, row.run_status, row.consent, row.email, row.suppressed,
                tuple(row.categories or ()), tuple(row.fences or ())))
            if reason is None:
                go.append(item)
            else:
                skipped.append((item, reason))
        if skipped:
            async with self.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE sends s SET status = 'skipped', reason = p.reason, lease_until = NULL,"
                         " next_attempt_at = NULL"
                         " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]), CAST(:reasons AS text[]))"
                         " AS p(send_id, token, reason)"
                         " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"),
                    {"ids": [i.send_id for i, _ in skipped], "tokens": [i.lease_token for i, _ in skipped],
                     "reasons": [r for _, r in skipped]},
                )
            for item, reason in skipped:
                log.info("send %d to %s not sent: %s", item.send_id, item.to_address, reason)
                metrics.SENDS.labels(journey=item.journey, step=str(item.step),
                                     result=f"skipped:{reason.split(':')[0]}").inc()
        return go, skipped

    async def _read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())

    # --- after SMTP: each outcome is one transaction, fenced by the claim's token (docs/sending.md) --

    async def _update_held(self, item: Outgoing, values: str, params: dict[str, Any] | None = None) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text(f"UPDATE sends SET {values} WHERE send_id = :id AND lease_token = :token AND status = 'sending'"),
                {"id": item.send_id, "token": item.lease_token, **(params or {})},
            )
        return bool(result.rowcount)

    async def mark_sent(self, item: Outgoing) -> bool:
        """After the server's 250: False when the row was no longer ours (another dispatcher took it over)."""
        return item.send_id in await self.mark_sent_many([item])

    async def mark_sent_many(self, items: list[Outgoing]) -> set[int]:
        """The 250s of several sends in one transaction, each fenced by its own claim's token.

        Returns the send ids recorded; a send missing from it was no longer ours. The time between a
        250 and this commit is the window in which a crash sends twice (docs/sending.md)."""
        if not items:
            return set()
        async with self.engine.begin() as conn:
            rows = await conn.execute(
                text(MARK_SENT_SQL),
                {"ids": [i.send_id for i in items], "tokens": [i.lease_token for i in items]},
            )
            return set(rows.scalars().all())

    async def mark_retry(self, item: Outgoing, reason: str) -> str | None:
        """A 4xx or a lost connection: due again after a backoff that grows with the attempts, as a row
        (status stays `sending`, `next_attempt_at` = `lease_until`), not a sleep; `failed` after
        smtp_max_attempts. Returns the new status, None when the row was no longer ours."""
        async with self.engine.begin() as conn:
            attempts = (
                await conn.execute(
                    text("SELECT attempts FROM sends WHERE send_id = :id AND lease_token = :token"
                         " AND status = 'sending' FOR UPDATE"),
                    {"id": item.send_id, "token": item.lease_token},
                )
            ).scalar()
            if attempts is None:
                return None
            attempts += 1
            if attempts >= self.settings.smtp_max_attempts:
                await conn.execute(
                    update(sends).where(sends.c.send_id == item.send_id)
                    .values(status="failed", reason=f"gave up after {attempts} attempts: {reason}"[:500],
                            attempts=attempts, lease_until=None, next_attempt_at=None)
                )
                return "failed"
            delay = retry_delay(attempts, self.settings.smtp_retry_base_seconds, self.settings.smtp_retry_max_seconds)
            await conn.execute(
                text(
                    "UPDATE sends SET attempts = :a, reason = :r,"
                    " next_attempt_at = now() + make_interval(secs => :d),"
                    " lease_until = now() + make_interval(secs => :d)"
                    " WHERE send_id = :id"
                ),
                {"a": attempts, "r": reason[:500], "d": delay, "id": item.send_id},
            )
        return "sending"

    async def mark_bounced(self, item: Outgoing, reason: str) -> bool:
        """A 5xx to RCPT or DATA: the send fails and the address is suppressed, in one transaction.
        Returns whether the address was newly suppressed."""
        at = await self.clock.now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                text("UPDATE sends SET status = 'failed', reason = :r, attempts = attempts + 1, lease_until = NULL,"
                     " next_attempt_at = NULL WHERE send_id = :id AND lease_token = :token AND status = 'sending'"),
                {"r": reason[:500], "id": item.send_id, "token": item.lease_token},
            )
            if not result.rowcount:
                return False
            return await suppress(conn, item.to_address, reason, at)

    async def mark_failed(self, item: Outgoing, reason: str) -> bool:
        """This message can never go (the address is not to blame): failed, nothing suppressed."""
        return await self._update_held(
            item, "status = 'failed', reason = :r, attempts = attempts + 1, lease_until = NULL,"
                  " next_attempt_at = NULL", {"r": reason[:500]})

    async def postpone_sends(self, delays: list[tuple[Outgoing, float]]) -> None:
        """Sends this round left no time for (rate limits, the lease running out): due again later,
        no attempt counted."""
        if not delays:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE sends s SET next_attempt_at = now() + make_interval(secs => p.delay),"
                    " lease_until = now() + make_interval(secs => p.delay)"
                    " FROM unnest(CAST(:ids AS bigint[]), CAST(:tokens AS uuid[]), CAST(:delays AS float8[]))"
                    " AS p(send_id, token, delay)"
                    " WHERE s.send_id = p.send_id AND s.lease_token = p.token AND s.status = 'sending'"
                ),
                {"ids": [i.send_id for i, _ in delays], "tokens": [i.lease_token for i, _ in delays],
                 "delays": [d for _, d in delays]},
            )

    async def claim_due_retries(self, limit: int) -> list[Outgoing]:
        """Sends whose retry (or postponed turn) is due: take them for this attempt."""
        return await self._take_sends("s.next_attempt_at IS NOT NULL AND s.lease_until <= now()", limit)

    async def reclaim_stale_sends(self, limit: int) -> list[Outgoing]:
        """Sends whose lease ran out during an attempt (a dispatcher died between claim and 250 or
        commit): take them over; they go again with the same Message-ID."""
        return await self._take_sends("s.next_attempt_at IS NULL AND s.lease_until < now()", limit)

    async def _take_sends(self, due: str, limit: int) -> list[Outgoing]:
        """Lease `sending` rows that are `due` under a new token: whoever held them before can no longer
        change them. Whether each may still go is checked right before its SMTP transaction."""
        async with self.engine.begin() as conn:
            taken_at = monotonic()
            token = str(uuid.uuid4())
            rows = (
                await conn.execute(
                    text(
                        "WITH due AS (SELECT s.send_id FROM sends s WHERE s.status = 'sending' AND "
                        f"{due} ORDER BY s.lease_until, s.send_id LIMIT :n FOR UPDATE SKIP LOCKED)"
                        " UPDATE sends s SET lease_until = now() + make_interval(secs => :lease),"
                        " next_attempt_at = NULL, lease_token = :token FROM due WHERE s.send_id = due.send_id"
                        " RETURNING s.send_id, s.to_address, s.message, s.journey, s.step, s.customer_id, s.run_id"
                    ),
                    {"n": limit, "lease": self.settings.send_lease_seconds, "token": token},
                )
            ).all()
            if not rows:
                return []
            run_versions: dict[int, int | None] = dict((await conn.execute(
                text("SELECT run_id, version_id FROM journey_runs WHERE run_id = ANY(:ids)"),
                {"ids": [row.run_id for row in rows]})).all())
            versions = await self.catalog.versions(conn, {v for v in run_versions.values() if v is not None})
            current = await self.catalog.current(conn)
        outgoing: list[Outgoing] = []
        for row in sorted(rows, key=lambda r: r.send_id):
            version_id = run_versions.get(row.run_id)
            journey = versions.get(version_id) if version_id is not None else current.get(row.journey, (0, None))[1]
            # a version no longer known sends to nobody it would not have sent to before: opted-in only
            audience = SendAudience.of(journey) if journey is not None else SendAudience(("opted_in",), True, "news")
            outgoing.append(Outgoing(row.send_id, row.to_address, bytes(row.message), row.journey, row.step,
                                     row.customer_id, token, taken_at + self.settings.send_lease_seconds, audience))
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


