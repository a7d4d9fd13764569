"""Shopify's webhooks read as our events (pure: no I/O). See docs/integrations.md.

One function per topic, in `MAPPINGS`, turns a webhook's payload (Shopify's REST shape of the
resource) into our events, not yet checked:

- `customers/create`, `customers/update`: a `customer_identified` (email, names, and the consent that
  `email_marketing_consent.state` gives);
- `checkouts/create`, `checkouts/update`: the customer as the checkout names them, and the cart:
  a `cart_updated` under the checkout's `token`, with its lines, total and `abandoned_checkout_url`
  (`checkouts/create` also starts the checkout: `checkout_started`). A completed checkout empties
  the cart: it has become an order;
- `orders/create`: the customer, and `order_placed`; `orders/cancelled`: `order_cancelled`;
- `refunds/create`: a refund names its order, not its customer: it is read with what the stager keeps
  of that order (`KnownOrder`), and is an `order_refunded` only when it pays back the whole order;
- `orders/updated`: only what no other topic says: the order paid back whole by refunds that each
  repaid part of it (Shopify's `financial_status` becomes `refunded`), as `order_refunded`.

The customer id is Shopify's customer id as text; a guest (no customer, only an address) is
`shopify-guest:` and a digest of the address, so that their checkouts and orders meet on one profile.
Event ids are derived from the webhook's id (`X-Shopify-Webhook-Id`): a webhook delivered again
makes the same events, which count once. An order's `order_refunded` has one id whichever webhook
tells it (a whole refund, the order updated to refunded, again and again): it counts once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from lifecycle.events import Event
from lifecycle.events.errors import EventInvalid
from lifecycle.events.fields import is_web_link
from lifecycle.events.parsing import parse_event
from lifecycle.payloads import id_text, mapping, moment, number, without_traits

GUEST_PREFIX: Final = "shopify-guest:"
# email_marketing_consent.state -> our consent; `not_subscribed` (never asked, or never said yes) says
# nothing we keep: a profile without consent gets no marketing email, and consent given elsewhere stays
CONSENT_STATES: Final = {"subscribed": "opted_in", "pending": "pending", "unsubscribed": "opted_out",
                         "redacted": "opted_out"}
SILENT_CONSENT_STATES: Final = frozenset({"not_subscribed"})


class PayloadInvalid(ValueError):
    """A payload that is no object at all: Shopify's webhooks always are one."""


@dataclass(frozen=True)
class KnownOrder:
    """What the stager keeps of an order, which a refund is read against."""

    customer_id: str
    value: Decimal
    voided: bool


@dataclass
class Delivery:
    """One webhook as received: what its events are stamped with."""

    topic: str
    webhook_id: str
    received_at: datetime
    order: KnownOrder | None = None  # refunds/create: the order it names, when we know it
    left_out: list[str] = field(default_factory=list)  # what was not kept, and why (counted, logged)

    def time(self, *values: Any) -> datetime:
        """The first of these Shopify times that reads, else the time received."""
        for value in values:
            found = moment(value, self.received_at)
            if found is not None:
                return found
        if any(value is not None for value in values):
            self.left_out.append("timestamp")
        return self.received_at


@dataclass(frozen=True)
class ReadWebhook:
    events: list[Event]
    left_out: tuple[str, ...]


def guest_id(email: str) -> str:
    return GUEST_PREFIX + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:40]


def redacted_customer_ids(payload: Mapping[str, Any]) -> list[str]:
    """The profiles of the customer a `customers/redact` or `customers/data_request` names: under their
    Shopify id, and as the guest of their address (their checkouts and orders before an account)."""
    customer = mapping(payload.get("customer"))
    found = [id_text(customer.get("id"))]
    email = customer.get("email")
    if isinstance(email, str) and "@" in email:
        found.append(guest_id(email))
    return [customer_id for customer_id in found if customer_id is not None]


def is_shopify_customer_id(customer_id: str) -> bool:
    """An id this mapping gives: Shopify's numeric customer id, or a guest's."""
    return customer_id.isdigit() or customer_id.startswith(GUEST_PREFIX)


def _customer_id(resource: Mapping[str, Any], delivery: Delivery) -> str | None:
    """Shopify's customer id, else the guest id of the resource's address; None (left out) without both."""
    customer = mapping(resource.get("customer"))
    found = id_text(customer.get("id"))
    if found is not None:
        return found
    email = _email(resource)
    if email is not None:
        return guest_id(email)
    delivery.left_out.append("no_customer")
    return None


def _email(resource: Mapping[str, Any]) -> str | None:
    customer = mapping(resource.get("customer"))
    for value in (resource.get("email"), resource.get("contact_email"), customer.get("email")):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _consent(customer: Mapping[str, Any], delivery: Delivery) -> str | None:
    state = mapping(customer.get("email_marketing_consent")).get("state")
    if not isinstance(state, str) or state in SILENT_CONSENT_STATES:
        return None
    if state not in CONSENT_STATES:
        delivery.left_out.append("consent_state")
        return None
    return CONSENT_STATES[state]


def _identified(customer_id: str, traits: dict[str, Any], at: datetime) -> dict[str, Any]:
    return {"type": "customer_identified", "customer_id": customer_id, "occurred_at": at.isoformat(),
            "traits": {name: value for name, value in traits.items() if value is not None}}


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _buyer(resource: Mapping[str, Any], customer_id: str, at: datetime, delivery: Delivery) -> dict[str, Any]:
    """The customer as a checkout or an order names them. Their own consent state when the resource
    carries one that says something (`not_subscribed` does not); else the box ticked at checkout
    (`buyer_accepts_marketing`: true is an opt-in; false withdraws nothing given before)."""
    customer = mapping(resource.get("customer"))
    consent = _consent(customer, delivery)
    if consent is None and resource.get("buyer_accepts_marketing") is True:
        consent = "opted_in"
    return _identified(customer_id, {
        "email": _email(resource), "first_name": _text(customer.get("first_name")),
        "last_name": _text(customer.get("last_name")), "locale": _text(resource.get("customer_locale")),
        "consent": consent}, at)


def customer_events(customer: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """customers/create, customers/update: the payload is the customer."""
    customer_id = id_text(customer.get("id"))
    if customer_id is None:
        delivery.left_out.append("no_customer")
        return []
    at = delivery.time(customer.get("updated_at"), customer.get("created_at"))
    return [_identified(customer_id, {
        "email": _text(customer.get("email")), "first_name": _text(customer.get("first_name")),
        "last_name": _text(customer.get("last_name")), "consent": _consent(customer, delivery)}, at)]


def _items(lines: Any) -> list[dict[str, Any]] | None:
    """Shopify's line items as ours; None when one cannot be read (no product, price or quantity)."""
    if not isinstance(lines, list):
        return None
    items = []
    for line in lines:
        line = mapping(line)
        product_id = id_text(line.get("product_id")) or id_text(line.get("variant_id")) or id_text(line.get("sku"))
        price = number(line.get("price"))
        quantity = line.get("quantity")
        if product_id is None or price is None or isinstance(quantity, bool) or not isinstance(quantity, int):
            return None
        title = _text(line.get("title"))
        variant = _text(line.get("variant_title"))
        name = _text(line.get("name")) or (f"{title} - {variant}" if title and variant else title) or product_id
        items.append({"product_id": product_id, "name": name, "quantity": quantity, "price": str(price)})
    return items


def _currency(resource: Mapping[str, Any]) -> str | None:
    return _text(resource.get("currency")) or _text(resource.get("presentment_currency"))


def _value(resource: Mapping[str, Any], items: list[dict[str, Any]]) -> str:
    total = number(resource.get("total_price"))
    if total is None:
        total = sum((Decimal(i["price"]) * i["quantity"] for i in items), Decimal(0))
    return str(total)


def checkout_events(checkout: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """checkouts/create, checkouts/update: the customer, and the cart under the checkout's token."""
    customer_id = _customer_id(checkout, delivery)
    cart_id = id_text(checkout.get("token"))
    if customer_id is None:
        return []
    completed = checkout.get("completed_at") is not None
    at = delivery.time(checkout.get("completed_at") if completed else checkout.get("updated_at"),
                       checkout.get("updated_at"), checkout.get("created_at"))
    events = [_buyer(checkout, customer_id, at, delivery)]
    if cart_id is None:
        delivery.left_out.append("cart (no token)")
        return events
    cart: dict[str, Any] = {"type": "cart_updated", "customer_id": customer_id, "occurred_at": at.isoformat()}
    currency = _currency(checkout)
    if completed:  # the cart became an order: nothing is left to remind of
        cart["properties"] = {"cart_id": cart_id, "currency": currency or "XXX", "value": "0", "items": []}
        return [*events, cart]
    items = _items(checkout.get("line_items"))
    if items is None or currency is None:
        delivery.left_out.append("cart (line items or currency)")
        return events
    properties: dict[str, Any] = {"cart_id": cart_id, "currency": currency, "value": _value(checkout, items),
                                  "items": items}
    url = _text(checkout.get("abandoned_checkout_url"))
    if is_web_link(url):
        properties["checkout_url"] = url
    elif url is not None:
        delivery.left_out.append("checkout_url")
    cart["properties"] = properties
    if delivery.topic == "checkouts/create":
        started = {"type": "checkout_started", "customer_id": customer_id, "occurred_at": at.isoformat(),
                   "properties": {"cart_id": cart_id}}
        return [*events, cart, started]
    return [*events, cart]


def order_events(order: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """orders/create: the customer, and the order (its value is `total_price`; its first discount code)."""
    customer_id = _customer_id(order, delivery)
    order_id = id_text(order.get("id"))
    if customer_id is None:
        return []
    at = delivery.time(order.get("processed_at"), order.get("created_at"))
    events = [_buyer(order, customer_id, at, delivery)]
    items = _items(order.get("line_items"))
    currency = _currency(order)
    if order_id is None or not items or currency is None:
        delivery.left_out.append("order_placed (id, line items or currency)")
        return events
    properties: dict[str, Any] = {"order_id": order_id, "currency": currency, "value": _value(order, items),
                                  "items": items}
    codes = [_text(mapping(code).get("code")) for code in order.get("discount_codes") or []
             if isinstance(order.get("discount_codes"), list)]
    if codes and codes[0]:
        properties["coupon_code"] = codes[0]
    return [*events, {"type": "order_placed", "customer_id": customer_id, "occurred_at": at.isoformat(),
                      "properties": properties}]


def cancelled_events(order: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """orders/cancelled: the order no longer counts."""
    named = _order_named(order, delivery, "order_cancelled")
    if named is None:
        return []
    at = delivery.time(order.get("cancelled_at"), order.get("updated_at"))
    return [{"type": "order_cancelled", "customer_id": named[0], "occurred_at": at.isoformat(),
             "properties": {"order_id": named[1]}}]


def _order_named(order: Mapping[str, Any], delivery: Delivery, kind: str) -> tuple[str, str] | None:
    """(customer id, order id) of an order a `kind` event is about; None (and why, when it is the id)."""
    customer_id = _customer_id(order, delivery)
    order_id = id_text(order.get("id"))
    if customer_id is None:
        return None
    if order_id is None:
        delivery.left_out.append(f"{kind} (no id)")
        return None
    return customer_id, order_id


def refunded_amount(refund: Mapping[str, Any]) -> Decimal:
    """What a refund paid back: its successful `refund` transactions."""
    total = Decimal(0)
    for transaction in refund.get("transactions") or []:
        transaction = mapping(transaction)
        amount = number(transaction.get("amount"))
        if transaction.get("kind") == "refund" and transaction.get("status") == "success" and amount is not None:
            total += amount
    return total


def refund_events(refund: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """refunds/create: `order_refunded` (our whole-order refund) when this refund pays back the order's
    whole value; a partial refund is left out (counted), as is a refund of an order we do not know."""
    order = delivery.order
    order_id = id_text(refund.get("order_id"))
    if order_id is None or order is None:
        delivery.left_out.append("refund (order unknown)")
        return []
    if order.voided:
        return []
    if refunded_amount(refund) < order.value:
        delivery.left_out.append("refund (partial)")
        return []
    at = delivery.time(refund.get("processed_at"), refund.get("created_at"))
    return [_refunded(order.customer_id, order_id, at)]


def updated_events(order: Mapping[str, Any], delivery: Delivery) -> list[dict[str, Any]]:
    """orders/updated: `order_refunded` once the order's refunds together repay it (`financial_status`
    `refunded`); every other update is said by its own topic, or is not ours to keep."""
    if order.get("financial_status") != "refunded":
        return []  # nothing left out: what the update says comes with its own topic
    named = _order_named(order, delivery, "order_refunded")
    if named is None:
        return []
    return [_refunded(*named, delivery.time(order.get("updated_at")))]


def _refunded(customer_id: str, order_id: str, at: datetime) -> dict[str, Any]:
    return {"type": "order_refunded", "customer_id": customer_id, "occurred_at": at.isoformat(),
            "properties": {"order_id": order_id}, "event_id": refunded_event_id(order_id)}


Mapping_ = Callable[[Mapping[str, Any], Delivery], list[dict[str, Any]]]
# topic -> its mapping; a topic is added by one entry here (and its handling by one in the route's table)
MAPPINGS: Final[Mapping[str, Mapping_]] = {
    "customers/create": customer_events,
    "customers/update": customer_events,
    "checkouts/create": checkout_events,
    "checkouts/update": checkout_events,
    "orders/create": order_events,
    "orders/cancelled": cancelled_events,
    "refunds/create": refund_events,
    "orders/updated": updated_events,
}


def event_id(webhook_id: str, index: int, kind: str) -> str:
    """The id of the `index`-th event a webhook makes: the same webhook delivered again makes the same."""
    return "shopify-" + hashlib.sha256(f"{webhook_id}:{index}:{kind}".encode()).hexdigest()[:40]


def refunded_event_id(order_id: str) -> str:
    """The id of an order's `order_refunded`, whichever webhook makes it."""
    return "shopify-" + hashlib.sha256(f"order-refunded:{order_id}".encode()).hexdigest()[:40]


def read_webhook(payload: Any, delivery: Delivery) -> ReadWebhook:
    """The webhook's events, checked. A trait our models refuse (an address that is not one) is left
    out and the rest kept; an event they refuse is left out whole. PayloadInvalid: not an object;
    KeyError: a topic without a mapping."""
    if not isinstance(payload, Mapping):
        raise PayloadInvalid("a Shopify webhook's body is a JSON object")
    bodies = MAPPINGS[delivery.topic](payload, delivery)
    events: list[Event] = []
    for index, body in enumerate(bodies):
        body.setdefault("event_id", event_id(delivery.webhook_id, index, body["type"]))
        checked = _checked(body, delivery)
        if checked is not None:
            events.append(checked)
    return ReadWebhook(events, tuple(delivery.left_out))


def _checked(body: dict[str, Any], delivery: Delivery) -> Event | None:
    def parse(value: dict[str, Any]) -> Event:
        return parse_event(value, delivery.received_at, lambda: str(value["event_id"]))

    try:
        return parse(body)
    except EventInvalid as exc:
        fields = [str(e["field"]) for e in exc.errors]
        refused_as = exc
    if body["type"] == "customer_identified" and all(f.startswith("traits.") for f in fields):
        refused = {f.split(".")[1] for f in fields}
        delivery.left_out.extend(f"traits.{name}" for name in sorted(refused))
        try:
            return parse(without_traits(body, refused))
        except EventInvalid as exc:
            refused_as = exc
    delivery.left_out.append(f"{body['type']} ({refused_as})")
    return None
