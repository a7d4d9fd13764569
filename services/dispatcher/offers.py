"""What a send step offers: the customer's tier, a coupon, recommended products (PostgreSQL side, SQL in sql.py)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.core.campaigns import campaign_of
from lifecycle.core.journeys import Journey, Run, SendStep
from lifecycle.core.offers import TierThresholds, new_coupon_code, tier_of
from lifecycle.settings import Settings
from lifecycle.templates.links import product_image_url, product_url
from services.dispatcher.sql import COUPON_OF_STEP, CUSTOMER_SPEND, ISSUE_COUPON, RECOMMENDATIONS


def thresholds(settings: Settings) -> TierThresholds:
    return TierThresholds(settings.tier_silver_spent, settings.tier_silver_orders, settings.tier_gold_spent,
                          settings.tier_gold_orders)


async def customer_tier(conn: AsyncConnection, customer_id: str, settings: Settings) -> str:
    row = (await conn.execute(CUSTOMER_SPEND, {"c": customer_id})).first()
    if row is None:
        return "bronze"
    return tier_of(float(row.total_spent), int(row.orders_count), thresholds(settings))


def end_of_day(moment: datetime, timezone: str | None) -> datetime:
    """23:59:59 of that day in the customer's zone: "valid 3 days" runs to the end of the third day."""
    local = moment.astimezone(ZoneInfo(timezone or "UTC"))
    return local.replace(hour=23, minute=59, second=59, microsecond=0).astimezone(moment.tzinfo)


async def coupon_for(conn: AsyncConnection, journey: Journey, run: Run, step: SendStep, customer_id: str,
                     tier: str, now: datetime, timezone: str | None) -> dict[str, Any] | None:
    """Issue the step's coupon (once per run and step), or find the one an earlier step issued."""
    spec = step.coupon
    if spec is None:
        return None
    if spec.reuse_step is None:
        amount = spec.amount_for(tier)
        # a journey's initials (AC: abandoned_cart); a campaign's, from its own name (BF: black_friday)
        name = campaign_of(journey.name) or journey.name
        prefix = "".join(part[0] for part in re.split(r"[_.-]+", name) if part).upper()
        await conn.execute(
            ISSUE_COUPON,
            {"code": new_coupon_code(prefix), "c": customer_id, "r": run.run_id, "j": journey.name, "s": step.number,
             "k": spec.kind, "a": amount, "cur": run.context.get("currency") or "EUR", "now": now,
             "exp": end_of_day(now + spec.valid, timezone)},
        )
        source_step = step.number
    else:
        source_step = spec.reuse_step
    row = (
        await conn.execute(
            COUPON_OF_STEP,
            {"r": run.run_id, "s": source_step},
        )
    ).first()
    if row is None:
        return None
    return {"code": row.code, "kind": row.kind, "amount": float(row.amount), "currency": row.currency,
            "expires_at": row.expires_at}


async def recommendations(conn: AsyncConnection, customer_id: str, limit: int,
                          settings: Settings) -> list[dict[str, Any]]:
    """Often bought together with what the customer bought, never what they bought; then best sellers."""
    rows = (
        await conn.execute(
            RECOMMENDATIONS,
            {"c": customer_id, "n": limit},
        )
    ).all()
    return [
        {"product_id": row.product_id, "name": row.name, "price": float(row.price or 0),
         "currency": row.currency or "EUR",
         "url": product_url(settings.shop_url, row.product_id),
         "image_url": product_image_url(settings.shop_url, row.product_id)}
        for row in rows
    ]
