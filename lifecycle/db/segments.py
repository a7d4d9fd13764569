"""Segments in PostgreSQL: a checked filter (lifecycle/core/segments.py) compiled to one condition
over `customers c`, the audience rules every campaign obeys, and the preview (count and sample).

Compiling is pure string building with named parameters, for `now` (the clock's, so the virtual clock
works) and the shop's default locale. Every condition is false, never NULL, for a customer it cannot
say anything about (no order, no locale...), so `not` is the exact complement of what it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.core.segments import All, AnyOf, Filter, Not, OneOf, Products, Range, Recency, TraitIs, normal_locale
from lifecycle.db.queries import CUSTOMER_SUPPRESSION_SQL, PENDING_FENCES_SQL


@dataclass
class _Compiler:
    now: datetime
    default_locale: str
    params: dict[str, Any] = field(default_factory=dict)

    def param(self, value: Any) -> str:
        name = f"s{len(self.params)}"
        self.params[name] = value
        return f":{name}"

    def since(self, span: timedelta) -> str:
        return self.param(self.now - span)

    def sql(self, node: Filter) -> str:
        if isinstance(node, All):  # no part: every customer
            return "(" + " AND ".join(self.sql(p) for p in node.parts) + ")" if node.parts else "true"
        if isinstance(node, AnyOf):
            return "(" + " OR ".join(self.sql(p) for p in node.parts) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.sql(node.part)})"
        # every condition is false, not NULL, where it has nothing to compare: NOT is its complement
        return f"coalesce({self.condition(node)}, false)"

    def condition(self, node: Filter) -> str:
        if isinstance(node, OneOf):
            if node.what == "stage":
                return f"c.stage = ANY({self.param(list(node.values))})"
            if node.what == "consent":
                known = [v for v in node.values if v != "unknown"]
                unknown = " OR c.consent IS NULL" if "unknown" in node.values else ""
                return f"(c.consent = ANY({self.param(known)}){unknown})"
            locale = (f"replace(lower(coalesce(nullif(c.state -> 'traits' ->> 'locale', ''),"
                      f" {self.param(self.default_locale)})), '_', '-')")
            exact = [v for v in node.values if "-" in v]
            languages = [v for v in node.values if "-" not in v]
            return (f"({locale} = ANY({self.param(exact)})"
                    f" OR split_part({locale}, '-', 1) = ANY({self.param(languages)}))")
        if isinstance(node, Range):
            column = {"orders_count": "c.orders_count", "total_spent": "c.total_spent",
                      "average_order_value": "(c.total_spent / nullif(c.orders_count, 0))"}[node.what]
            tests = []
            # numeric bounds: any JSON number compares exactly, 1e300 as well as 0.1
            if node.gte is not None:
                tests.append(f"{column} >= CAST({self.param(node.gte)} AS numeric)")
            if node.lte is not None:
                tests.append(f"{column} <= CAST({self.param(node.lte)} AS numeric)")
            return "(" + " AND ".join(tests) + ")"
        if isinstance(node, Recency):
            if node.what == "last_order_before":
                return f"c.last_order_at < {self.since(node.span)}"
            column = {"last_order_within": "c.last_order_at", "engaged_within": "c.last_engagement_at",
                      "signed_up_within": "CAST(c.state ->> 'signed_up_at' AS timestamptz)"}[node.what]
            return f"{column} >= {self.since(node.span)}"
        if isinstance(node, Products):
            ids = self.param(list(node.ids))
            if node.what == "bought_product":
                within = "" if node.within is None else \
                    f" AND CAST(o.value ->> 'placed_at' AS timestamptz) >= {self.since(node.within)}"
                return ("EXISTS (SELECT 1 FROM jsonb_each(coalesce(c.state -> 'orders', '{}'::jsonb)) o,"
                        " jsonb_array_elements(coalesce(o.value -> 'items', '[]'::jsonb)) i"
                        f" WHERE i.value ->> 'product_id' = ANY({ids})"
                        " AND o.value ->> 'placed_at' IS NOT NULL"
                        f" AND NOT coalesce(CAST(o.value ->> 'voided' AS boolean), false){within})")
            within = "" if node.within is None else \
                f" AND CAST(v.value ->> 0 AS timestamptz) >= {self.since(node.within)}"
            return ("EXISTS (SELECT 1 FROM jsonb_each(coalesce(c.state -> 'viewed', '{}'::jsonb)) v"
                    f" WHERE v.key = ANY({ids}){within})")
        if isinstance(node, TraitIs):
            name = self.param(node.name)
            if node.value is None:
                return f"NOT (coalesce(c.state -> 'traits', '{{}}'::jsonb) ? {name})"
            return f"c.state -> 'traits' ->> {name} = {self.param(node.value)}"
        raise TypeError(f"not a filter: {node!r}")


def compile_filter(node: Filter, now: datetime, default_locale: str) -> tuple[str, dict[str, Any]]:
    """(SQL condition over `customers c`, its parameters) for `now`."""
    compiler = _Compiler(now, normal_locale(default_locale))
    return compiler.sql(node), compiler.params


def audience_condition(category: str | None) -> tuple[str, dict[str, Any]]:
    """Who may get a marketing email at all, whatever a filter says: an address, opted in, not
    suppressed, not unsubscribed from `category`, and no opt-out acknowledged by the API and not yet
    applied. Over `customers c`, with the queries' suppression and fence expressions."""
    params: dict[str, Any] = {"audience_category": category or ""}
    return (
        "c.email IS NOT NULL AND c.email <> '' AND c.consent = 'opted_in'"
        f" AND {CUSTOMER_SUPPRESSION_SQL} IS NULL"
        " AND NOT (coalesce(c.state -> 'traits' -> 'unsubscribed_categories', '[]'::jsonb) ? :audience_category)"
        f" AND NOT ({PENDING_FENCES_SQL} && ARRAY['*', :audience_category])"
    ), params


@dataclass(frozen=True)
class Preview:
    """How many customers a filter matches, how many of them may get a campaign (`audience`), and some of
    the latter."""

    matched: int
    audience: int
    sample: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"matched": self.matched, "audience": self.audience, "sample": self.sample}


async def preview(conn: AsyncConnection, node: Filter, now: datetime, default_locale: str,
                  category: str | None = None, sample: int = 10) -> Preview:
    """Count and sample in one statement each, read-only."""
    condition, params = compile_filter(node, now, default_locale)
    allowed, audience_params = audience_condition(category)
    params = {**params, **audience_params, "sample": sample}
    counts = (await conn.execute(text(
        f"SELECT count(*) AS matched, count(*) FILTER (WHERE {allowed}) AS audience"
        f" FROM customers c WHERE {condition}"), params)).one()
    rows = (await conn.execute(text(
        "SELECT c.customer_id, c.email, c.stage, c.consent, c.state -> 'traits' ->> 'locale' AS locale,"
        " c.state -> 'traits' ->> 'timezone' AS timezone"
        f" FROM customers c WHERE {condition} AND {allowed} ORDER BY c.customer_id LIMIT :sample"), params)).all()
    return Preview(int(counts.matched), int(counts.audience),
                   [{"customer_id": r.customer_id, "email": r.email, "stage": r.stage, "consent": r.consent,
                     "locale": r.locale, "timezone": r.timezone} for r in rows])


async def matching_ids(conn: AsyncConnection, node: Filter, now: datetime, default_locale: str,
                       category: str | None = None, audience_only: bool = False) -> list[str]:
    """The ids of the customers the filter matches (only those a campaign may reach with
    `audience_only`), in id order."""
    condition, params = compile_filter(node, now, default_locale)
    if audience_only:
        allowed, audience_params = audience_condition(category)
        condition, params = f"{condition} AND {allowed}", {**params, **audience_params}
    rows = await conn.execute(text(f"SELECT c.customer_id FROM customers c WHERE {condition}"
                                   " ORDER BY c.customer_id"), params)
    return [str(r[0]) for r in rows]
