"""Events as a shop sends them (client JSON), and the same events as the ingest API writes them to Kafka.

Every event is parsed with the API's own parser (lifecycle.events.parse_event), so `Event.to_message()`
gives exactly the bytes the API would publish, keyed by customer id.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from lifecycle.events import Event, parse_event

EVENTS_PER_CUSTOMER = 10  # the stager's mix: a sign-up, 6 product views, 2 cart updates, 1 order
PRODUCTS = [(f"sku-{n:03d}", f"Product {n}", round(9.5 + n * 1.25, 2)) for n in range(40)]


def _at(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _item(n: int, quantity: int = 1) -> dict[str, Any]:
    product_id, name, price = PRODUCTS[n % len(PRODUCTS)]
    return {"product_id": product_id, "name": name, "quantity": quantity, "price": price}


def signup(customer_id: str, at: datetime, consent: str = "opted_in", first_name: str = "Bench") -> dict[str, Any]:
    return {"event_id": f"{customer_id}-signup", "type": "customer_signed_up", "customer_id": customer_id,
            "occurred_at": _at(at),
            "traits": {"email": f"{customer_id}@example.com", "first_name": first_name, "consent": consent}}


def mixed_customer(customer_id: str, start: datetime, seed: int) -> list[dict[str, Any]]:
    """One customer's ten events, a second apart: sign-up with email and consent, six product views,
    two cart updates (items), an order with the cart's items."""
    events = [signup(customer_id, start)]
    for v in range(6):
        product_id, name, price = PRODUCTS[(seed + v) % len(PRODUCTS)]
        events.append({"event_id": f"{customer_id}-view-{v}", "type": "product_viewed", "customer_id": customer_id,
                       "occurred_at": _at(start + timedelta(seconds=1 + v)),
                       "properties": {"product_id": product_id, "name": name, "price": price, "currency": "EUR"}})
    cart: list[dict[str, Any]] = []
    for c in range(2):
        cart.append(_item(seed + c, quantity=1 + c))
        value = round(sum(i["price"] * i["quantity"] for i in cart), 2)
        events.append({"event_id": f"{customer_id}-cart-{c}", "type": "cart_updated", "customer_id": customer_id,
                       "occurred_at": _at(start + timedelta(seconds=7 + c)),
                       "properties": {"cart_id": f"cart-{customer_id}", "currency": "EUR", "value": value,
                                      "items": list(cart)}})
    value = round(sum(i["price"] * i["quantity"] for i in cart), 2)
    events.append({"event_id": f"{customer_id}-order", "type": "order_placed", "customer_id": customer_id,
                   "occurred_at": _at(start + timedelta(seconds=9)),
                   "properties": {"order_id": f"order-{customer_id}", "currency": "EUR", "value": value,
                                  "items": cart}})
    return events


def mixed_events(prefix: str, count: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """`count` events (rounded up to whole customers) of the stager's mix, in the last hour."""
    start = (now or datetime.now(UTC)) - timedelta(hours=1)
    events: list[dict[str, Any]] = []
    for c in range(-(-count // EVENTS_PER_CUSTOMER)):
        events += mixed_customer(f"{prefix}-{c}", start + timedelta(milliseconds=c), c)
    return events


def pipeline_events(prefix: str, customers: int, views: int, now: datetime | None = None) -> list[dict[str, Any]]:
    """Today's workload: each customer signs up (opted in: one welcome email) and views `views` products."""
    at = now or datetime.now(UTC)
    events: list[dict[str, Any]] = []
    for c in range(customers):
        cid = f"{prefix}-{c}"
        events.append(signup(cid, at))
        for v in range(views):
            product_id, name, price = PRODUCTS[(c + v) % len(PRODUCTS)]
            events.append({"event_id": f"{cid}-view-{v}", "type": "product_viewed", "customer_id": cid,
                           "occurred_at": _at(at), "properties": {"product_id": product_id, "name": name,
                                                                  "price": price}})
    return events


def keyed_messages(events: list[Event]) -> list[tuple[bytes, bytes]]:
    """The events as the API writes them to Kafka: (customer id, `Event.to_message()`)."""
    return [(event.customer_id.encode(), event.to_message()) for event in events]


def parsed(raw: list[dict[str, Any]], received_at: datetime | None = None) -> list[Event]:
    """The events as the API reads them (received now)."""
    received = received_at or datetime.now(UTC)

    def no_id() -> str:
        raise AssertionError("every benchmark event carries its id")

    return [parse_event(event, received, no_id) for event in raw]


def batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
