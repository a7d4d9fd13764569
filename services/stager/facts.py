"""Facts the stager records beside the customer state, in the same transaction.

Orders (with coupon redemption and last-click attribution), what was bought
together (for recommendations), email engagement, and suppressed addresses.
Each event reaches here once: the caller passes only events seen for the first time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
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
    """`emails`: each customer's address after the batch, for suppressions."""
    for event in events:
        kind = EMAIL_KINDS.get(event.type)
        if kind is not None:
            await _email_event(conn, event, kind)
            if kind in ("bounced", "complained") and emails.get(event.customer_id):
                await suppress(conn, str(emails[event.customer_id]), kind, event.occurred_at)
        elif event.type is EventType.ORDER_PLACED:
            await _order(conn, event, attribution_days)
        elif event.type in (EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED):
            await conn.execute(text("UPDATE orders SET voided = true WHERE order_id = :o"),
                               {"o": str(_prop(event, "order_id"))})


async def suppress(conn: AsyncConnection, address: str, reason: str, at: datetime) -> None:
    await conn.execute(
        text("INSERT INTO suppressions (address, reason, suppressed_at) VALUES (:a, :r, :t)"
             " ON CONFLICT (address) DO NOTHING"),
        {"a": address.lower(), "r": reason, "t": at},
    )


async def _email_event(conn: AsyncConnection, event: Event, kind: str) -> None:
    message_id = _prop(event, "message_id")
    journey, step = _prop(event, "journey"), _prop(event, "step")
    variant = None
    if message_id:
        sent = (await conn.execute(text("SELECT journey, step, variant FROM sends WHERE message_id = :m"),
                                   {"m": message_id})).first()
        if sent is not None:
            journey, step, variant = sent.journey, sent.step, sent.variant
    await conn.execute(
        text(
            "INSERT INTO email_events (event_id, customer_id, message_id, journey, step, variant, kind, link,"
            " occurred_at) VALUES (:e, :c, :m, :j, :s, :v, :k, :l, :t) ON CONFLICT (customer_id, event_id) DO NOTHING"
        ),
        {"e": event.event_id, "c": event.customer_id, "m": message_id, "j": journey,
         "s": int(step) if step is not None and str(step).isdigit() else None, "v": variant, "k": kind,
         "l": _prop(event, "link"), "t": event.occurred_at},
    )


async def _order(conn: AsyncConnection, event: Event, attribution_days: int) -> None:
    order_id = str(_prop(event, "order_id"))
    at = event.occurred_at
    code = _prop(event, "coupon_code")
    click = (
        await conn.execute(
            text(
                "SELECT e.message_id, e.journey, e.step, e.variant, s.send_id FROM email_events e"
                " LEFT JOIN sends s ON s.message_id = e.message_id"
                " WHERE e.customer_id = :c AND e.kind = 'clicked' AND e.occurred_at <= :t AND e.occurred_at > :since"
                " ORDER BY e.occurred_at DESC, e.id DESC LIMIT 1"
            ),
            {"c": event.customer_id, "t": at, "since": at - timedelta(days=attribution_days)},
        )
    ).first()
    inserted = (
        await conn.execute(
            text(
                "INSERT INTO orders (order_id, customer_id, occurred_at, value, currency, coupon_code,"
                " attributed_send_id, attributed_journey, attributed_step, attributed_variant)"
                " VALUES (:o, :c, :t, :v, :cur, :code, :sid, :j, :s, :var)"
                " ON CONFLICT (order_id) DO NOTHING RETURNING order_id"
            ),
            {"o": order_id, "c": event.customer_id, "t": at, "v": _prop(event, "value"),
             "cur": _prop(event, "currency"), "code": code,
             "sid": click.send_id if click else None, "j": click.journey if click else None,
             "s": click.step if click else None, "var": click.variant if click else None},
        )
    ).scalar()
    if inserted is None:
        return  # the same order under another event id: counted once
    if code:
        await _redeem(conn, str(code), order_id, event.customer_id, at)
    await _bought_together(conn, event)


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


async def _bought_together(conn: AsyncConnection, event: Event) -> None:
    """Incremental co-purchase counts: one per pair of distinct products of the order, both ways."""
    items = _prop(event, "items") or []
    products: dict[str, Any] = {}
    # sorted, so that concurrent stagers lock shared product rows in one order
    for item in sorted(items, key=lambda i: str(i.product_id)):
        products.setdefault(item.product_id, item)
    if not products:
        return
    await conn.execute(
        text(
            "INSERT INTO product_sales (product_id, name, price, currency, orders) VALUES (:p, :n, :pr, :cur, 1)"
            " ON CONFLICT (product_id) DO UPDATE SET orders = product_sales.orders + 1, name = EXCLUDED.name,"
            " price = EXCLUDED.price, currency = EXCLUDED.currency"
        ),
        [{"p": p, "n": item.name, "pr": item.price, "cur": _prop(event, "currency")} for p, item in products.items()],
    )
    await conn.execute(
        text("INSERT INTO customer_products (customer_id, product_id) VALUES (:c, :p) ON CONFLICT DO NOTHING"),
        [{"c": event.customer_id, "p": p} for p in products],
    )
    pairs = [{"a": a, "b": b} for a in products for b in products if a != b]
    if pairs:
        await conn.execute(
            text(
                "INSERT INTO co_purchases (product_id, other_id, orders) VALUES (:a, :b, 1)"
                " ON CONFLICT (product_id, other_id) DO UPDATE SET orders = co_purchases.orders + 1"
            ),
            pairs,
        )
