"""What a claim of due steps writes: its send rows, and each run moved to its next step, completed
or ended. (The 250s after SMTP are recorded by services/dispatcher/recording.py.)"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.core.journeys import Journey, Run, SendAudience
from lifecycle.db.schema import journey_runs, sends
from services.dispatcher import metrics
from services.dispatcher.rendering import Composed, ComposeFailure
from services.dispatcher.sql import INSERT_SENDS, MOVE_RUNS_ON, SEND_COLUMNS
from services.dispatcher.store_base import Outgoing, StoreBase, _Claim, _Planned, count

log = logging.getLogger("lifecycle.dispatcher")


class ClaimWrites(StoreBase):
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
                                         claim.lease_deadline, SendAudience.of(plan.journey), email.signed))
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
                count(metrics.RUNS_ENDED.labels(journey=run.journey, outcome="completed"))

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
        count(metrics.RUNS_ENDED.labels(journey=run.journey, outcome=status))
