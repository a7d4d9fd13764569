"""Reads shared by the services, the CLI and the scenario runner."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypedDict

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.core.journeys import Journey
from lifecycle.db.schema import journey_runs, sends
from lifecycle.journey_catalog import JourneyCatalog
from lifecycle.settings import Settings

CustomerReader = Callable[[str], Awaitable[dict[str, object] | None]]


class SentMessage(TypedDict):
    """What the click redirect and the open pixel need to know about one email."""

    customer_id: str
    journey: str
    step: int
    variant: str | None
    links: list[dict[str, str]]  # {"name", "url"} in link-index order: the only redirect targets


MessageReader = Callable[[str], Awaitable[SentMessage | None]]


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, the form the API answers with."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# The installation's salt (lifecycle/privacy.py), and salted hashes made with it in SQL alone, so that
# every service and the CLI hash alike.
_SALTED_SHA256 = "encode(sha256(convert_to((SELECT salt FROM privacy_salt WHERE id = 1) || {}, 'UTF8')), 'hex')"
# an erased customer's address in the suppressions: `sha256:<hex>` of its lower case; {address}: an SQL expression
ADDRESS_HASH_SQL = "'sha256:' || " + _SALTED_SHA256.format("lower({address})")


def customer_hash_sql(customer_id: str) -> str:
    """The salted hash an erased customer's id is kept as; `customer_id`: an SQL expression."""
    return _SALTED_SHA256.format(f"'customer:' || {customer_id}")


def address_suppression_sql(address: str) -> str:
    """Why the address (an SQL expression) is suppressed, plainly (a hard bounce) or by its hash (an
    erased customer's); NULL when it is not."""
    hashed = ADDRESS_HASH_SQL.format(address=address)
    return f"(SELECT x.reason FROM suppressions x WHERE x.address IN (lower({address}), {hashed}) LIMIT 1)"


# A customer's suppression: their own (bounce or complaint events), else their address's (SMTP hard bounce,
# an erased customer's). Over `customers c`; the dispatcher's claim and the customer view read it the same way.
CUSTOMER_SUPPRESSION_SQL = f"coalesce(c.suppressed, {address_suppression_sql('c.email')})"


# The categories of the opt-outs the ingest API acknowledged for customer `c` and the stager has not
# applied yet ("*": every marketing email). Once applied, the customer's state says the same.
PENDING_FENCES_SQL = (
    "ARRAY(SELECT f.category FROM consent_fences f WHERE f.customer_id = c.customer_id AND NOT EXISTS ("
    "SELECT 1 FROM processed_events p WHERE p.customer_id = f.customer_id AND p.event_id = f.event_id))"
)


def make_customer_reader(engine: AsyncEngine, settings: Settings | None = None) -> CustomerReader:
    catalog = JourneyCatalog(templates=None)  # the step numbers of each run's own journey version

    async def read(customer_id: str) -> dict[str, object] | None:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text(f"SELECT c.*, {CUSTOMER_SUPPRESSION_SQL} AS suppression FROM customers c"
                         " WHERE c.customer_id = :c"),
                    {"c": customer_id},
                )
            ).first()
            if row is None:
                return None
            runs = (
                await conn.execute(
                    select(journey_runs)
                    .where(journey_runs.c.customer_id == customer_id)
                    .order_by(journey_runs.c.run_id)
                )
            ).all()
            versions = await catalog.versions(conn, {r.version_id for r in runs if r.version_id is not None})
            current = {name: journey for name, (_, journey) in (await catalog.current(conn)).items()}
        journeys = {r.run_id: versions.get(r.version_id) if r.version_id is not None else current.get(r.journey)
                    for r in runs}
        state: dict[str, Any] = row.state
        traits = state.get("traits", {})
        view: dict[str, object] = {
            "customer_id": customer_id,
            "email": traits.get("email"),
            "first_name": traits.get("first_name"),
            "last_name": traits.get("last_name"),
            "locale": traits.get("locale"),
            "timezone": traits.get("timezone"),
            "birthday": traits.get("birthday"),
            "stage": row.stage,
            "consent": row.consent,
            "suppressed": row.suppression,
            "unsubscribed_categories": traits.get("unsubscribed_categories") or [],
            "orders_count": row.orders_count,
            "total_spent": float(row.total_spent),
            "first_order_at": iso(row.first_order_at),
            "last_order_at": iso(row.last_order_at),
            "last_engagement_at": iso(row.last_engagement_at),
            "journeys": [_run_view(r, journeys.get(r.run_id)) for r in runs],
        }
        return view

    return read


def _run_view(run: Any, journey: Journey | None) -> dict[str, object]:
    next_step: int | None = None
    if run.status == "active" and run.step_index is not None and journey is not None:
        with contextlib.suppress(ValueError):  # a step the version no longer has: the dispatcher ends the run
            next_step = journey.send_step(run.step_index).number
    return {
        "journey": run.journey,
        "status": run.status,
        "next_step": next_step,
        "due_at": iso(run.due_at) if run.status == "active" else None,
        "started_at": iso(run.started_at),
        "ended_at": iso(run.ended_at),
        "exit_reason": run.exit_reason,
    }


def make_message_reader(engine: AsyncEngine) -> MessageReader:
    """Looks an email up by its Message-ID (unique in `sends`); None when unknown."""

    async def read(message_id: str) -> SentMessage | None:
        query = select(
            sends.c.customer_id, sends.c.journey, sends.c.step, sends.c.variant, sends.c.links
        ).where(sends.c.message_id == message_id)
        async with engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        links: list[dict[str, str]] = []
        # Keep the positions even for an odd entry: the index in a click token is positional.
        for link in row.links if isinstance(row.links, list) else []:
            if isinstance(link, dict):
                links.append({str(k): str(v) for k, v in link.items() if isinstance(v, str)})
            else:
                links.append({})
        return SentMessage(
            customer_id=row.customer_id, journey=row.journey, step=row.step, variant=row.variant, links=links
        )

    return read
