"""Facts the stager records beside the customer state, in the same transaction.

Orders (with coupon redemption and last-click attribution), what was bought
together (for recommendations), email engagement, and suppressed addresses.
Each event reaches here once: the caller passes only events seen for the first time.
Its SQL is in sql.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.events import Event, EventType
from services.stager.sql import (
    INSERT_CUSTOMER_PRODUCTS,
    INSERT_EMAIL_EVENTS,
    INSERT_ORDERS,
    LAST_CLICKS,
    LOCK_COUPON,
    RECORD_COUPON_ATTEMPT,
    REDEEM_COUPON,
    SENT_MESSAGES,
    SUPPRESS,
    UPSERT_CO_PURCHASES,
    UPSERT_PRODUCT_SALES,
    VOID_ORDERS,
)

EMAIL_KINDS = {
    EventType.EMAIL_OPENED: "opened",
    EventType.EMAIL_CLICKED: "clicked",
    EventType.EMAIL_BOUNCED: "bounced",
    EventType.EMAIL_COMPLAINED: "complained",
    EventType.UNSUBSCRIBED: "unsubscribed",
}


def _prop(event: Event, name: str) -> Any:
    return getattr(event.properties, name, None) if event.properties is not None else None


def _email_kind(event: Event) -> str | None:
    kind = EMAIL_KINDS.get(event.type)
    if kind == "bounced" and _prop(event, "kind") == "soft":
        return "soft_bounced"  # not a bounce of the email in the report: its MTA may still deliver it
    return kind


async def record_facts(conn: AsyncConnection, events: list[Event], emails: dict[str, str | None],
                       attribution_days: int, suppressed: set[str] | None = None) -> None:
    """`emails`: each customer's address after the batch, for suppressions; `suppressed`: the customers
    suppressed after it (soft bounces suppress the address once the rules say so).

    A few statements per batch, not per event: engagement first, so that an order attributes a click
    of the same batch that happened before it; then orders; then cancellations and refunds."""
    engagement = [(event, kind) for event in events if (kind := _email_kind(event)) is not None]
    if engagement:
        await _email_events(conn, engagement)
        bounced = [(str(emails[e.customer_id]), "bounced" if kind == "soft_bounced" else kind, e.occurred_at)
                   for e, kind in engagement
                   if (kind in ("bounced", "complained")
                       or (kind == "soft_bounced" and e.customer_id in (suppressed or ())))
                   and emails.get(e.customer_id)]
        if bounced:
            await _suppress(conn, bounced)
    orders = [event for event in events if event.type is EventType.ORDER_PLACED]
    if orders:
        await _orders(conn, orders, attribution_days)
    voided = [str(_prop(event, "order_id")) for event in events
              if event.type in (EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED)]
    if voided:
        await conn.execute(VOID_ORDERS, {"o": voided})


async def suppress(conn: AsyncConnection, address: str, reason: str, at: datetime) -> None:
    await _suppress(conn, [(address, reason, at)])


async def _suppress(conn: AsyncConnection, rows: list[tuple[str, str, datetime]]) -> None:
    await conn.execute(SUPPRESS, {"a": [a.lower() for a, _, _ in rows], "r": [r for _, r, _ in rows],
                                  "t": [t for _, _, t in rows]})


async def _email_events(conn: AsyncConnection, engagement: list[tuple[Event, str]]) -> None:
    """Engagement rows; a message id we sent names its journey, step and variant."""
    message_ids = sorted({str(m) for event, _ in engagement if (m := _prop(event, "message_id"))})
    sent = {row.message_id: row for row in (await conn.execute(SENT_MESSAGES, {"m": message_ids})).all()} \
        if message_ids else {}
    columns: dict[str, list[Any]] = {name: [] for name in ("e", "c", "m", "j", "s", "v", "k", "l", "t")}
    for event, kind in engagement:
        message_id = _prop(event, "message_id")
        journey, step, variant = _prop(event, "journey"), _prop(event, "step"), None
        known = sent.get(str(message_id)) if message_id else None
        if known is not None:
            journey, step, variant = known.journey, known.step, known.variant
        for name, value in zip(columns, (event.event_id, event.customer_id, message_id, journey,
                                         int(step) if step is not None and str(step).isdigit() else None,
                                         variant, kind, _prop(event, "link"), event.occurred_at), strict=True):
            columns[name].append(value)
    await conn.execute(INSERT_EMAIL_EVENTS, columns)


async def _orders(conn: AsyncConnection, orders: list[Event], attribution_days: int) -> None:
    """The batch's orders with their last-click attribution; coupons and co-purchases of those that are new
    (the same order under another event id counts once)."""
    clicks = (await conn.execute(LAST_CLICKS, {"c": [e.customer_id for e in orders],
                                               "t": [e.occurred_at for e in orders],
                                               "days": attribution_days})).all()
    columns: dict[str, list[Any]] = {name: [] for name in
                                     ("o", "c", "t", "v", "cur", "code", "sid", "j", "s", "var")}
    for event, click in zip(orders, clicks, strict=True):
        for name, value in zip(columns, (str(_prop(event, "order_id")), event.customer_id, event.occurred_at,
                                         _prop(event, "value"), _prop(event, "currency"),
                                         _prop(event, "coupon_code"), click.send_id, click.journey, click.step,
                                         click.variant), strict=True):
            columns[name].append(value)
    inserted = set((await conn.execute(INSERT_ORDERS, columns)).scalars().all())
    new_orders: list[Event] = []
    for event in orders:
        order_id = str(_prop(event, "order_id"))
        if order_id in inserted:
            inserted.discard(order_id)  # an order id twice in the batch: the first one stands
            new_orders.append(event)
    for event in new_orders:
        code = _prop(event, "coupon_code")
        if code:
            await _redeem(conn, str(code), str(_prop(event, "order_id")), event.customer_id, event.occurred_at)
    if new_orders:
        await _bought_together(conn, new_orders)


async def _redeem(conn: AsyncConnection, code: str, order_id: str, customer_id: str, at: datetime) -> None:
    """Mark the code redeemed, or record why it was not: unknown, foreign, expired, already redeemed."""
    coupon = (await conn.execute(LOCK_COUPON, {"k": code.upper()})).first()
    if coupon is None:
        outcome = "unknown"
    elif coupon.customer_id != customer_id:
        outcome = "foreign"
    elif coupon.redeemed_order_id is not None:
        outcome = "already_redeemed"
    elif at > coupon.expires_at:
        outcome = "expired"
    else:
        outcome = "redeemed"
        await conn.execute(
            REDEEM_COUPON,
            {"t": at, "o": order_id, "k": code.upper()},
        )
    await conn.execute(
        RECORD_COUPON_ATTEMPT,
        {"o": order_id, "k": code.upper(), "c": customer_id, "r": outcome, "t": at},
    )


async def _bought_together(conn: AsyncConnection, orders: list[Event]) -> None:
    """Incremental co-purchase counts: one per order and pair of its distinct products, both ways."""
    sales: dict[str, list[Any]] = {}  # product -> [orders, name, price, currency]: the latest order's details
    bought: set[tuple[str, str]] = set()
    pairs: dict[tuple[str, str], int] = {}
    for event in orders:
        products: dict[str, Any] = {}
        for item in _prop(event, "items") or []:
            products.setdefault(str(item.product_id), item)
        for product, item in products.items():
            count = sales.get(product, [0])[0]
            sales[product] = [count + 1, item.name, item.price, _prop(event, "currency")]
            bought.add((event.customer_id, product))
        for a in products:
            for b in products:
                if a != b:
                    pairs[(a, b)] = pairs.get((a, b), 0) + 1
    if not sales:
        return
    # sorted, so that concurrent stagers lock shared product rows in one order
    ordered = sorted(sales.items())
    await conn.execute(UPSERT_PRODUCT_SALES, {"p": [p for p, _ in ordered], "k": [v[0] for _, v in ordered],
                                              "n": [v[1] for _, v in ordered], "pr": [v[2] for _, v in ordered],
                                              "cur": [v[3] for _, v in ordered]})
    customer_products = sorted(bought)
    await conn.execute(INSERT_CUSTOMER_PRODUCTS, {"c": [c for c, _ in customer_products],
                                                  "p": [p for _, p in customer_products]})
    if pairs:
        counted = sorted(pairs.items())
        await conn.execute(UPSERT_CO_PURCHASES, {"a": [a for (a, _), _ in counted], "b": [b for (_, b), _ in counted],
                                                 "k": [k for _, k in counted]})

