"""Sends held under a lease: taken for an attempt (retries due, leases run out), checked right
before SMTP, and each outcome after it, fenced by the token of the claim that holds them."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from time import monotonic
from typing import Any

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.core.journeys import SendAudience, SendFacts, still_wanted
from lifecycle.db.driver import DriverStatement, fetch
from lifecycle.db.schema import sends
from lifecycle.smtp import retry_delay
from services.dispatcher import metrics
from services.dispatcher.sql import (
    FAIL_BOUNCED,
    FAILED_HELD_SQL,
    HELD_ATTEMPTS,
    LEASE_RUN_OUT_SQL,
    MARK_SENT_SQL,
    POSTPONE_SENDS,
    RECHECK_SQL,
    RETRY_DUE_SQL,
    RETRY_LATER,
    RUN_VERSIONS,
    SKIP_SENDS,
    SUPPRESS_ADDRESS,
    TAKE_SENDS_SQL,
    UPDATE_HELD_SQL,
)
from services.dispatcher.store_base import Outgoing, StoreBase

log = logging.getLogger("lifecycle.dispatcher")

# run for every group of emails: on the driver itself (lifecycle/db/driver.py)
_RECHECK = DriverStatement(RECHECK_SQL)
_MARK_SENT = DriverStatement(MARK_SENT_SQL)


class SendLeases(StoreBase):
    # --- right before SMTP ----------------------------------------------------------------------

    async def recheck(self, items: list[Outgoing]) -> tuple[list[Outgoing], list[tuple[Outgoing, str]]]:
        """One query for a group about to go: (still to send, skipped with the reason). A send whose
        lease another dispatcher now holds is in neither: it is theirs. The skips are recorded."""
        if not items:
            return [], []
        rows = {
            row["send_id"]: row for row in await fetch(
                self.engine, _RECHECK, {"ids": [i.send_id for i in items], "tokens": [i.lease_token for i in items]})
        }
        go: list[Outgoing] = []
        skipped: list[tuple[Outgoing, str]] = []
        for item in items:
            row = rows.get(item.send_id)
            if row is None or not row["held"]:
                log.info("send %d is no longer ours (lease taken over): not sent by this dispatcher", item.send_id)
                metrics.LEASES_LOST.inc()
                continue
            reason = still_wanted(item.audience, SendFacts(
                item.to_address, row["run_status"], row["consent"], row["email"], row["suppressed"],
                tuple(row["categories"] or ()), tuple(row["fences"] or ())))
            if reason is None:
                go.append(item)
            else:
                skipped.append((item, reason))
        if skipped:
            async with self.engine.begin() as conn:
                await conn.execute(
                    SKIP_SENDS,
                    {"ids": [i.send_id for i, _ in skipped], "tokens": [i.lease_token for i, _ in skipped],
                     "reasons": [r for _, r in skipped]},
                )
            for item, reason in skipped:
                log.info("send %d to %s not sent: %s", item.send_id, item.to_address, reason)
                metrics.SENDS.labels(journey=item.journey, step=str(item.step),
                                     result=f"skipped:{reason.split(':')[0]}").inc()
        return go, skipped

    # --- after SMTP: each outcome is one transaction, fenced by the claim's token (docs/sending.md) --

    async def _update_held(self, item: Outgoing, values: str, params: dict[str, Any] | None = None) -> bool:
        async with self.autocommit.connect() as conn:
            result = await conn.execute(
                text(UPDATE_HELD_SQL.format(values=values)),
                {"id": item.send_id, "token": item.lease_token, **(params or {})},
            )
        return bool(result.rowcount)

    async def mark_sent(self, item: Outgoing) -> bool:
        """After the server's 250: False when the row was no longer ours (another dispatcher took it over)."""
        return item.send_id in await self.mark_sent_many([item])

    async def mark_sent_many(self, items: list[Outgoing]) -> set[int]:
        """The 250s of several sends in one statement, each fenced by its own claim's token.

        Returns the send ids recorded; a send missing from it was no longer ours. The time between a
        250 and this commit is the window in which a crash sends twice (docs/sending.md)."""
        if not items:
            return set()
        rows = await fetch(self.engine, _MARK_SENT,  # one UPDATE: committed as it returns
                           {"ids": [i.send_id for i in items], "tokens": [i.lease_token for i in items]})
        return {row[0] for row in rows}

    async def mark_retry(self, item: Outgoing, reason: str) -> str | None:
        """A 4xx or a lost connection: due again after a backoff that grows with the attempts, as a row
        (status stays `sending`, `next_attempt_at` = `lease_until`), not a sleep; `failed` after
        smtp_max_attempts. Returns the new status, None when the row was no longer ours."""
        async with self.engine.begin() as conn:
            attempts = (
                await conn.execute(HELD_ATTEMPTS, {"id": item.send_id, "token": item.lease_token})
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
            await conn.execute(RETRY_LATER, {"a": attempts, "r": reason[:500], "d": delay, "id": item.send_id})
        return "sending"

    async def mark_bounced(self, item: Outgoing, reason: str) -> bool:
        """A 5xx to RCPT or DATA: the send fails and the address is suppressed, in one transaction.
        Returns whether the address was newly suppressed."""
        at = await self.clock.now()
        async with self.engine.begin() as conn:
            result = await conn.execute(
                FAIL_BOUNCED, {"r": reason[:500], "id": item.send_id, "token": item.lease_token})
            if not result.rowcount:
                return False
            return await suppress(conn, item.to_address, reason, at)

    async def mark_failed(self, item: Outgoing, reason: str) -> bool:
        """This message can never go (the address is not to blame): failed, nothing suppressed."""
        return await self._update_held(item, FAILED_HELD_SQL, {"r": reason[:500]})

    async def postpone_sends(self, delays: list[tuple[Outgoing, float]]) -> None:
        """Sends this round left no time for (rate limits, the lease running out): due again later,
        no attempt counted."""
        if not delays:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                POSTPONE_SENDS,
                {"ids": [i.send_id for i, _ in delays], "tokens": [i.lease_token for i, _ in delays],
                 "delays": [d for _, d in delays]},
            )

    async def claim_due_retries(self, limit: int) -> list[Outgoing]:
        """Sends whose retry (or postponed turn) is due: take them for this attempt."""
        return await self._take_sends(RETRY_DUE_SQL, limit)

    async def reclaim_stale_sends(self, limit: int) -> list[Outgoing]:
        """Sends whose lease ran out during an attempt (a dispatcher died between claim and 250 or
        commit): take them over; they go again with the same Message-ID."""
        return await self._take_sends(LEASE_RUN_OUT_SQL, limit)

    async def _take_sends(self, due: str, limit: int) -> list[Outgoing]:
        """Lease `sending` rows that are `due` under a new token: whoever held them before can no longer
        change them. Whether each may still go is checked right before its SMTP transaction."""
        async with self.engine.begin() as conn:
            taken_at = monotonic()
            token = str(uuid.uuid4())
            rows = (
                await conn.execute(
                    text(TAKE_SENDS_SQL.format(due=due)),
                    {"n": limit, "lease": self.settings.send_lease_seconds, "token": token},
                )
            ).all()
            if not rows:
                return []
            run_versions: dict[int, int | None] = dict((await conn.execute(
                RUN_VERSIONS, {"ids": [row.run_id for row in rows]})).all())
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
    result = await conn.execute(SUPPRESS_ADDRESS, {"a": address, "r": reason, "t": at})
    return bool(result.rowcount)
