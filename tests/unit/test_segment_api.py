"""Segment's HTTP Tracking API on the ingest service, with a recording producer (no Kafka): the keys as
Segment's libraries send them, each call's mapping to our events, the limits and the errors."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from lifecycle.clock import ManualClock
from lifecycle.events import CustomerMergedProperties, Event, EventType
from lifecycle.events.kinds import Consent
from lifecycle.events.models import TrackProperties
from lifecycle.segmentio import read_call
from lifecycle.settings import Settings
from services.ingest.app import create_app
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2027, 3, 2, 9, 0, tzinfo=UTC)
BASIC = {"Authorization": "Basic " + base64.b64encode(b"write-key:").decode()}


def _app(producer: FakeProducer) -> Any:
    settings = Settings(api_keys="write-key", admin_keys="sha256:" + hashlib.sha256(b"admin-key").hexdigest(),
                        signing_secret="s", public_url="http://test")
    return create_app(settings, ManualClock(NOW), lambda: producer)


def published(producer: FakeProducer) -> list[Event]:
    return [Event.from_message(value) for _, _, value in producer.sent]


def read(call: dict[str, Any], kind: str | None = None) -> Event:
    return read_call(call, kind, NOW).event


async def test_the_key_as_segments_libraries_send_it() -> None:
    producer = FakeProducer()
    call = {"userId": "u1", "event": "Signed In", "messageId": "m-1"}
    async with lifespan_client(_app(producer)) as client:
        assert (await client.post("/v1/track", json=call, headers=BASIC)).json() == {"success": True}
        in_body = await client.post("/v1/track", json={**call, "messageId": "m-2", "writeKey": "write-key"})
        assert in_body.status_code == 200
        bearer = await client.post("/v1/track", json={**call, "messageId": "m-3"},
                                   headers={"Authorization": "Bearer write-key"})
        assert bearer.status_code == 200
        assert (await client.post("/v1/track", json=call)).status_code == 401
        wrong = {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()}
        assert (await client.post("/v1/track", json=call, headers=wrong)).status_code == 401
        admin = {"Authorization": "Basic " + base64.b64encode(b"admin-key:").decode()}
        assert (await client.post("/v1/track", json=call, headers=admin)).status_code == 403
    assert [e.event_id for e in published(producer)] == ["m-1", "m-2", "m-3"]


async def test_identify_track_page_and_batch_become_our_events() -> None:
    producer = FakeProducer()
    batch = {"batch": [
        {"type": "identify", "userId": "u1", "messageId": "b1", "timestamp": "2027-03-01T10:00:00Z",
         "traits": {"email": "ada@example.com", "firstName": "Ada", "consent": "opted_in", "plan": "pro"}},
        {"type": "track", "userId": "u1", "messageId": "b2", "event": "Order Completed", "properties": {
            "order_id": "o1", "total": 42.5, "currency": "EUR",
            "products": [{"product_id": "p1", "name": "Mug", "price": 21.25, "quantity": 2}]}},
        {"type": "page", "anonymousId": "a-9", "messageId": "b3", "properties": {"url": "https://shop.example/x"}},
    ], "context": {"locale": "fr-FR"}}
    async with lifespan_client(_app(producer)) as client:
        answer = await client.post("/v1/batch", json=batch, headers=BASIC)
        assert answer.status_code == 200, answer.text
    identify, order, page = published(producer)
    assert identify.type.value == "customer_identified" and identify.customer_id == "u1"
    assert identify.traits is not None and identify.traits.provided() == {
        "email": "ada@example.com", "first_name": "Ada", "locale": "fr-FR", "consent": "opted_in"}
    assert identify.occurred_at == datetime(2027, 3, 1, 10, 0, tzinfo=UTC)
    assert order.type.value == "order_placed" and str(order.properties.value) == "42.5"  # type: ignore[union-attr]
    assert page.type.value == "page_viewed" and page.customer_id == "anonymous:a-9"


def test_the_ecommerce_spec_and_everything_else() -> None:
    viewed = read({"userId": "u", "event": "Product Viewed", "properties": {"product_id": "p1", "price": 10}},
                  "track")
    assert viewed.type.value == "product_viewed"
    cart = read({"userId": "u", "event": "Cart Viewed", "properties": {
        "cart_id": "k1", "currency": "EUR", "products": [{"sku": "s1", "price": 5, "quantity": 3}]}}, "track")
    assert cart.type.value == "cart_updated" and str(cart.properties.value) == "15"  # type: ignore[union-attr]
    added = read({"userId": "u", "event": "Product Added", "properties": {
        "cart_id": "k1", "product_id": "p1", "name": "Mug", "price": 9, "quantity": 2}}, "track")
    assert added.type.value == "cart_line_changed"
    assert added.properties.model_dump(exclude_none=True) == {
        "cart_id": "k1", "change": "added", "product_id": "p1", "name": "Mug", "price": 9, "quantity": 2}
    removed = read({"userId": "u", "event": "Product Removed", "properties": {"cart_id": "k1", "sku": "p1"}},
                   "track")
    assert removed.properties.model_dump(exclude_none=True) == {
        "cart_id": "k1", "change": "removed", "product_id": "p1"}
    assert read({"userId": "u", "event": "Product Added", "properties": {"product_id": "p1"}},
                "track").type.value == "track"  # no cart id: a track event
    assert read({"userId": "u", "event": "Order Refunded", "properties": {"order_id": "o1"}},
                "track").type.value == "order_refunded"
    custom = read({"userId": "u", "event": "Wishlist Added", "properties": {
        "product_id": "p1", "price": 9.5, "nested": {"x": 1}, "flag": True}}, "track")
    assert custom.type.value == "track"
    assert custom.properties.model_dump() == {
        "event": "Wishlist Added", "attributes": {"product_id": "p1", "price": "9.5", "flag": "true"}}
    # an order our models cannot take (no products) is kept as a track event, never dropped
    kept = read_call({"userId": "u", "event": "Order Completed", "properties": {"order_id": "o2"}}, "track", NOW)
    assert kept.event.type.value == "track" and kept.event.properties_as(TrackProperties).event == "Order Completed"
    untyped = read_call({"userId": "u", "event": "Order Completed", "properties": {
        "order_id": "o3", "currency": "euros", "total": 5, "products": [{"product_id": "p", "price": 5}]}},
        "track", NOW)
    assert untyped.event.type.value == "track" and untyped.dropped[0].startswith("order_placed")
    # a trait we cannot read is left out; the rest is kept
    partly = read_call({"userId": "u", "traits": {"email": "not an address", "lastName": "Lin"}}, "identify", NOW)
    assert partly.event.traits is not None and partly.event.traits.provided() == {"last_name": "Lin"}
    assert partly.dropped == ("traits.email",)
    # a timestamp that cannot be read, or too far ahead, is the time received (and said so)
    late = read_call({"userId": "u", "event": "x", "timestamp": "yesterday"}, "track", NOW)
    assert late.event.occurred_at == NOW and late.dropped == ("timestamp",)
    ahead = read_call({"userId": "u", "event": "x", "timestamp": "2027-03-02T10:00:00Z"}, "track", NOW)
    assert ahead.event.occurred_at == NOW and ahead.dropped == ("timestamp",)
    opted_out = read({"userId": "u", "traits": {"email_consent": False}}, "identify").traits
    assert opted_out is not None and opted_out.provided() == {"consent": Consent.OPTED_OUT}


async def test_what_cannot_be_read_is_a_400_and_nothing_is_kept() -> None:
    producer = FakeProducer()
    async with lifespan_client(_app(producer)) as client:
        for path, body in [("/v1/track", {"userId": "u"}), ("/v1/identify", {"traits": {}}),
                           ("/v1/batch", {"batch": []}),
                           ("/v1/batch", {"batch": [{"type": "page", "userId": "u"}], "integrations": [None]}),
                           ("/v1/batch", {"batch": [{"type": "page", "userId": "u", "context": "x"}],
                                          "context": {"locale": "fr"}}),
                           ("/v1/identify", {"userId": "u", "traits": [None]}),
                           ("/v1/track", {"userId": " u", "event": "x"}),
                           ("/v1/track", {"userId": "u", "event": "x", "properties": []}),
                           ("/v1/page", {"userId": "u", "name": {}}),
                           ("/v1/alias", {"userId": "u"}),
                           ("/v1/alias", {"anonymousId": "a", "previousId": "b"}),
                           ("/v1/batch", {"batch": [{"type": "track", "userId": "u", "event": "ok"},
                                                    {"type": "alias", "userId": "u", "previousId": " a"}]}),
                           ("/v1/batch", {"batch": [{"type": "screen", "userId": "u"}]})]:
            answer = await client.post(path, json=body, headers=BASIC)
            assert answer.status_code == 400 and answer.json()["success"] is False, (path, answer.text)
            assert answer.json()["code"] == "invalid_request" and answer.json()["message"]
        too_big = {"userId": "u", "event": "Big", "properties": {"text": "x" * (33 * 1024)}}
        answer = await client.post("/v1/track", content=json.dumps(too_big), headers=BASIC)
        assert answer.status_code == 400 and "32 KB" in answer.json()["message"]
        broken = await client.post("/v1/track", content=b"{", headers=BASIC)
        assert broken.status_code == 400
    assert producer.sent == []


async def test_kafka_unavailable_is_a_503_to_retry() -> None:
    producer = FakeProducer()
    producer.send_error = OSError("broker down")
    async with lifespan_client(_app(producer)) as client:
        answer = await client.post("/v1/track", json={"userId": "u", "event": "x"}, headers=BASIC)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"


async def test_an_identify_with_both_ids_and_an_alias_merge_the_visitors_profile() -> None:
    producer = FakeProducer()
    async with lifespan_client(_app(producer)) as client:
        identify = {"userId": "u9", "anonymousId": "v-1", "messageId": "i-1", "traits": {"email": "u9@example.com"}}
        assert (await client.post("/v1/identify", json=identify, headers=BASIC)).status_code == 200
        again = await client.post("/v1/identify", json=identify, headers=BASIC)  # a retry: the same events
        assert again.status_code == 200
        alias = {"type": "alias", "userId": "u9", "previousId": "old-7", "messageId": "a-1"}
        assert (await client.post("/v1/batch", json={"batch": [alias]}, headers=BASIC)).status_code == 200
    events = published(producer)
    merged = [(e.customer_id, e.properties_as(CustomerMergedProperties).previous_id)
              for e in events if e.type is EventType.CUSTOMER_MERGED]
    assert [e.type for e in events[:2]] == [EventType.CUSTOMER_IDENTIFIED, EventType.CUSTOMER_MERGED]
    assert merged == [("u9", "anonymous:v-1"), ("u9", "anonymous:v-1"),
                      ("u9", "anonymous:old-7"), ("u9", "old-7")]
    assert events[1].event_id == events[3].event_id  # the retry's merge counts once downstream
    assert len({e.event_id for e in events[4:]}) == 2
    # a visitor identifying without a userId, and a customer without an anonymousId, merge nothing
    assert read_call({"anonymousId": "v-2", "traits": {}}, "identify", NOW).merges == ()
    assert read_call({"userId": "u9", "traits": {}}, "identify", NOW).merges == ()
    same = read_call({"userId": "u9", "previousId": "u9"}, "alias", NOW)
    assert [e.properties_as(CustomerMergedProperties).previous_id for e in same.events] == ["anonymous:u9"]
