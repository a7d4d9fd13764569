"""Facts the stager records beside the customer state, in the same transaction.

Orders (with coupon redemption and last-click attribution), what was bought
together (for recommendations), email engagement, and suppressed addresses.
Each event reaches here once: the caller passes only events seen for the first time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from lifecycle.events import Event, EventType

EMAIL_KINDS = {
    EventType.EMAIL_OPENED: "opened",
    EventType.EMAIL_CLICKED: "clicked",
    EventType.EMAIL_BOUNCED: "bounced",
    EventType.EMAIL_COMPLAINED: "complained",
    EventType.UNSUBSCRIBED: "unsubscribed",
}


def _prop(event: Event, name: str) -> Any:
    return getattr(event.properties, name, None) if event.properties is not None else None


async def record_facts(conn: AsyncConnection, events: list[Event], emails: dict[str, str | None],
                       attribution_days: int) -> None:
    """`emails`: each customer's address after the batch, for suppressions.

    A few statements per batch, not per event: engagement first, so that an order attributes a click
    of the same batch that happened before it; then orders; then cancellations and refunds."""
    engagement = [(event, kind) for event in events if (kind := EMAIL_KINDS.get(event.type)) is not None]
    if engagement:
        await _email_events(conn, engagement)
        bounced = [(str(emails[e.customer_id]), kind, e.occurred_at) for e, kind in engagement
                   if kind in ("bounced", "complained") and emails.get(e.customer_id)]
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


VOID_ORDERS = text("UPDATE orders SET voided = true WHERE order_id = ANY(CAST(:o AS text[]))")
# in the batch's order: the first reason recorded for an address stays
SUPPRESS = text(
    "INSERT INTO suppressions (address, reason, suppressed_at)"
    " SELECT u.a, u.r, u.t FROM unnest(CAST(:a AS text[]), CAST(:r AS text[]), CAST(:t AS timestamptz[]))"
    " WITH ORDINALITY AS u(a, r, t, n) ORDER BY u.n ON CONFLICT (address) DO NOTHING"
)
SENT_MESSAGES = text("SELECT message_id, journey, step, variant FROM sends WHERE message_id = ANY(CAST(:m AS text[]))")
INSERT_EMAIL_EVENTS = text(
    "INSERT INTO email_events (event_id, customer_id, message_id, journey, step, variant, kind, link, occurred_at)"
    " SELECT * FROM unnest(CAST(:e AS text[]), CAST(:c AS text[]), CAST(:m AS text[]), CAST(:j AS text[]),"
    " CAST(:s AS int[]), CAST(:v AS text[]), CAST(:k AS text[]), CAST(:l AS text[]), CAST(:t AS timestamptz[]))"
    " ON CONFLICT (customer_id, event_id) DO NOTHING"
)
# one row per order, in the batch's order: the customer's last click before it, within the window
LAST_CLICKS = text(
    "SELECT a.message_id, a.journey, a.step, a.variant, a.send_id"
    " FROM unnest(CAST(:c AS text[]), CAST(:t AS timestamptz[])) WITH ORDINALITY AS u(c, t, n)"
    " LEFT JOIN LATERAL (SELECT e.message_id, e.journey, e.step, e.variant, s.send_id FROM email_events e"
    "  LEFT JOIN sends s ON s.message_id = e.message_id"
    "  WHERE e.customer_id = u.c AND e.kind = 'clicked' AND e.occurred_at <= u.t"
    "  AND e.occurred_at > u.t - make_interval(days => CAST(:days AS int))"
    "  ORDER BY e.occurred_at DESC, e.id DESC LIMIT 1) a ON true"
    " ORDER BY u.n"
)
INSERT_ORDERS = text(
    "INSERT INTO orders (order_id, customer_id, occurred_at, value, currency, coupon_code,"
    " attributed_send_id, attributed_journey, attributed_step, attributed_variant)"
    " SELECT u.o, u.c, u.t, u.v, u.cur, u.code, u.sid, u.j, u.s, u.var FROM unnest(CAST(:o AS text[]),"
    " CAST(:c AS text[]), CAST(:t AS timestamptz[]), CAST(:v AS numeric[]), CAST(:cur AS text[]),"
    " CAST(:code AS text[]), CAST(:sid AS bigint[]), CAST(:j AS text[]), CAST(:s AS int[]), CAST(:var AS text[]))"
    " WITH ORDINALITY AS u(o, c, t, v, cur, code, sid, j, s, var, n) ORDER BY u.n"
    " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
)


async def _redeem(conn: AsyncConnection, code: str, order_id: str, customer_id: str, at: datetime) -> None:
    """Mark the code redeemed, or record why it was not: unknown, foreign, expired, already redeemed."""
    coupon = (await conn.execute(
        text("SELECT customer_id, expires_at, redeemed_order_id FROM coupons WHERE code = :k FOR UPDATE"),
        {"k": code.upper()})).first()
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
            text("UPDATE coupons SET redeemed_at = :t, redeemed_order_id = :o WHERE code = :k"),
            {"t": at, "o": order_id, "k": code.upper()},
        )
    await conn.execute(
        text("INSERT INTO coupon_attempts (order_id, code, customer_id, outcome, occurred_at)"
             " VALUES (:o, :k, :c, :r, :t) ON CONFLICT DO NOTHING"),
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


UPSERT_PRODUCT_SALES = text(
    "INSERT INTO product_sales (product_id, orders, name, price, currency)"
    " SELECT * FROM unnest(CAST(:p AS text[]), CAST(:k AS int[]), CAST(:n AS text[]), CAST(:pr AS numeric[]),"
    " CAST(:cur AS text[]))"
    " ON CONFLICT (product_id) DO UPDATE SET orders = product_sales.orders + EXCLUDED.orders, name = EXCLUDED.name,"
    " price = EXCLUDED.price, currency = EXCLUDED.currency"
)
INSERT_CUSTOMER_PRODUCTS = text(
    "INSERT INTO customer_products (customer_id, product_id)"
    " SELECT * FROM unnest(CAST(:c AS text[]), CAST(:p AS text[])) ON CONFLICT DO NOTHING"
)
UPSERT_CO_PURCHASES = text(
    "INSERT INTO co_purchases (product_id, other_id, orders)"
    " SELECT * FROM unnest(CAST(:a AS text[]), CAST(:b AS text[]), CAST(:k AS int[]))"
    " ON CONFLICT (product_id, other_id) DO UPDATE SET orders = co_purchases.orders + EXCLUDED.orders"
)
