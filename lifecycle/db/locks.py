"""Per-customer advisory locks: one transaction at a time works on a customer, even one with no row yet.

Row locks cannot cover a customer who does not exist yet: two stagers (or two dispatchers) handling the
same new customer during a rebalance would both insert, and the second would overwrite the first. A
transaction-scoped advisory lock on the customer id serializes them. Ids are locked in sorted order,
so two transactions never wait on each other in a circle.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# the first key of the two-key form: each service has its own space (the one-key locks never overlap these)
STAGER_LOCKS = 1
DISPATCHER_LOCKS = 2


async def lock_customers(conn: AsyncConnection, space: int, customer_ids: Iterable[str]) -> None:
    """Wait for every customer's lock, in sorted order; held until the transaction ends."""
    ids = sorted(set(customer_ids))
    if ids:
        await conn.execute(
            text("SELECT count(pg_advisory_xact_lock(:space, hashtext(id))) FROM unnest(CAST(:ids AS text[])) AS id"),
            {"space": space, "ids": ids},
        )


async def try_lock_customers(conn: AsyncConnection, space: int, customer_ids: Iterable[str]) -> set[str]:
    """The customers whose lock was free (now held until the transaction ends); the others are left alone."""
    ids = sorted(set(customer_ids))
    if not ids:
        return set()
    rows = await conn.execute(
        text("SELECT id FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS t(id, n)"
             " WHERE pg_try_advisory_xact_lock(:space, hashtext(id)) ORDER BY n"),
        {"space": space, "ids": ids},
    )
    return set(rows.scalars().all())
