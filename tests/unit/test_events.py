"""Event validation, batch error reporting and the Kafka wire format."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import email_validator
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

import lifecycle.events as events_module
from lifecycle.events import (
    MAX_BATCH_EVENTS,
    BatchInvalid,
    CartUpdatedProperties,
    Consent,
    ConsentConfirmedProperties,
    EmailClickedProperties,
    Event,
    EventInvalid,
    EventType,
    MessageInvalid,
    OrderPlacedProperties,
    PageViewedProperties,
    Traits,
    parse_batch,
    parse_event,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"gen-{next(counter)}"


ITEM = {"product_id": "p1", "name": "Shirt", "quantity": 2, "price": 19.99}

# One valid example per type: every type must parse.
VALID: dict[str, dict[str, Any]] = {
    "customer_signed_up": {
        "traits": {
            "email": "ada@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "locale": "en-GB",
            "timezone": "Europe/London",
            "birthday": "1815-12-10",
            "consent": "pending",
        }
    },
    "customer_updated": {"traits": {"birthday": "--02-29", "consent": "opted_in"}},
    "consent_confirmed": {},
    "customer_merged": {"properties": {"previous_id": "anonymous:a-77"}},
    "unsubscribed": {"properties": {"message_id": "m1"}},
    "page_viewed": {"properties": {"url": "https://shop.example/p/1"}},
    "product_viewed": {"properties": {"product_id": "p1", "name": "Shirt", "price": "19.99", "currency": "eur"}},
    "cart_updated": {"properties": {"cart_id": "k1", "currency": "EUR", "value": 39.98, "items": [ITEM],
                                    "checkout_url": "https://shop.example/checkouts/k1/recover?key=a1"}},
    "checkout_started": {"properties": {"cart_id": "k1"}},
    "order_placed": {
        "properties": {
            "order_id": "o1",
            "currency": "EUR",
            "value": 39.98,
            "items": [ITEM],
            "coupon_code": "WELCOME10",
        }
    },
    "order_cancelled": {"properties": {"order_id": "o1"}},
    "order_refunded": {"properties": {"order_id": "o1"}},
    "email_opened": {"properties": {"journey": "welcome", "step": 1}},
    "email_clicked": {"properties": {"journey": "welcome", "step": "2", "link": "https://shop.example/x"}},
    "email_bounced": {"properties": {"message_id": "m1", "reason": "452 4.2.2 mailbox full", "kind": "soft"}},
    "email_complained": {},
    "customer_identified": {"traits": {"email": "ada@example.com", "first_name": "Ada", "consent": "opted_in"}},
    "track": {"properties": {"event": "Wishlist Added", "attributes": {"product_id": "p1", "list": "Summer"}}},
    "cart_line_changed": {"properties": {"cart_id": "k1", "change": "added", "product_id": "p1", "name": "Shirt",
                                         "price": "19.99", "quantity": 2, "currency": "EUR"}},
}


def body(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "customer_id": "c1", **VALID[kind], **extra}


def errors_of(obj: object) -> list[dict[str, str]]:
    with pytest.raises(EventInvalid) as caught:
        parse_event(obj, NOW, ids())
    return [{"field": e["field"], "message": e["message"]} for e in caught.value.errors]


def fields_of(obj: object) -> set[str]:
    return {e["field"] for e in errors_of(obj)}


def test_the_examples_cover_every_type() -> None:
    assert set(VALID) == {t.value for t in EventType}


@pytest.mark.parametrize("kind", [t.value for t in EventType])
def test_every_type_parses_and_round_trips(kind: str) -> None:
    event = parse_event(body(kind), NOW, ids())
    assert event.type is EventType(kind)
    assert Event.from_message(event.to_message()) == event


def test_defaults_filled_by_the_server() -> None:
    event = parse_event({"type": "consent_confirmed", "customer_id": "c1"}, NOW, lambda: "new-id")
    assert event.event_id == "new-id"
    assert event.occurred_at == NOW
    assert event.received_at == NOW
    assert event.traits is None
    assert isinstance(event.properties, ConsentConfirmedProperties)
    assert event.properties_as(ConsentConfirmedProperties).email is None
    assert event.to_message() == Event.from_message(event.to_message()).to_message()
    assert b"email" not in event.to_message()  # no email: on the wire as before


def test_consent_confirmed_may_name_the_confirmed_address() -> None:
    event = parse_event({"type": "consent_confirmed", "customer_id": "c1", "properties": {"email": "ana@example.com"}},
                        NOW, lambda: "e1")
    assert event.properties_as(ConsentConfirmedProperties).email == "ana@example.com"
    assert Event.from_message(event.to_message()) == event
    with pytest.raises(EventInvalid) as caught:
        parse_event({"type": "consent_confirmed", "customer_id": "c1", "properties": {"email": "nope"}},
                    NOW, lambda: "e1")
    assert [e["field"] for e in caught.value.errors] == ["properties.email"]


def test_null_event_id_and_occurred_at_mean_absent() -> None:
    event = parse_event(
        {"type": "consent_confirmed", "customer_id": "c1", "event_id": None, "occurred_at": None},
        NOW,
        lambda: "x",
    )
    assert (event.event_id, event.occurred_at) == ("x", NOW)


def test_generated_ids_are_used_only_when_missing() -> None:
    event = parse_event({**body("consent_confirmed"), "event_id": "mine"}, NOW, lambda: str(uuid.uuid4()))
    assert event.event_id == "mine"


def test_datetimes_are_normalised_to_utc() -> None:
    event = parse_event(body("page_viewed", occurred_at="2026-03-02T10:30:00.25+02:00"), NOW, ids())
    assert event.occurred_at == datetime(2026, 3, 2, 8, 30, 0, 250000, tzinfo=UTC)
    assert event.occurred_at.tzinfo is UTC
    received = parse_event(body("page_viewed"), NOW.astimezone(timezone(timedelta(hours=-5))), ids())
    assert received.received_at.tzinfo is UTC


def test_typed_access_to_properties() -> None:
    event = parse_event(body("cart_updated"), NOW, ids())
    cart = event.properties_as(CartUpdatedProperties)
    assert cart.items[0].price == Decimal("19.99")
    assert cart.items[0].quantity == 2
    assert cart.value == Decimal("39.98")
    with pytest.raises(TypeError, match="CartUpdatedProperties"):
        event.properties_as(OrderPlacedProperties)


def test_currency_is_upper_cased_and_step_kept_as_text() -> None:
    event = parse_event(body("product_viewed"), NOW, ids())
    assert event.properties.currency == "EUR"  # type: ignore[union-attr]
    opened = parse_event(body("email_opened"), NOW, ids())
    assert opened.properties.step == "1"  # type: ignore[union-attr]


def test_a_checkout_url_is_a_web_link() -> None:
    cart = {"cart_id": "k1", "currency": "EUR", "value": 0, "items": []}
    for url in ("javascript:alert(1)", "https://", "https://shop.example/a b", "ftp://shop.example/x",
                "https://user@shop.example/"):
        with pytest.raises(EventInvalid, match="checkout_url"):
            parse_event(body("cart_updated", properties={**cart, "checkout_url": url}), NOW, ids())
    event = parse_event(body("cart_updated", properties={**cart, "checkout_url": "HTTP://shop.example:8080"}),
                        NOW, ids())
    assert event.properties_as(CartUpdatedProperties).checkout_url == "HTTP://shop.example:8080"


def test_empty_cart_is_valid() -> None:
    event = parse_event(
        body("cart_updated", properties={"cart_id": "k1", "currency": "EUR", "value": 0, "items": []}),
        NOW,
        ids(),
    )
    assert event.properties_as(CartUpdatedProperties).items == ()


def test_traits_provided_keeps_absent_apart_from_cleared() -> None:
    event = parse_event(body("customer_updated", traits={"first_name": None, "consent": "opted_out"}), NOW, ids())
    assert event.traits is not None
    assert event.traits.provided() == {"first_name": None, "consent": Consent.OPTED_OUT}
    again = Event.from_message(event.to_message())
    assert again.traits is not None
    assert again.traits.provided() == {"first_name": None, "consent": Consent.OPTED_OUT}


def test_empty_traits_on_other_types_are_harmless() -> None:
    assert parse_event(body("page_viewed", traits={}), NOW, ids()).traits is None
    assert parse_event(body("page_viewed", traits=None), NOW, ids()).traits is None


# --- error paths ----------------------------------------------------------------------------


def test_not_an_object() -> None:
    assert errors_of([1, 2]) == [{"field": "", "message": "an event must be a JSON object"}]


def test_unknown_type_names_the_type_field() -> None:
    errors = errors_of({"type": "order_shipped", "customer_id": "c1", "properties": {"x": 1}})
    assert [e["field"] for e in errors] == ["type"]
    assert "order_shipped" in errors[0]["message"]
    assert "order_placed" in errors[0]["message"]


@pytest.mark.parametrize("value", [None, 5, ""])
def test_missing_or_non_string_type(value: object) -> None:
    assert "type" in fields_of({"type": value, "customer_id": "c1"})


def test_missing_type_and_customer() -> None:
    assert fields_of({}) == {"type", "customer_id"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("customer_id", ""),
        ("customer_id", "x" * 129),
        ("customer_id", " c1"),
        ("customer_id", "c\n1"),
        ("customer_id", 42),
        ("event_id", "x" * 129),
        ("event_id", ""),
    ],
)
def test_bad_identifiers(field: str, value: object) -> None:
    assert fields_of(body("consent_confirmed", **{field: value})) == {field}


def test_received_at_cannot_come_from_the_client() -> None:
    errors = errors_of(body("consent_confirmed", received_at="2026-03-02T09:00:00Z"))
    assert errors == [{"field": "received_at", "message": "received_at is set by the server; do not send it"}]


def test_received_at_error_is_reported_with_the_others() -> None:
    assert fields_of(body("consent_confirmed", received_at="x", customer_id="")) == {
        "received_at",
        "customer_id",
    }


def test_unknown_top_level_field_lists_the_allowed_ones() -> None:
    [error] = errors_of(body("consent_confirmed", propertys={}))
    assert error["field"] == "propertys"
    assert "properties" in error["message"]
    assert "received_at" not in error["message"]


@pytest.mark.parametrize(
    "value",
    [
        "2026-03-02T09:00:00",  # naive
        "2026-03-02 09:00:00",  # naive
    ],
)
def test_naive_datetime_is_refused(value: str) -> None:
    [error] = errors_of(body("consent_confirmed", occurred_at=value))
    assert error["field"] == "occurred_at"
    assert "offset" in error["message"]


@pytest.mark.parametrize("value", ["2026-03-02", "1772442000", 1772442000, "yesterday", "2026-13-02T09:00:00Z", True])
def test_malformed_datetime_is_refused(value: object) -> None:
    assert fields_of(body("consent_confirmed", occurred_at=value)) == {"occurred_at"}


def test_naive_python_datetime_is_refused() -> None:
    assert fields_of(body("consent_confirmed", occurred_at=datetime(2026, 3, 2, 9))) == {"occurred_at"}


def test_naive_received_at_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_event(body("consent_confirmed"), datetime(2026, 3, 2), ids())


def test_future_occurred_at() -> None:
    ok = parse_event(body("consent_confirmed", occurred_at=(NOW + timedelta(minutes=5)).isoformat()), NOW, ids())
    assert ok.occurred_at == NOW + timedelta(minutes=5)
    [error] = errors_of(body("consent_confirmed", occurred_at=(NOW + timedelta(minutes=5, seconds=1)).isoformat()))
    assert error["field"] == "occurred_at"
    assert "5 minutes" in error["message"]


def test_past_occurred_at_is_fine() -> None:
    event = parse_event(body("consent_confirmed", occurred_at="2020-01-01T00:00:00Z"), NOW, ids())
    assert event.occurred_at == datetime(2020, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("trait", "value"),
    [
        ("email", "not-an-email"),
        ("email", "a b@example.com"),
        ("email", 5),
        ("first_name", ""),
        ("first_name", "   "),
        ("locale", "english!"),
        ("timezone", "Mars/Olympus_Mons"),
        ("timezone", "/etc/passwd"),
        ("birthday", "1990-02-30"),
        ("birthday", "--13-01"),
        ("birthday", "02-01"),
        ("birthday", "1990-2-1"),
        ("consent", "yes"),
        ("favourite_colour", "blue"),
    ],
)
def test_bad_traits(trait: str, value: object) -> None:
    assert fields_of(body("customer_updated", traits={trait: value})) == {f"traits.{trait}"}


def test_traits_must_be_an_object() -> None:
    assert fields_of(body("customer_updated", traits=["email"])) == {"traits"}


def test_traits_refused_on_non_customer_types() -> None:
    [error] = errors_of(body("order_placed", traits={"email": "a@example.com"}))
    assert error["field"] == "traits"
    assert "customer_signed_up" in error["message"]


def test_properties_refused_on_types_without_them() -> None:
    [error] = errors_of(body("customer_signed_up", properties={"plan": "gold"}))
    assert error["field"] == "properties.plan"


def test_properties_must_be_an_object() -> None:
    assert fields_of(body("page_viewed", properties="https://x")) == {"properties"}


def test_properties_of_another_type_are_refused_when_built_in_code() -> None:
    # the properties field skips pydantic's own union check: the type's model is the only way in
    cart = CartUpdatedProperties(cart_id="k", currency="EUR", value=Decimal(1), items=())
    envelope = {"event_id": "e1", "customer_id": "c1", "received_at": NOW, "occurred_at": NOW}
    with pytest.raises(ValidationError, match="instance of PageViewedProperties"):
        Event.model_validate({**envelope, "type": "page_viewed", "properties": cart})
    event = Event.model_validate({**envelope, "type": "cart_updated", "properties": cart})
    assert event.properties is cart and event.properties_as(CartUpdatedProperties) is cart


def test_money_beyond_four_decimals_is_rounded_not_refused() -> None:
    # a client's float arithmetic is no error: 0.1 + 0.2 arrives as 0.30000000000000004
    event = parse_event({"type": "cart_updated", "customer_id": "c1", "properties": {
        "cart_id": "k", "currency": "EUR", "value": Decimal("0.30000000000000004"),
        "items": [{**ITEM, "price": Decimal("1.23456")}]}}, NOW, lambda: "e1")
    cart = event.properties_as(CartUpdatedProperties)
    assert cart.value == Decimal("0.3000") and cart.items[0].price == Decimal("1.2346")


@pytest.mark.parametrize(
    ("kind", "properties", "expected"),
    [
        ("page_viewed", {}, {"properties.url"}),
        ("page_viewed", {"url": ""}, {"properties.url"}),
        ("product_viewed", {"name": "x"}, {"properties.product_id"}),
        ("product_viewed", {"product_id": "p", "price": -1}, {"properties.price"}),
        ("product_viewed", {"product_id": "p", "currency": "EURO"}, {"properties.currency"}),
        (
            "cart_updated",
            {},
            {"properties.cart_id", "properties.currency", "properties.value", "properties.items"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "E1R", "value": 1, "items": []},
            {"properties.currency"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": "NaN", "items": []},
            {"properties.value"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": 100_000_000_000_000, "items": []},
            {"properties.value"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": True, "items": []},
            {"properties.value"},
        ),
        ("cart_updated", {"cart_id": "k", "currency": "EUR", "value": 1, "items": {}}, {"properties.items"}),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": 1, "items": [{**ITEM, "quantity": 0}]},
            {"properties.items.0.quantity"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": 1, "items": [{**ITEM, "quantity": 1.5}]},
            {"properties.items.0.quantity"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": 1, "items": [{**ITEM, "quantity": "2"}]},
            {"properties.items.0.quantity"},
        ),
        (
            "cart_updated",
            {"cart_id": "k", "currency": "EUR", "value": 1, "items": [ITEM, {"product_id": "p2", "qty": 1}]},
            {
                "properties.items.1.name",
                "properties.items.1.quantity",
                "properties.items.1.price",
                "properties.items.1.qty",
            },
        ),
        ("checkout_started", {"cart": "k1"}, {"properties.cart"}),
        ("order_placed", {"order_id": "o", "currency": "EUR", "value": 1, "items": []}, {"properties.items"}),
        ("order_placed", {"currency": "EUR", "value": 1, "items": [ITEM]}, {"properties.order_id"}),
        (
            "order_placed",
            {"order_id": "o", "currency": "EUR", "value": 1, "items": [ITEM], "coupon_code": ""},
            {"properties.coupon_code"},
        ),
        ("order_cancelled", {}, {"properties.order_id"}),
        ("order_refunded", {"order_id": 7}, {"properties.order_id"}),
        ("email_opened", {"journey": ""}, {"properties.journey"}),
        ("email_clicked", {"journey": "w", "step": "2"}, {"properties.link"}),
        ("email_clicked", {"journey": "w", "step": "intro", "link": "https://x"}, {"properties.step"}),
        ("email_clicked", {"journey": "w", "step": 0, "link": "https://x"}, {"properties.step"}),
        ("email_opened", {"step": "-1"}, {"properties.step"}),
        ("email_clicked", {"journey": "w", "step": True, "link": "https://x"}, {"properties.step"}),
        ("email_bounced", {"bounce": "hard"}, {"properties.bounce"}),
        ("email_bounced", {"kind": "permanent"}, {"properties.kind"}),
        ("unsubscribed", {"message_id": ""}, {"properties.message_id"}),
    ],
)
def test_bad_properties(kind: str, properties: dict[str, Any], expected: set[str]) -> None:
    assert fields_of({"type": kind, "customer_id": "c1", "properties": properties}) == expected


def test_unknown_property_lists_the_allowed_ones() -> None:
    properties = {"order_id": "o", "currency": "EUR", "value": 1, "items": [ITEM], "cupon": "X"}
    [error] = errors_of(body("order_placed", properties=properties))
    assert error["field"] == "properties.cupon"
    assert "coupon_code" in error["message"]


def test_an_order_with_one_bad_item_does_not_also_claim_the_list_is_empty() -> None:
    properties = {"order_id": "o", "currency": "EUR", "value": 1, "items": [{**ITEM, "price": -1}]}
    assert fields_of(body("order_placed", properties=properties)) == {"properties.items.0.price"}


def test_too_many_items() -> None:
    items = [ITEM] * (MAX_BATCH_EVENTS + 1)
    properties = {"cart_id": "k", "currency": "EUR", "value": 1, "items": items}
    assert fields_of(body("cart_updated", properties=properties)) == {"properties.items"}


def test_exact_money_from_decimal_json() -> None:
    raw = json.loads(
        '{"type":"cart_updated","customer_id":"c","properties":{"cart_id":"k","currency":"EUR",'
        '"value":0.30,"items":[{"product_id":"p","name":"n","quantity":3,"price":0.10}]}}',
        parse_float=Decimal,
    )
    cart = parse_event(raw, NOW, ids()).properties_as(CartUpdatedProperties)
    assert cart.value == Decimal("0.30")
    assert cart.items[0].price * 3 == cart.value


def test_event_is_frozen() -> None:
    event = parse_event(body("page_viewed"), NOW, ids())
    with pytest.raises(ValueError, match="frozen"):
        event.customer_id = "other"  # type: ignore[misc]


def test_isinstance_narrowing_works() -> None:
    event = parse_event(body("email_clicked"), NOW, ids())
    assert isinstance(event.properties, EmailClickedProperties)
    assert event.properties.link == "https://shop.example/x"
    assert not isinstance(event.properties, PageViewedProperties)


# --- batches --------------------------------------------------------------------------------


def test_single_event_payload() -> None:
    [event] = parse_batch(body("page_viewed"), NOW, ids())
    assert event.type is EventType.PAGE_VIEWED


def test_batch_payload() -> None:
    events = parse_batch({"events": [body(k) for k in VALID]}, NOW, ids())
    assert [e.type.value for e in events] == list(VALID)
    assert len({e.event_id for e in events}) == len(events)


def test_batch_lists_every_bad_event_and_field() -> None:
    payload = {
        "events": [
            body("page_viewed"),
            {"type": "nope", "customer_id": "c1"},
            body("page_viewed"),
            {
                "type": "cart_updated",
                "customer_id": "",
                "properties": {
                    "cart_id": "k",
                    "currency": "EUR",
                    "value": 1,
                    "items": [{**ITEM, "price": -1}],
                },
            },
            "not an object",
        ]
    }
    with pytest.raises(BatchInvalid) as caught:
        parse_batch(payload, NOW, ids())
    errors = caught.value.errors
    assert {(e["index"], e["field"]) for e in errors} == {
        (1, "type"),
        (3, "customer_id"),
        (3, "properties.items.0.price"),
        (4, ""),
    }
    assert caught.value.total == 5
    assert str(caught.value) == "3 of 5 events are invalid"
    assert all(e["message"] for e in errors)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"events": []}, "events"),
        ({"events": {}}, "events"),
        ({"events": [body("page_viewed")] * (MAX_BATCH_EVENTS + 1)}, "events"),
        ({"events": [body("page_viewed")], "extra": 1}, "extra"),
        ([body("page_viewed")], ""),
        ("text", ""),
        (None, ""),
    ],
)
def test_bad_payload_shapes(payload: object, field: str) -> None:
    with pytest.raises(BatchInvalid) as caught:
        parse_batch(payload, NOW, ids())
    assert [(e["index"], e["field"]) for e in caught.value.errors] == [(None, field)]


def test_batch_of_exactly_the_maximum() -> None:
    assert len(parse_batch({"events": [body("page_viewed")] * MAX_BATCH_EVENTS}, NOW, ids())) == MAX_BATCH_EVENTS


# --- wire format ----------------------------------------------------------------------------


def test_message_shape() -> None:
    event = parse_event(body("order_placed", event_id="e1", occurred_at="2026-03-02T10:00:00+01:00"), NOW, ids())
    message = json.loads(event.to_message())
    assert message["schema_version"] == 1
    assert message["event"]["occurred_at"] == "2026-03-02T09:00:00+00:00"
    assert message["event"]["received_at"] == "2026-03-02T09:00:00+00:00"
    assert message["event"]["properties"]["value"] == "39.98"
    assert message["event"]["type"] == "order_placed"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[]", "schema_version"),
        (b'{"event": {}}', "schema_version"),
        (b'{"schema_version": 2, "event": {}}', "unsupported event schema_version 2"),
        (b'{"schema_version": true, "event": {}}', "unsupported event schema_version True"),
        (b'{"schema_version": "1", "event": {}}', "unsupported"),
        (b'{"schema_version": 1, "event": {"type": "page_viewed"}}', "customer_id"),
        (b'{"schema_version": 1, "event": []}', "valid event"),
    ],
)
def test_unreadable_messages(data: bytes, match: str) -> None:
    with pytest.raises(MessageInvalid, match=match):
        Event.from_message(data)


def test_message_round_trip_is_byte_exact() -> None:
    event = parse_event(body("customer_signed_up"), NOW, ids())
    message = event.to_message()
    assert Event.from_message(message).to_message() == message


def test_python_constructed_event_round_trips() -> None:
    event = Event(
        event_id="e1",
        type=EventType.CUSTOMER_UPDATED,
        customer_id="c1",
        received_at=NOW,
        occurred_at=NOW,
        traits=Traits(email="a@example.com"),
    )
    assert Event.from_message(event.to_message()) == event


# --- JSON Schema ----------------------------------------------------------------------------


def test_json_schema_by_type_covers_every_type() -> None:
    schemas = Event.json_schema_by_type()
    assert set(schemas.by_type) == {t.value for t in EventType}
    cart = schemas.definitions["CartUpdatedEvent"]
    assert cart["properties"]["type"]["const"] == "cart_updated"
    assert "received_at" not in cart["properties"]
    assert set(schemas.definitions["CartUpdatedProperties"]["properties"]) == {
        "cart_id",
        "currency",
        "value",
        "items",
        "checkout_url",
    }
    assert "traits" in schemas.definitions["CustomerUpdatedEvent"]["properties"]
    assert "traits" not in schemas.definitions["OrderPlacedEvent"]["properties"]
    one_of = schemas.one_of()
    assert one_of["discriminator"]["mapping"]["order_placed"] == "#/$defs/OrderPlacedEvent"


# --- property test: the wire format round trip ----------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20)
_money = st.decimals(min_value=0, max_value=10**9, places=2, allow_nan=False, allow_infinity=False)
_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 3, 1), timezones=_offsets)
_items = st.lists(
    st.fixed_dictionaries({"product_id": _text, "name": _text, "quantity": st.integers(1, 1000), "price": _money}),
    max_size=5,
)
_traits = st.fixed_dictionaries(
    {},
    optional={
        "email": st.just("someone@example.com"),
        "first_name": st.one_of(st.none(), _text),
        "locale": st.sampled_from(["en", "de-DE", "pt_BR"]),
        "timezone": st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
        "birthday": st.sampled_from(["1990-01-31", "--02-29", None]),
        "consent": st.sampled_from(["opted_in", "pending", "opted_out"]),
    },
)


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(list(EventType)))
    raw: dict[str, Any] = {
        "type": kind.value,
        "customer_id": draw(_text),
        "occurred_at": draw(_moments).isoformat(),
    }
    if draw(st.booleans()):
        raw["event_id"] = draw(_text)
    if kind in (EventType.CUSTOMER_SIGNED_UP, EventType.CUSTOMER_UPDATED):
        raw["traits"] = draw(_traits)
    elif kind is EventType.CART_UPDATED:
        raw["properties"] = {
            "cart_id": draw(_text),
            "currency": "USD",
            "value": draw(_money),
            "items": draw(_items),
        }
    elif kind is EventType.ORDER_PLACED:
        raw["properties"] = {
            "order_id": draw(_text),
            "currency": "EUR",
            "value": draw(_money),
            "items": draw(_items.filter(bool)),
            **({"coupon_code": "C10"} if draw(st.booleans()) else {}),
        }
    else:
        raw.update({k: v for k, v in VALID[kind.value].items() if k == "properties"})
    return raw


@given(raw_events(), _moments)
def test_round_trip_property(raw: dict[str, Any], received: datetime) -> None:
    received = max(received, datetime.fromisoformat(raw["occurred_at"]))
    event = parse_event(raw, received, lambda: str(uuid.uuid4()))
    message = event.to_message()
    again = Event.from_message(message)
    assert again == event
    assert again.to_message() == message
    assert again.traits == event.traits
    # the wire format is exactly the compact UTF-8 JSON of the event's JSON form, as it always was
    assert message == json.dumps({"schema_version": 1, "event": event.model_dump(mode="json", exclude_unset=True)},
                                 ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    assert message == b'{"schema_version":1,"event":%s}' % event.model_dump_json(exclude_unset=True).encode()
    assert (again.traits.provided() if again.traits else None) == (event.traits.provided() if event.traits else None)


@pytest.mark.parametrize("name", ["tab\there", "two\nlines\r\nand more", 'quote " and \\ backslash',
                                  "line\u2028separator", "émoji 🛒 ½", "\u00a0padded\u3000"])
def test_text_that_json_escapes_is_written_as_pydantic_writes_it(name: str) -> None:
    raw = {"type": "cart_updated", "customer_id": "c-1", "occurred_at": "2025-01-01T10:00:00+02:00",
           "properties": {"cart_id": "k", "currency": "eur", "value": "1E+1",
                          "items": [{"product_id": "p", "name": name, "quantity": 2.0, "price": 0.30000000000000004}]}}
    event = parse_event(raw, NOW, lambda: "id-1")
    assert event.to_message() == b'{"schema_version":1,"event":%s}' % event.model_dump_json(exclude_unset=True).encode()
    assert Event.from_message(event.to_message()) == event


@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00Z", "0999-12-31T23:59:59.5Z", "1970-01-01T00:00:00-00:00",
                                         "2026-03-02T08:59:59.000001+00:00", "2000-02-29T12:00:00.123456789+01:30"])
def test_every_date_time_is_written_as_pydantic_writes_it(occurred_at: str) -> None:
    event = parse_event({"type": "customer_signed_up", "customer_id": "c", "occurred_at": occurred_at}, NOW,
                        lambda: "id-1")
    assert event.to_message() == b'{"schema_version":1,"event":%s}' % event.model_dump_json(exclude_unset=True).encode()


# --- the everyday-address fast path agrees with email-validator --------------------------------------

_EMAIL_ALPHABET = "aZ09.-_+!#'`~@xn-é\u00a0 .localtest"


def _full_check(value: str) -> str | None:
    try:
        return email_validator.validate_email(value, check_deliverability=False).normalized
    except email_validator.EmailNotValidError:
        return None


@given(st.one_of(st.from_regex(events_module._PLAIN_EMAIL, fullmatch=True),
                 st.text(alphabet=_EMAIL_ALPHABET, min_size=3, max_size=40)))
def test_every_address_the_fast_path_takes_the_full_check_takes_alike(value: str) -> None:
    fast = events_module._plain_email(value)
    if fast is not None:
        assert _full_check(value) == fast


@pytest.mark.parametrize("value", [
    "Ada.Lovelace@Example.COM", "o'brien+tag@mail.shop.example", "x@a.co",
    "x@xn--bcher-kva.com", "x@example.localhost", "x@ex.test", "a..b@x.com", "x@com", "x@a-.com",
    "x@1.2.3.4", "ü@example.com", "x@bücher.com", "a" * 65 + "@example.com", "x@" + "a." * 130 + "com",
])
def test_addresses_come_out_as_the_full_check_makes_them_or_are_refused_alike(value: str) -> None:
    expected = _full_check(value)
    if expected is None:
        with pytest.raises(ValidationError):
            Traits.model_validate({"email": value})
    else:
        assert Traits.model_validate({"email": value}).email == expected
