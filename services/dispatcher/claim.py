"""Claiming the due steps of journey runs: each run's step decided (in a savepoint of its own),
the claim's emails composed together, then written (services/dispatcher/writes.py)."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, TypeVar

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.consuming import is_transient
from lifecycle.core.journeys import Defer, Journey, Recipient, Run, SendNow, SendStep, decide_step
from lifecycle.db.schema import journey_runs
from services.dispatcher import metrics, offers
from services.dispatcher.compose import MessageSpec
from services.dispatcher.sql import DUE_RUNS, RECIPIENTS_SQL
from services.dispatcher.store_base import _PENDING_COUNTS, Outgoing, _Claim, _Planned, _run_from_row, count
from services.dispatcher.writes import ClaimWrites

log = logging.getLogger("lifecycle.dispatcher")

T = TypeVar("T")

_NOBODY = Recipient(None, None, None, None, None)


class ClaimSteps(ClaimWrites):
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
            rows = (await conn.execute(DUE_RUNS, {"now": now, "n": limit})).all()
            if not rows:
                return []
            runs = [_run_from_row(row) for row in rows]
            current = await self.catalog.current(conn)
            by_run = await self._run_journeys(conn, runs, current)
            recipients = await self._recipients(conn, sorted({r.customer_id for r in rows}), now)
            claim = _Claim(str(uuid.uuid4()), claimed_at + self.settings.send_lease_seconds, now)
            planned = await self._plan_all(conn, list(zip(rows, runs, strict=True)), by_run, recipients, claim)
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

    async def _plan_all(self, conn: AsyncConnection, due: list[tuple[Any, Run]],
                        by_run: dict[int, tuple[int | None, Journey | None]],
                        recipients: dict[str, tuple[dict[str, Any], Recipient]], claim: _Claim) -> list[_Planned]:
        """Every run's step decided in one savepoint. If a run fails there, that is undone and the runs
        are decided again one by one, each in a savepoint of its own, so that the one failing is marked
        failed and the others go on (a savepoint per run costs two statements a run, every time)."""
        pending: list[Callable[[], None]] = []
        reset = _PENDING_COUNTS.set(pending)
        try:
            async with conn.begin_nested():
                # a copy: the frequency cap's counts of this attempt must not stay if it is undone
                together = dict(recipients)
                planned = [found for row, run in due if (found := await self._plan(
                    conn, row.customer_id, run, by_run[run.run_id], together, claim)) is not None]
        except Exception as exc:
            if is_transient(exc):
                raise
            log.warning("deciding the claim's steps together failed (%s: %s); deciding them run by run",
                        type(exc).__name__, exc)
        else:
            recipients.update(together)
            for increment in pending:
                increment()
            return planned
        finally:
            _PENDING_COUNTS.reset(reset)
        planned = []
        for row, run in due:
            found = await self._isolated(conn, row.customer_id, run, claim.now, self._plan(
                conn, row.customer_id, run, by_run[run.run_id], recipients, claim))
            if isinstance(found, _Planned):
                planned.append(found)
        return planned

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
            count(metrics.SENDS.labels(journey=journey.name, step=str(step.number), result="deferred"))
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
            count(metrics.SENDS.labels(journey=journey.name, step=str(step.number),
                                       result=f"skipped:{decision.reason.split(':')[0]}"))
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
