"""Open pixel and click redirect: signed tokens, no open redirect, a GIF whatever happens.

The app runs in-process (httpx + ASGITransport) with a fake Kafka producer that records
what would be published, and an in-memory message store standing in for `sends`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.exc import OperationalError
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from lifecycle.clock import ManualClock
from lifecycle.events import EmailClickedProperties, EmailOpenedProperties, EventType
from lifecycle.settings import Settings
from lifecycle.tokens import InvalidToken, MalformedToken, SigningKeys, sign, unsubscribe_token
from lifecycle.tracking import (
    CLICK_PURPOSE,
    click_url,
    open_pixel_url,
    preferences_url,
    read_click_token,
    read_open_token,
    read_tracking_token,
)
from services.ingest import tracking
from services.ingest.app import create_app
from services.ingest.tracking import PIXEL_GIF
from tests.support.ingest import FakeProducer, lifespan_client, metrics_text

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "test-signing-secret"
MESSAGE = "<41.2.abcdef@shop.example>"
SHOP_LINK = "https://shop.example/cart?utm_source=email"
SETTINGS = Settings(signing_secret=SECRET, public_url="http://test", api_keys="key-one")
KEYS = SigningKeys.from_settings(SETTINGS)
GUESSED_KEYS = SigningKeys.from_secret("guess")  # what a forger without the secret has


class Messages:
    """The `sends` table as the message reader sees it."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {
            MESSAGE: {
                "customer_id": "c1",
                "journey": "abandoned_cart",
                "step": 2,
                "variant": "b",
                "links": [{"name": "cart", "url": SHOP_LINK}, {"name": "product", "url": "https://shop.example/p/9"}],
            }
        }
        self.error: Exception | None = None

    async def __call__(self, message_id: str) -> Mapping[str, object] | None:
        if self.error is not None:
            raise self.error
        return self.rows.get(message_id)


class Harness:
    def __init__(self, with_reader: bool = True, **settings: Any) -> None:
        self.producer = FakeProducer()
        self.messages = Messages()
        self.seconds = 0.0  # the rate limits' monotonic clock
        self.app: FastAPI = create_app(
            SETTINGS.model_copy(update=settings),
            ManualClock(NOW),
            lambda: self.producer,
            message_reader=self.messages if with_reader else None,
            monotonic=lambda: self.seconds,
        )

    def client(self) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return lifespan_client(self.app)


@pytest.fixture
def harness() -> Harness:
    return Harness()


def path_of(url: str) -> str:
    assert url.startswith("http://test/")
    return url[len("http://test") :]


def alter_payload(token: str, **changes: str) -> str:
    """The same signature over a changed payload: what someone editing a link would try."""
    body, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() + "." + signature


def click_path(index: int = 0, message_id: str = MESSAGE, customer_id: str = "c1") -> str:
    return path_of(click_url(SETTINGS, KEYS, message_id, customer_id, index))


def open_path(message_id: str = MESSAGE, customer_id: str = "c1") -> str:
    return path_of(open_pixel_url(SETTINGS, KEYS, message_id, customer_id))


def assert_pixel(response: httpx.Response) -> None:
    assert response.status_code == 200
    assert response.content == PIXEL_GIF
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert response.headers["pragma"] == "no-cache"


# --- tokens -----------------------------------------------------------------------------------


def test_urls_carry_signed_tokens() -> None:
    pixel = open_pixel_url(SETTINGS, KEYS, MESSAGE, "c1")
    assert pixel.startswith("http://test/t/o/") and pixel.endswith(".gif")
    claim = read_open_token(KEYS, pixel[len("http://test/t/o/") : -len(".gif")])
    assert (claim.message_id, claim.customer_id, claim.link_index) == (MESSAGE, "c1", None)
    link = click_url(SETTINGS, KEYS, MESSAGE, "c1", 3)
    claim = read_click_token(KEYS, link.rsplit("/", 1)[1])
    assert (claim.purpose, claim.message_id, claim.customer_id, claim.link_index) == (CLICK_PURPOSE, MESSAGE, "c1", 3)


def test_a_trailing_slash_in_public_url_makes_no_double_slash() -> None:
    settings = SETTINGS.model_copy(update={"public_url": "https://t.shop.example/"})
    assert open_pixel_url(settings, KEYS, "m", "c").startswith("https://t.shop.example/t/o/")
    assert click_url(settings, KEYS, "m", "c", 0).startswith("https://t.shop.example/t/c/")
    assert preferences_url(settings, KEYS, "c", "m").startswith("https://t.shop.example/v1/preferences/")


def test_negative_link_index_is_refused() -> None:
    with pytest.raises(ValueError, match="link_index"):
        click_url(SETTINGS, KEYS, MESSAGE, "c1", -1)


def test_purposes_do_not_mix() -> None:
    open_token = open_path().removeprefix("/t/o/").removesuffix(".gif")
    click_token = click_path().removeprefix("/t/c/")
    with pytest.raises(InvalidToken):
        read_click_token(KEYS, open_token)
    with pytest.raises(InvalidToken):
        read_open_token(KEYS, click_token)
    with pytest.raises(InvalidToken):
        read_open_token(KEYS, unsubscribe_token(KEYS, "c1", MESSAGE))


def test_forged_or_altered_tokens_are_refused() -> None:
    token = click_path(0).removeprefix("/t/c/")
    with pytest.raises(InvalidToken):
        read_click_token(KEYS, alter_payload(token, i="1"))
    with pytest.raises(InvalidToken):
        read_click_token(KEYS, alter_payload(token, c="c2"))
    forged = click_url(SETTINGS, GUESSED_KEYS, MESSAGE, "c1", 0)
    with pytest.raises(InvalidToken):
        read_click_token(KEYS, forged.rsplit("/", 1)[1])
    with pytest.raises(MalformedToken):
        read_tracking_token(KEYS, "not-a-token")


@pytest.mark.parametrize("index", ["-1", "01", "1.0", "²", "", "9999999"])
def test_odd_link_indexes_are_refused_even_when_signed(index: str) -> None:
    token = sign(KEYS, {"p": CLICK_PURPOSE, "m": MESSAGE, "c": "c1", "i": index})
    with pytest.raises(InvalidToken):
        read_click_token(KEYS, token)


# --- the open pixel ---------------------------------------------------------------------------


async def test_pixel_records_one_open_with_the_message_details(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get(open_path())
    assert_pixel(response)
    [event] = harness.producer.events()
    assert event.type is EventType.EMAIL_OPENED
    assert event.customer_id == "c1"
    assert event.occurred_at == NOW
    assert event.properties_as(EmailOpenedProperties).model_dump() == {
        "journey": "abandoned_cart",
        "step": "2",
        "message_id": MESSAGE,
    }


async def test_each_fetch_is_its_own_open(harness: Harness) -> None:
    async with harness.client() as client:
        await client.get(open_path())
        harness.seconds += 60  # one open per pixel a minute is recorded
        await client.get(open_path())
    first, second = harness.producer.events()
    assert first.event_id != second.event_id


@pytest.mark.parametrize(
    "path",
    [
        "/t/o/garbage.gif",
        "/t/o/a.b.gif",
        "FORGED",
        "CLICK",
        "UNSUBSCRIBE",
        "ALTERED",
    ],
)
async def test_pixel_is_a_gif_for_any_token_and_records_nothing_for_a_bad_one(harness: Harness, path: str) -> None:
    token = open_path().removeprefix("/t/o/").removesuffix(".gif")
    path = {
        "FORGED": path_of(open_pixel_url(SETTINGS, GUESSED_KEYS, MESSAGE, "c1")),
        "CLICK": f"/t/o/{click_path().removeprefix('/t/c/')}.gif",
        "UNSUBSCRIBE": f"/t/o/{unsubscribe_token(KEYS, 'c1', MESSAGE)}.gif",
        "ALTERED": f"/t/o/{alter_payload(token, c='c2')}.gif",
    }.get(path, path)
    async with harness.client() as client:
        response = await client.get(path)
    assert_pixel(response)  # the same answer: a scanner learns nothing
    assert harness.producer.sent == []


async def test_pixel_when_kafka_is_down_is_still_a_gif(harness: Harness) -> None:
    harness.producer.ack_error = KafkaConnectionError("down")
    async with harness.client() as client:
        response = await client.get(open_path())
        exported = metrics_text()
    assert_pixel(response)
    assert harness.producer.sent == []
    assert 'lifecycle_ingest_tracking_total{kind="open",outcome="not_recorded"}' in exported


async def test_pixel_when_the_message_store_is_down_records_the_open_without_details(harness: Harness) -> None:
    harness.messages.error = OperationalError("SELECT", {}, ConnectionRefusedError("no database"))
    async with harness.client() as client:
        response = await client.get(open_path())
    assert_pixel(response)
    [event] = harness.producer.events()
    assert event.properties_as(EmailOpenedProperties).model_dump() == {
        "journey": None,
        "step": None,
        "message_id": MESSAGE,
    }


async def test_pixel_for_another_customers_message_records_nothing(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get(open_path(customer_id="c2"))
    assert_pixel(response)
    assert harness.producer.sent == []


# --- the click redirect -----------------------------------------------------------------------


async def test_click_records_then_redirects_to_the_stored_link(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get(click_path(0))
        # Published before the answer: the event is there when the shopper is redirected.
        assert len(harness.producer.sent) == 1
        second = await client.get(click_path(1))
    assert response.status_code == 302
    assert response.headers["location"] == SHOP_LINK
    assert "no-store" in response.headers["cache-control"]
    assert second.headers["location"] == "https://shop.example/p/9"
    first_event, second_event = harness.producer.events()
    assert first_event.type is EventType.EMAIL_CLICKED
    assert first_event.customer_id == "c1"
    assert first_event.properties_as(EmailClickedProperties).model_dump() == {
        "journey": "abandoned_cart",
        "step": "2",
        "link": "cart",
        "message_id": MESSAGE,
    }
    assert second_event.properties_as(EmailClickedProperties).link == "product"


@pytest.mark.parametrize(
    "query",
    [
        "?url=https://evil.example/",
        "?next=https%3A%2F%2Fevil.example%2F",
        "?redirect=//evil.example&i=1",
        "?location=javascript:alert(1)",
    ],
)
async def test_no_open_redirect_through_the_query(harness: Harness, query: str) -> None:
    async with harness.client() as client:
        response = await client.get(click_path(0) + query)
    assert response.status_code == 302
    assert response.headers["location"] == SHOP_LINK


async def test_forged_click_token_is_404_without_redirect(harness: Harness) -> None:
    forged = click_url(SETTINGS, GUESSED_KEYS, MESSAGE, "c1", 0)
    async with harness.client() as client:
        response = await client.get(path_of(forged))
        exported = metrics_text()
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert harness.producer.sent == []
    assert 'lifecycle_ingest_tracking_total{kind="click",outcome="invalid_token"}' in exported


async def test_altered_link_index_or_customer_is_refused(harness: Harness) -> None:
    token = click_path(0).removeprefix("/t/c/")
    async with harness.client() as client:
        for altered in (alter_payload(token, i="1"), alter_payload(token, c="c2"), alter_payload(token, m="x")):
            response = await client.get(f"/t/c/{altered}")
            assert response.status_code == 404
            assert "location" not in response.headers
        garbled = await client.get(f"/t/c/{token.split('.')[0]}")  # the signature is gone
    assert garbled.status_code == 400
    assert "location" not in garbled.headers
    assert harness.producer.sent == []


@pytest.mark.parametrize(
    "path",
    [
        click_path(2),  # out of range
        click_path(0, message_id="<unknown@shop.example>"),
        click_path(0, customer_id="c2"),  # validly signed, but the message is c1's
        open_path().removesuffix(".gif").replace("/t/o/", "/t/c/"),  # an open token
        "/t/c/" + unsubscribe_token(KEYS, "c1", MESSAGE),
    ],
)
async def test_click_to_nothing_we_sent_is_404(harness: Harness, path: str) -> None:
    async with harness.client() as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert harness.producer.sent == []


@pytest.mark.parametrize(
    "link",
    [{"name": "x", "url": "javascript:alert(1)"}, {"name": "x", "url": "//evil.example"}, {"name": "x"}, "junk"],
)
async def test_only_web_links_are_followed(harness: Harness, link: object) -> None:
    row = harness.messages.rows[MESSAGE]
    row["links"] = [link]
    async with harness.client() as client:
        response = await client.get(click_path(0))
    assert response.status_code == 404
    assert "location" not in response.headers


async def test_an_unnamed_link_is_recorded_by_its_index(harness: Harness) -> None:
    harness.messages.rows[MESSAGE]["links"] = [{"url": SHOP_LINK}]
    async with harness.client() as client:
        response = await client.get(click_path(0))
    assert response.headers["location"] == SHOP_LINK
    [event] = harness.producer.events()
    assert event.properties_as(EmailClickedProperties).link == "0"


async def test_click_when_kafka_is_down_still_redirects(harness: Harness) -> None:
    harness.producer.ack_error = KafkaConnectionError("down")
    async with harness.client() as client:
        response = await client.get(click_path(0))
        exported = metrics_text()
    assert response.status_code == 302
    assert response.headers["location"] == SHOP_LINK
    assert harness.producer.sent == []
    assert 'lifecycle_ingest_tracking_total{kind="click",outcome="not_recorded"}' in exported


async def test_click_does_not_wait_long_for_a_hanging_kafka(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "CLICK_PUBLISH_TIMEOUT_SECONDS", 0.05)
    harness.producer.hang = True
    async with harness.client() as client:
        async with asyncio.timeout(5):
            response = await client.get(click_path(0))
    assert response.status_code == 302
    assert response.headers["location"] == SHOP_LINK


async def test_click_when_the_message_store_is_down_is_503(harness: Harness) -> None:
    harness.messages.error = OperationalError("SELECT", {}, ConnectionRefusedError("no database"))
    async with harness.client() as client:
        response = await client.get(click_path(0))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "location" not in response.headers
    assert harness.producer.sent == []


async def test_click_without_a_message_store_is_503() -> None:
    harness = Harness(with_reader=False)
    async with harness.client() as client:
        response = await client.get(click_path(0))
        pixel_response = await client.get(open_path())
    assert response.status_code == 503
    assert_pixel(pixel_response)
    [event] = harness.producer.events()  # the open is still recorded, without details
    assert event.type is EventType.EMAIL_OPENED


async def test_tracking_metrics_use_bounded_labels(harness: Harness) -> None:
    async with harness.client() as client:
        await client.get(click_path(0))
        await client.get(open_path())
        await client.get("/t/c/garbage")
        exported = metrics_text()
    assert 'lifecycle_ingest_tracking_total{kind="click",outcome="recorded"}' in exported
    assert 'lifecycle_ingest_tracking_total{kind="open",outcome="recorded"}' in exported
    assert 'route="/t/c/{token}"' in exported
    assert 'route="/t/o/{token}.gif"' in exported
    assert MESSAGE not in exported
    routes = {line.split('route="', 1)[1].split('"', 1)[0] for line in exported.splitlines() if 'route="' in line}
    assert {route for route in routes if route.startswith("/t/")} == {"/t/c/{token}", "/t/o/{token}.gif"}


# --- rate limits: the answer never changes, only what is recorded --------------------------------


def tracked(kind: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("lifecycle_ingest_tracking_total", {"kind": kind, "outcome": outcome})
    return value or 0.0


async def test_a_flood_of_one_pixel_records_one_open_a_minute(harness: Harness) -> None:
    limited_before = tracked("open", "limited")
    async with harness.client() as client:
        for _ in range(50):
            assert_pixel(await client.get(open_path()))
        assert len(harness.producer.sent) == 1
        harness.seconds += 59
        assert_pixel(await client.get(open_path()))
        assert len(harness.producer.sent) == 1
        harness.seconds += 1
        assert_pixel(await client.get(open_path()))
    assert len(harness.producer.sent) == 2
    assert tracked("open", "limited") - limited_before == 50


async def test_pixels_beyond_the_address_limit_record_nothing() -> None:
    harness = Harness(open_limit_per_ip_per_minute=3)
    async with harness.client() as client:
        for n in range(6):  # six different emails, one address
            assert_pixel(await client.get(open_path(message_id=f"<m{n}@shop.example>")))
    assert len(harness.producer.sent) == 3


async def test_a_flood_of_clicks_always_redirects_and_records_a_few_a_minute(harness: Harness) -> None:
    limited_before = tracked("click", "limited")
    async with harness.client() as client:
        for _ in range(20):
            response = await client.get(click_path(0))
            assert response.status_code == 302 and response.headers["location"] == SHOP_LINK
        harness.seconds += 20  # the bucket gives one more click every 20 s
        await client.get(click_path(0))
    assert len(harness.producer.sent) == 4  # three at once, one more 20 s later
    assert tracked("click", "limited") - limited_before == 17


async def test_clicks_beyond_the_address_limit_still_redirect() -> None:
    harness = Harness(click_limit_per_ip_per_minute=1)
    async with harness.client() as client:
        first = await client.get(click_path(0))
        second = await client.get(click_path(1))
    assert (first.status_code, second.status_code) == (302, 302)
    assert second.headers["location"] == "https://shop.example/p/9"
    [event] = harness.producer.events()
    assert event.properties_as(EmailClickedProperties).link == "cart"


async def test_limits_are_per_client_address_and_forwarded_only_by_trusted_proxies() -> None:
    harness = Harness(open_limit_per_ip_per_minute=1, open_limit_per_token_per_minute=0)
    # uvicorn's proxy middleware, as LIFECYCLE_FORWARDED_ALLOW_IPS configures it
    behind_proxy = ProxyHeadersMiddleware(harness.app, trusted_hosts="10.0.0.0/8")  # type: ignore[arg-type]

    async def fetch(peer: str, forwarded_for: str | None = None) -> None:
        transport = httpx.ASGITransport(app=behind_proxy, client=(peer, 4711))  # type: ignore[arg-type]
        headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert_pixel(await client.get(open_path(), headers=headers))

    async with harness.client():
        await fetch("10.0.0.2", "203.0.113.1")  # through the proxy: the shopper's address counts
        await fetch("10.0.0.2", "203.0.113.2")
        await fetch("10.0.0.3", "203.0.113.2")  # another proxy pod, the same shopper: limited
        await fetch("198.51.100.7", "203.0.113.3")  # not a trusted proxy: its own address counts
        await fetch("198.51.100.7", "203.0.113.4")  # limited, whatever it claims to forward
    assert len(harness.producer.sent) == 3
