"""Segment's HTTP Tracking API calls read as our events (pure: no I/O). See docs/integrations.md.

A call is `identify`, `track`, `page` or `alias` (alone, or in a `batch`). What maps:

- `userId` is the customer id; a call with only an `anonymousId` is kept under the customer id
  `anonymous:<anonymousId>` (such a profile has no address: it is never mailed);
- an `identify` with both ids also merges the visitor's profile into the customer's (a
  `customer_merged` event), and an `alias` merges its `previousId`'s: the anonymous visitor's profile
  (`anonymous:<previousId>`) and the profile of a customer id `previousId`, whichever exists;
- `messageId` is the event id (a digest of it when it is not one of ours), `timestamp` the event's
  time (the time received when it is absent, unreadable or more than 5 minutes ahead);
- `identify` is a `customer_identified` with the traits we keep: `email`, `firstName`/`first_name`,
  `lastName`/`last_name`, `birthday`, `locale`, `timezone` (or the call's `context.locale` and
  `context.timezone`), and `consent` (`opted_in`, `pending`, `opted_out`) or `email_consent` (a boolean).
  A trait we cannot read (an address that is not one) is left out and reported in `dropped`;
- the e-commerce spec's events map to ours: `Product Viewed`, `Cart Viewed` (the cart, whole),
  `Product Added` and `Product Removed` (one line of the cart), `Checkout Started`, `Order Completed`,
  `Order Cancelled`, `Order Refunded`;
- any other `track`, and an e-commerce event missing what ours needs, is a `track` event: its name
  and its flat properties as texts, activity and a trigger journeys can use;
- `page` is a `page_viewed` with its URL (`properties.url`, else `context.page.url`), else a `track`
  named `Page Viewed`.

Every result is checked by the events' own models afterwards (`parse_event`): this module only
rearranges fields.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from lifecycle.events.errors import EventInvalid
from lifecycle.events.fields import IDENTIFIER_PATTERN, TEXT_PATTERN
from lifecycle.events.models import MAX_TRACK_ATTRIBUTES, Event
from lifecycle.events.parsing import derived_event_id, parse_event
from lifecycle.payloads import id_text, mapping, moment, number, without_traits

CALL_TYPES = ("identify", "track", "page", "alias")
MAX_CALL_BYTES = 32 * 1024  # Segment's limit per call
MAX_BATCH_BYTES = 500 * 1024  # and per batch
ANONYMOUS_PREFIX = "anonymous:"
MAX_TEXT = 512
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_TEXT = re.compile(TEXT_PATTERN)
# Segment's trait names (camelCase, as analytics.js sends them, or snake_case) -> ours
TRAIT_NAMES = {"email": "email", "firstName": "first_name", "first_name": "first_name",
               "lastName": "last_name", "last_name": "last_name", "birthday": "birthday", "locale": "locale",
               "timezone": "timezone", "consent": "consent"}
CONSENT_FLAG = "email_consent"  # a boolean trait: true is opted_in, false opted_out
# Segment e-commerce spec v2 event names -> our event types
ECOMMERCE = {"Product Viewed": "product_viewed", "Cart Viewed": "cart_updated",
             "Product Added": "cart_line_changed", "Product Removed": "cart_line_changed",
             "Checkout Started": "checkout_started", "Order Completed": "order_placed",
             "Order Cancelled": "order_cancelled", "Order Refunded": "order_refunded"}


class CallInvalid(ValueError):
    """A call that cannot be read at all (no ids, no event name, not an object): Segment's 400."""


@dataclass
class Mapped:
    """The event a call becomes (an /v1/events object, not yet checked), and what was left out of it;
    `merges`: the profiles it merges into the customer's, by previous id."""

    event: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)


# the fields of each call as the OpenAPI document gives them (segment_routes._call_schema), with the JSON
# type each must have; other fields are accepted and unused
COMMON_FIELDS: dict[str, type] = {"messageId": str, "timestamp": str, "context": Mapping, "integrations": Mapping,
                                  "writeKey": str}
KIND_FIELDS: dict[str, dict[str, type]] = {
    "identify": {"traits": Mapping},
    "track": {"event": str, "properties": Mapping},
    "page": {"properties": Mapping, "name": str},
    "alias": {},
}


# a batch's own fields besides `batch`
BATCH_FIELDS: dict[str, type] = {"context": Mapping, "integrations": Mapping, "writeKey": str, "sentAt": str}


def check_types(value: Mapping[str, Any], fields: Mapping[str, type]) -> None:
    """Each of these fields a string or an object as given (CallInvalid otherwise); null is absent, as
    some libraries send what they do not have."""
    for name, wanted in fields.items():
        if value.get(name) is not None and not isinstance(value[name], wanted):
            raise CallInvalid(f"{name} must be {'a string' if wanted is str else 'an object'}")


def check_shape(call: Mapping[str, Any], kind: str, in_batch: bool = False) -> None:
    """The call's fields have the types the OpenAPI document gives them (CallInvalid otherwise). A batch's
    calls are documented with every kind's fields."""
    fields = dict(COMMON_FIELDS)
    for name in (KIND_FIELDS if in_batch else [kind]):
        fields.update(KIND_FIELDS[name])
    check_types(call, fields)
    for name, room in (("userId", 128), ("anonymousId", 128 - len(ANONYMOUS_PREFIX)),
                       ("previousId", 128 - len(ANONYMOUS_PREFIX))):
        value = call.get(name)
        if value is None:  # absent, or null as Segment's libraries send the id they do not have
            continue
        if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
            raise CallInvalid(f"{name} must be a string or a number")
        if isinstance(value, str) and (len(value) > room or not _IDENTIFIER.match(value)):
            raise CallInvalid(f"{name} must be 1 to {room} characters, without spaces or control characters at"
                              " its ends")
    if kind == "track" or (in_batch and "event" in call):
        event = call.get("event")
        if not isinstance(event, str) or len(event) > MAX_TEXT or not _TEXT.match(event):
            raise CallInvalid("a track call needs its event's name (`event`): 1 to 512 characters, not blank,"
                              " without control characters")


def customer_id_of(call: Mapping[str, Any]) -> str:
    user_id, anonymous_id = id_text(call.get("userId")), id_text(call.get("anonymousId"))
    if user_id:
        return user_id
    if anonymous_id:
        return ANONYMOUS_PREFIX + anonymous_id
    raise CallInvalid("a call needs a userId or an anonymousId")


def event_id_of(call: Mapping[str, Any], customer_id: str) -> str | None:
    """The call's messageId when it is one of our ids, else a digest of it; None: derive from content."""
    message_id = id_text(call.get("messageId"))
    if message_id is None:
        return None
    if len(message_id) <= 128 and _IDENTIFIER.match(message_id):
        return message_id
    return "seg-" + hashlib.sha256(f"{customer_id}:{message_id}".encode()).hexdigest()[:40]


def occurred_at_of(call: Mapping[str, Any], received_at: datetime) -> tuple[datetime, bool]:
    """(the call's time, whether its own `timestamp` was used): `timestamp`, else the time received."""
    value = call.get("timestamp")
    found = moment(value, received_at)
    if found is not None:
        return found, True
    return received_at, value is None


def map_call(call: Any, kind: str | None, received_at: datetime) -> Mapped:
    """One call (`kind`: its endpoint, or None for a batch item, which says its `type`)."""
    in_batch = kind is None
    if not isinstance(call, Mapping):
        raise CallInvalid("a call is a JSON object")
    kind = kind or call.get("type")
    if kind not in CALL_TYPES:
        raise CallInvalid(f"type {kind!r}: this API takes identify, track, page and alias calls")
    check_shape(call, kind, in_batch)
    customer_id = customer_id_of(call)
    occurred_at, own_time = occurred_at_of(call, received_at)
    dropped = [] if own_time else ["timestamp"]
    merges: list[str] = []
    anonymous_id = id_text(call.get("anonymousId"))
    if kind == "alias":
        previous = id_text(call.get("previousId"))
        if id_text(call.get("userId")) is None or previous is None:
            raise CallInvalid("an alias call needs the userId and the previousId that becomes it")
        mapped = {"type": "customer_merged", "properties": {"previous_id": ANONYMOUS_PREFIX + previous}}
        if previous != customer_id:
            merges.append(previous)  # an old customer id, as Segment's alias may also say
    elif kind == "identify":
        mapped = _identify(call, dropped)
        if anonymous_id is not None and not customer_id.startswith(ANONYMOUS_PREFIX):
            merges.append(ANONYMOUS_PREFIX + anonymous_id)
    elif kind == "page":
        mapped = _page(call)
    else:
        mapped = _track(call)
    event = {**mapped, "customer_id": customer_id, "occurred_at": occurred_at.isoformat()}
    event_id = event_id_of(call, customer_id)
    if event_id is not None:
        event["event_id"] = event_id
    return Mapped(event, dropped, merges)


def _identify(call: Mapping[str, Any], dropped: list[str]) -> dict[str, Any]:
    traits_in = mapping(call.get("traits"))
    context = mapping(call.get("context"))
    traits: dict[str, Any] = {}
    for name, ours in TRAIT_NAMES.items():
        if name in traits_in and traits_in[name] is not None:
            traits[ours] = traits_in[name]
    for name in ("locale", "timezone"):
        if name not in traits and isinstance(context.get(name), str):
            traits[name] = context[name]
    if "consent" not in traits and isinstance(traits_in.get(CONSENT_FLAG), bool):
        traits["consent"] = "opted_in" if traits_in[CONSENT_FLAG] else "opted_out"
    if isinstance(traits.get("birthday"), str) and len(traits["birthday"]) > 10 and traits["birthday"][4] == "-":
        traits["birthday"] = traits["birthday"][:10]  # an ISO date-time, as analytics.js sends dates
    return {"type": "customer_identified", "traits": traits}


def _page(call: Mapping[str, Any]) -> dict[str, Any]:
    properties = mapping(call.get("properties"))
    page = mapping(mapping(call.get("context")).get("page"))
    url = properties.get("url") if isinstance(properties.get("url"), str) else page.get("url")
    if isinstance(url, str) and url.strip():
        return {"type": "page_viewed", "properties": {"url": url.strip()}}
    name = call.get("name") if isinstance(call.get("name"), str) and call["name"].strip() else None
    return generic_track("Page Viewed", {**properties, **({"name": name} if name else {})})


def _track(call: Mapping[str, Any]) -> dict[str, Any]:
    name = call.get("event")
    if not isinstance(name, str) or not name.strip():
        raise CallInvalid("a track call needs its event's name (`event`)")
    name = name.strip()
    properties = mapping(call.get("properties"))
    ours = ECOMMERCE.get(name)
    change = "removed" if name == "Product Removed" else "added"
    typed = _ecommerce(ours, properties, change) if ours else None
    return typed or generic_track(name, properties)


def generic_track(name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A `track` event: the name and the flat properties as texts (nested values and long texts left out)."""
    attributes: dict[str, str] = {}
    for key, value in properties.items():
        if len(attributes) == MAX_TRACK_ATTRIBUTES:
            break
        if not isinstance(key, str) or len(key) > 128:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float | Decimal):
            text = str(value)
        elif isinstance(value, str):
            text = value
        else:
            continue
        if len(text) <= MAX_TEXT and _TEXT.match(text) and _TEXT.match(key):
            attributes[key] = text
    properties_out: dict[str, Any] = {"event": name[:MAX_TEXT]}
    if attributes:
        properties_out["attributes"] = attributes
    return {"type": "track", "properties": properties_out}


def _product_id(product: Mapping[str, Any]) -> str | None:
    """The e-commerce spec's product id: `product_id`, else `sku`, else `id`."""
    return id_text(product.get("product_id")) or id_text(product.get("sku")) or id_text(product.get("id"))


def _items(products: Any) -> list[dict[str, Any]] | None:
    """The e-commerce spec's `products` as our line items; None when one cannot be read."""
    if not isinstance(products, list):
        return None
    items = []
    for product in products:
        if not isinstance(product, Mapping):
            return None
        product_id = _product_id(product)
        price = number(product.get("price"))
        quantity = product.get("quantity", 1)
        if product_id is None or price is None or isinstance(quantity, bool) or not isinstance(quantity, int):
            return None
        name = product.get("name") if isinstance(product.get("name"), str) and product["name"].strip() \
            else product_id
        items.append({"product_id": product_id, "name": name, "quantity": quantity, "price": str(price)})
    return items


def _ecommerce(ours: str, properties: Mapping[str, Any], change: str = "") -> dict[str, Any] | None:
    """Our event for an e-commerce spec event, or None when it lacks what ours needs. `change`: added or
    removed, for a cart line."""
    currency = properties.get("currency")
    if ours == "product_viewed":
        product_id = _product_id(properties)
        if product_id is None:
            return None
        out: dict[str, Any] = {"product_id": product_id}
        if isinstance(properties.get("name"), str) and properties["name"].strip():
            out["name"] = properties["name"]
        price = number(properties.get("price"))
        if price is not None:
            out["price"] = str(price)
        if isinstance(currency, str):
            out["currency"] = currency
        return {"type": ours, "properties": out}
    if ours == "cart_updated":
        items = _items(properties.get("products", []))
        cart_id = id_text(properties.get("cart_id"))
        if items is None or cart_id is None or not isinstance(currency, str):
            return None
        value = sum((Decimal(i["price"]) * i["quantity"] for i in items), Decimal(0))
        return {"type": ours, "properties": {"cart_id": cart_id, "currency": currency, "value": str(value),
                                             "items": items}}
    if ours == "cart_line_changed":
        cart_id = id_text(properties.get("cart_id"))
        product_id = _product_id(properties)
        if cart_id is None or product_id is None:
            return None
        line: dict[str, Any] = {"cart_id": cart_id, "change": change, "product_id": product_id}
        if isinstance(properties.get("name"), str) and properties["name"].strip():
            line["name"] = properties["name"]
        price = number(properties.get("price"))
        if price is not None:
            line["price"] = str(price)
        quantity = properties.get("quantity")
        if isinstance(quantity, int) and not isinstance(quantity, bool):
            line["quantity"] = quantity
        if isinstance(currency, str):
            line["currency"] = currency
        return {"type": ours, "properties": line}
    if ours == "checkout_started":
        cart_id = id_text(properties.get("cart_id"))
        return {"type": ours, "properties": {"cart_id": cart_id} if cart_id else {}}
    order_id = id_text(properties.get("order_id"))
    if order_id is None:
        return None
    if ours != "order_placed":
        return {"type": ours, "properties": {"order_id": order_id}}
    items = _items(properties.get("products"))
    value = next((v for v in (number(properties.get(k)) for k in ("total", "revenue", "value")) if v is not None),
                 None)
    if not items or not isinstance(currency, str):
        return None
    if value is None:
        value = sum((Decimal(i["price"]) * i["quantity"] for i in items), Decimal(0))
    out = {"order_id": order_id, "currency": currency, "value": str(value), "items": items}
    if isinstance(properties.get("coupon"), str) and properties["coupon"].strip():
        out["coupon_code"] = properties["coupon"]
    return {"type": ours, "properties": out}


def fallback_track(call: Mapping[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """What a track call whose e-commerce event our models refused becomes: a `track` event, as any
    other name (nothing the shop sent is dropped without a trace)."""
    properties = mapping(call.get("properties"))
    name = str(call.get("event") or "").strip() or "Page Viewed"
    kept = {k: v for k, v in event.items() if k in ("customer_id", "occurred_at", "event_id")}
    return {**generic_track(name, properties), **kept}



@dataclass(frozen=True)
class ReadCall:
    event: Event
    dropped: tuple[str, ...]  # what was left out or read otherwise: refused traits, a replaced timestamp...
    merges: tuple[Event, ...] = ()  # customer_merged events that come with it

    @property
    def events(self) -> list[Event]:
        return [self.event, *self.merges]


def read_call(call: Any, kind: str | None, received_at: datetime) -> ReadCall:
    """One call as a checked event. A trait our models refuse is left out; an e-commerce event or a
    page they refuse is kept as a `track` event; anything else wrong is CallInvalid (Segment's 400)."""
    mapped = map_call(call, kind, received_at)
    body, dropped = mapped.event, list(mapped.dropped)
    body.setdefault("event_id", derived_event_id(body))
    merges = tuple(_parse(merge, received_at) for merge in _merge_events(body, mapped.merges))
    try:
        return ReadCall(_parse(body, received_at), tuple(dropped), merges)
    except EventInvalid as exc:
        problems = exc.errors
    fields = [str(e["field"]) for e in problems]
    if body["type"] == "customer_identified" and fields and all(f.startswith("traits.") for f in fields):
        refused = {f.split(".")[1] for f in fields}
        body = without_traits(body, refused)
        dropped += [f"traits.{name}" for name in sorted(refused)]
    elif body["type"] not in ("track", "customer_identified") and not any(
            f in ("customer_id", "event_id") for f in fields):
        assert isinstance(call, Mapping)
        body = fallback_track(call, body)
        dropped.append(f"{mapped.event['type']} (read as a track event: {EventInvalid(problems)})")
    else:
        raise CallInvalid(str(EventInvalid(problems)))
    try:
        return ReadCall(_parse(body, received_at), tuple(dropped), merges)
    except EventInvalid as exc:
        raise CallInvalid(str(exc)) from None


def _merge_events(body: Mapping[str, Any], previous_ids: list[str]) -> list[dict[str, Any]]:
    """A customer_merged event for each previous id, named after the call's event: a retried call
    merges once."""
    found = []
    for previous in previous_ids:
        merge = {"type": "customer_merged", "customer_id": body["customer_id"], "occurred_at": body["occurred_at"],
                 "properties": {"previous_id": previous}}
        found.append({**merge, "event_id": derived_event_id({**merge, "of": body["event_id"]})})
    return found


def _parse(body: dict[str, Any], received_at: datetime) -> Event:
    return parse_event(body, received_at, lambda: str(body["event_id"]))
