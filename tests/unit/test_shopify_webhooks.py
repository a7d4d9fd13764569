"""Shopify's webhooks: each topic's payload (fixtures in Shopify's documented shapes) read as our events,
and the route with a recording producer (no Kafka): the signature under either of two secrets, what is
refused with nothing published, a webhook delivered again, Kafka away."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from lifecycle.clock import ManualClock
from lifecycle.events import Event
from lifecycle.events.kinds import Consent
from lifecycle.events.models import CartUpdatedProperties, OrderPlacedProperties
from lifecycle.settings import Settings
from lifecycle.shopify import Delivery, KnownOrder, ReadWebhook, guest_id, read_webhook, refunded_event_id
from services.ingest.app import create_app
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shopify"
SECRET, NEXT_SECRET = "shpss_current", "shpss_next"
URL = "/v1/webhooks/shopify"


def fixture(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return payload


def read(topic: str, payload: dict[str, Any], webhook_id: str = "w-1", order: KnownOrder | None = None) -> ReadWebhook:
    return read_webhook(payload, Delivery(topic, webhook_id, NOW, order))


def test_a_customer_with_their_marketing_consent() -> None:
    [identified] = read("customers/create", fixture("customers_create")).events
    assert identified.type.value == "customer_identified" and identified.customer_id == "706405506930370084"
    assert identified.traits is not None and identified.traits.provided() == {
        "email": "bob@biller.com", "first_name": "Bob", "last_name": "Biller", "consent": Consent.OPTED_IN}
    assert identified.occurred_at == datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    consents = {}
    for state in ("subscribed", "pending", "unsubscribed", "redacted", "not_subscribed"):
        customer = fixture("customers_create")
        customer["email_marketing_consent"]["state"] = state
        [event] = read("customers/update", customer).events
        assert event.traits is not None
        consents[state] = event.traits.provided().get("consent")
    assert consents == {"subscribed": Consent.OPTED_IN, "pending": Consent.PENDING,
                        "unsubscribed": Consent.OPTED_OUT, "redacted": Consent.OPTED_OUT, "not_subscribed": None}
    # an address that is none is left out, the rest kept
    customer = {**fixture("customers_create"), "email": "not an address"}
    partly = read("customers/update", customer)
    assert partly.left_out == ("traits.email",)
    assert partly.events[0].traits is not None and "email" not in partly.events[0].traits.provided()


def test_a_checkout_is_the_customer_and_their_cart() -> None:
    identified, cart, started = read("checkouts/create", fixture("checkouts_create")).events
    assert {e.customer_id for e in (identified, cart, started)} == {"603851970716743426"}
    assert identified.traits is not None and identified.traits.provided() == {
        "email": "example@email.com", "first_name": "John", "last_name": "Smith", "locale": "en",
        # the customer's own state says nothing (not_subscribed): the box ticked at checkout does
        "consent": Consent.OPTED_IN}
    properties = cart.properties_as(CartUpdatedProperties)
    assert properties.cart_id == "123123123" and properties.currency == "USD" and properties.value == Decimal("398.00")
    assert [(i.product_id, i.name, i.quantity, i.price) for i in properties.items] == [
        ("632910392", "IPod Nano - 8GB - Pink", 1, Decimal("199.00")),
        ("632910392", "IPod Nano - 8GB - Black", 1, Decimal("199.00"))]
    assert properties.checkout_url == \
        "https://checkout.local/548380009/checkouts/123123123/recover?key=example-secret-token"
    assert started.type.value == "checkout_started"
    # an update is the cart again, without starting the checkout again; a box left unticked withdraws nothing
    update = {**fixture("checkouts_create"), "buyer_accepts_marketing": False}
    identified, cart = read("checkouts/update", update).events
    assert identified.traits is not None and "consent" not in identified.traits.provided()
    assert cart.type.value == "cart_updated"
    # completed, the checkout is an order: the cart is empty
    completed = {**fixture("checkouts_create"), "completed_at": "2026-12-01T10:30:00-05:00"}
    _, emptied = read("checkouts/update", completed).events
    assert emptied.properties_as(CartUpdatedProperties).items == ()
    assert emptied.occurred_at == datetime(2026, 12, 1, 15, 30, tzinfo=UTC)


def test_a_guest_is_known_by_their_address() -> None:
    guest = {k: v for k, v in fixture("checkouts_create").items() if k != "customer"}
    identified, cart, _ = read("checkouts/create", guest).events
    assert identified.customer_id == cart.customer_id == guest_id("Example@Email.com")
    order = {k: v for k, v in fixture("orders_create").items() if k != "customer"}
    order["email"] = " EXAMPLE@email.com"
    assert {e.customer_id for e in read("orders/create", order).events} == {guest_id("example@email.com")}
    nobody = {k: v for k, v in guest.items() if k != "email"}
    assert read("checkouts/create", nobody) == ReadWebhook([], ("no_customer",))


def test_orders_placed_and_cancelled() -> None:
    identified, placed = read("orders/create", fixture("orders_create")).events
    assert identified.customer_id == placed.customer_id == "115310627314723954"
    assert identified.traits is not None and identified.traits.provided()["consent"] == Consent.OPTED_IN
    order = placed.properties_as(OrderPlacedProperties)
    assert (order.order_id, order.currency, order.value, order.coupon_code) == (
        "820982911946154508", "USD", Decimal("403.00"), "WELCOME10")
    assert [i.name for i in order.items] == ["IPod Nano - 8GB", "IPod Nano - 8GB"]
    assert placed.occurred_at == datetime(2026, 12, 1, 17, 0, tzinfo=UTC)
    [cancelled] = read("orders/cancelled", fixture("orders_cancelled")).events
    assert cancelled.type.value == "order_cancelled" and cancelled.customer_id == "115310627314723954"
    assert cancelled.occurred_at == datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    # an order our models cannot take (no lines) keeps its customer, and says so
    empty = read("orders/create", {**fixture("orders_create"), "line_items": []})
    assert [e.type.value for e in empty.events] == ["customer_identified"]
    assert empty.left_out[0].startswith("order_placed")


def test_a_refund_is_our_refund_only_when_it_pays_back_the_whole_order() -> None:
    refund = fixture("refunds_create")  # 199.00 back
    whole = KnownOrder("115310627314723954", Decimal("199.00"), voided=False)
    [refunded] = read("refunds/create", refund, order=whole).events
    assert refunded.type.value == "order_refunded" and refunded.customer_id == "115310627314723954"
    assert refunded.properties.order_id == "820982911946154508"  # type: ignore[union-attr]
    partial = read("refunds/create", refund, order=KnownOrder("115310627314723954", Decimal("403.00"), False))
    assert partial == ReadWebhook([], ("refund (partial)",))
    assert read("refunds/create", refund) == ReadWebhook([], ("refund (order unknown)",))
    failed = copy.deepcopy(refund)
    failed["transactions"][0]["status"] = "failure"
    assert read("refunds/create", failed, order=whole).left_out == ("refund (partial)",)


def test_an_order_repaid_by_several_refunds_is_refunded_once_its_update_says_so() -> None:
    # each of two refunds repays part of the order; Shopify then updates the order to `refunded`
    updated = fixture("orders_updated")
    [refunded] = read("orders/updated", updated, "w-update-1").events
    assert (refunded.type.value, refunded.customer_id) == ("order_refunded", "115310627314723954")
    assert refunded.properties.order_id == "820982911946154508"  # type: ignore[union-attr]
    assert refunded.occurred_at == datetime(2026, 12, 3, 15, 15, tzinfo=UTC)
    assert refunded.event_id == refunded_event_id("820982911946154508")
    # any later update of the refunded order, and a whole refund of it, make the same event: it counts once
    [later] = read("orders/updated", {**updated, "tags": "vip"}, "w-update-2").events
    whole = KnownOrder("115310627314723954", Decimal("199.00"), voided=False)
    [by_refund] = read("refunds/create", fixture("refunds_create"), "w-refund", order=whole).events
    assert later.event_id == by_refund.event_id == refunded.event_id
    # every other update is another topic's to say: nothing is made, nothing left out
    for status in ("paid", "partially_refunded", "voided", None):
        assert read("orders/updated", {**updated, "financial_status": status}) == ReadWebhook([], ())
    assert read("orders/updated", {**updated, "id": None}).left_out == ("order_refunded (no id)",)


def test_the_same_webhook_makes_the_same_event_ids() -> None:
    first = [e.event_id for e in read("orders/create", fixture("orders_create"), "w-7").events]
    again = [e.event_id for e in read("orders/create", fixture("orders_create"), "w-7").events]
    other = [e.event_id for e in read("orders/create", fixture("orders_create"), "w-8").events]
    assert first == again and len(set(first)) == 2 and not set(first) & set(other)


# --- the route -----------------------------------------------------------------------------------------


def _app(producer: FakeProducer, secrets: str = f"{SECRET},{NEXT_SECRET}",
         orders: dict[str, KnownOrder] | None = None) -> Any:
    settings = Settings(api_keys="write-key", signing_secret="s", public_url="http://test", shopify_secrets=secrets)

    async def order_reader(order_id: str) -> KnownOrder | None:
        return (orders or {}).get(order_id)

    return create_app(settings, ManualClock(NOW), lambda: producer, order_reader=order_reader)


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def headers(topic: str, body: bytes, webhook_id: str = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
            signature: str | None = None) -> dict[str, str]:
    found = {"X-Shopify-Topic": topic, "X-Shopify-Webhook-Id": webhook_id, "Content-Type": "application/json",
             "X-Shopify-Shop-Domain": "shop.myshopify.com", "X-Shopify-API-Version": "2025-04"}
    found["X-Shopify-Hmac-SHA256"] = sign(body) if signature is None else signature
    return found


def published(producer: FakeProducer) -> list[Event]:
    return [Event.from_message(value) for _, _, value in producer.sent]


async def test_signed_under_either_secret_and_published() -> None:
    producer = FakeProducer()
    body = json.dumps(fixture("checkouts_create")).encode()
    async with lifespan_client(_app(producer)) as client:
        answer = await client.post(URL, content=body, headers=headers("checkouts/create", body))
        assert answer.status_code == 200 and answer.json() == {"outcome": "accepted", "events": 3}
        # during a rotation, Shopify signs with the new secret
        rotated = headers("checkouts/update", body, "w-2", sign(body, NEXT_SECRET))
        assert (await client.post(URL, content=body, headers=rotated)).json()["outcome"] == "accepted"
    assert [e.type.value for e in published(producer)] == [
        "customer_identified", "cart_updated", "checkout_started", "customer_identified", "cart_updated"]


async def test_a_bad_or_missing_signature_is_a_401_and_nothing_is_published() -> None:
    producer = FakeProducer()
    body = json.dumps(fixture("orders_create")).encode()
    async with lifespan_client(_app(producer)) as client:
        for signature in ("", sign(body, "another secret"), sign(body + b" "), "not base64 at all"):
            answer = await client.post(URL, content=body, headers=headers("orders/create", body, signature=signature))
            assert answer.status_code == 401 and "X-Shopify-Hmac-SHA256" in answer.json()["detail"]
        unsigned = {k: v for k, v in headers("orders/create", body).items() if k != "X-Shopify-Hmac-SHA256"}
        assert (await client.post(URL, content=body, headers=unsigned)).status_code == 401
        # altered after signing
        altered = body.replace(b"403.00", b"4.03")
        assert (await client.post(URL, content=altered, headers=headers("orders/create", body))).status_code == 401
    assert producer.sent == []


async def test_without_a_secret_the_route_is_off() -> None:
    producer = FakeProducer()
    body = json.dumps(fixture("orders_create")).encode()
    async with lifespan_client(_app(producer, secrets="")) as client:
        answer = await client.post(URL, content=body, headers=headers("orders/create", body))
        unsigned = {k: v for k, v in headers("orders/create", body).items() if k != "X-Shopify-Hmac-SHA256"}
        assert (await client.post(URL, content=body, headers=unsigned)).status_code == 401
    assert answer.status_code == 404 and "LIFECYCLE_SHOPIFY_SECRETS" in answer.json()["detail"]
    assert producer.sent == []


async def test_a_webhook_delivered_again_is_published_once() -> None:
    producer = FakeProducer()
    body = json.dumps(fixture("orders_create")).encode()
    async with lifespan_client(_app(producer)) as client:
        first = await client.post(URL, content=body, headers=headers("orders/create", body))
        again = await client.post(URL, content=body, headers=headers("orders/create", body))
    assert first.json() == {"outcome": "accepted", "events": 2}
    assert again.status_code == 200 and again.json() == {"outcome": "duplicate", "events": 0}
    assert len(producer.sent) == 2


async def test_topics_not_read_unreadable_bodies_and_kafka_away() -> None:
    producer = FakeProducer()
    async with lifespan_client(_app(producer)) as client:
        body = json.dumps({"id": 1}).encode()
        ignored = await client.post(URL, content=body, headers=headers("products/update", body))
        assert ignored.status_code == 200 and ignored.json() == {"outcome": "ignored", "events": 0}
        for broken in (b"[1, 2]", b"{", b""):
            answer = await client.post(URL, content=broken, headers=headers("orders/create", broken))
            assert answer.status_code == 400, broken
        no_topic = {k: v for k, v in headers("orders/create", body).items() if k != "X-Shopify-Topic"}
        assert (await client.post(URL, content=body, headers=no_topic)).status_code == 400
        # a signed webhook that makes nothing (no customer, no address) is answered: Shopify would only retry it
        nobody = json.dumps({"id": 2, "token": "t", "line_items": []}).encode()
        kept = await client.post(URL, content=nobody, headers=headers("checkouts/create", nobody))
        assert kept.json() == {"outcome": "nothing_kept", "events": 0}
        assert producer.sent == []
        producer.send_error = OSError("broker down")
        order = json.dumps(fixture("orders_create")).encode()
        away = await client.post(URL, content=order, headers=headers("orders/create", order, "w-9"))
        assert away.status_code == 503 and away.headers["Retry-After"] == "5"
        producer.send_error = None
        # not remembered as published: delivered again, it is
        back = await client.post(URL, content=order, headers=headers("orders/create", order, "w-9"))
        assert back.json() == {"outcome": "accepted", "events": 2}


async def test_a_refund_is_read_against_the_order_it_names() -> None:
    producer = FakeProducer()
    orders = {"820982911946154508": KnownOrder("115310627314723954", Decimal("199.00"), False)}
    body = json.dumps(fixture("refunds_create")).encode()
    async with lifespan_client(_app(producer, orders=orders)) as client:
        answer = await client.post(URL, content=body, headers=headers("refunds/create", body))
    assert answer.json() == {"outcome": "accepted", "events": 1}
    [refunded] = published(producer)
    assert refunded.type.value == "order_refunded" and refunded.customer_id == "115310627314723954"
