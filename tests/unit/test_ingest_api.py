"""HTTP handling of the ingest API, with an in-process fake producer (no Kafka).

The fake only mimics what the app uses of AIOKafkaProducer: start/stop, `send` returning
a delivery future, and `client.fetch_all_metadata()`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from lifecycle.clock import ManualClock
from lifecycle.events import EventType
from lifecycle.runtime import setup_logging
from lifecycle.seal import Seal
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys, confirm_token, unsubscribe_token
from services.ingest import app as ingest_app
from services.ingest.app import create_app
from services.ingest.main import api_config, start_metrics_server
from tests.support.ingest import FakeProducer, lifespan_client, metrics_text

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "test-signing-secret"
KEYS = SigningKeys.from_secret(SECRET)
OTHER_KEYS = SigningKeys.from_secret("another-secret")
AUTH = {"Authorization": "Bearer key-one"}  # a write key
ADMIN = {"Authorization": "Bearer admin-one"}


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_keys": "key-one, sha256:" + hashlib.sha256(b"key-two").hexdigest() + ", both-scopes",
        "admin_keys": "admin-one, sha256:" + hashlib.sha256(b"admin-two").hexdigest() + ", both-scopes",
        "signing_secret": SECRET,
        "public_url": "http://test",
        **overrides,
    }
    return Settings(**values)


class Harness:
    def __init__(self, reader: Callable[[str], Any] | None = None, **settings: Any) -> None:
        self.producer = FakeProducer()
        self.clock = ManualClock(NOW)
        self.factory_calls = 0

        def factory() -> Any:
            self.factory_calls += 1
            return self.producer

        self.app: FastAPI = create_app(make_settings(**settings), self.clock, factory, reader)

    def client(self) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return lifespan_client(self.app)


@pytest.fixture
def harness() -> Harness:
    return Harness()


def event(kind: str = "page_viewed", customer: str = "c1", **extra: Any) -> dict[str, Any]:
    properties = {"page_viewed": {"url": "https://shop.example/"}}.get(kind, {})
    return {"type": kind, "customer_id": customer, "properties": properties, **extra}


# --- lifespan -------------------------------------------------------------------------------


async def test_lifespan_starts_and_stops_the_producer(harness: Harness) -> None:
    async with harness.client() as client:
        assert harness.producer.started
        assert (await client.get("/healthz")).status_code == 200
    assert harness.producer.stopped


async def test_start_up_retries_while_kafka_is_not_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_app, "STARTUP_RETRY_SECONDS", 0.0)
    harness = Harness()
    harness.producer.start_failures = 2
    async with harness.client() as client:
        assert (await client.post("/v1/events", json=event(), headers=AUTH)).status_code == 202
    assert harness.factory_calls == 3


@pytest.mark.parametrize("setting", ["api_keys", "admin_keys"])
def test_bad_api_key_configuration_is_a_clear_error(setting: str) -> None:
    with pytest.raises(ValueError, match="entry 2 is not sha256:<64 hex digits>"):
        create_app(make_settings(**{setting: "k, sha256:nothex"}), ManualClock(NOW), FakeProducer)


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic key-one"},
        {"Authorization": "Bearer " + hashlib.sha256(b"key-two").hexdigest()},
    ],
)
async def test_missing_or_wrong_key_is_401(harness: Harness, headers: dict[str, str]) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=event(), headers=headers)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "API key" in response.json()["detail"]
        assert (await client.get("/v1/customers/c1", headers=headers)).status_code == 401
    assert harness.producer.sent == []


@pytest.mark.parametrize("key", ["key-one", "key-two", "both-scopes"])
async def test_plain_and_hashed_write_keys_send_events(harness: Harness, key: str) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=event(), headers={"Authorization": f"bearer {key}"})
    assert response.status_code == 202


@pytest.mark.parametrize("key", ["admin-one", "admin-two"])
async def test_an_admin_key_sends_no_events(harness: Harness, key: str) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=event(), headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert response.json() == {
        "detail": "this is an admin key; events are sent with a write key (LIFECYCLE_API_KEYS)"
    }
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'
    assert harness.producer.sent == []


async def customer_reader(customer_id: str) -> dict[str, object] | None:
    return {"customer_id": customer_id} if customer_id == "c1" else None


@pytest.mark.parametrize("key", ["key-one", "key-two"])
async def test_a_write_key_reads_no_customer(key: str) -> None:
    async with Harness(customer_reader).client() as client:
        response = await client.get("/v1/customers/c1", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403
    assert response.json()["detail"].startswith("this key may only send events; customer reads need an admin key")
    assert response.headers["WWW-Authenticate"] == 'Bearer error="insufficient_scope"'


@pytest.mark.parametrize("key", ["admin-one", "admin-two", "both-scopes"])
async def test_plain_and_hashed_admin_keys_read_customers(key: str) -> None:
    async with Harness(customer_reader).client() as client:
        response = await client.get("/v1/customers/c1", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json() == {"customer_id": "c1"}


async def test_the_admin_dependency_guards_new_routes() -> None:
    """What another router gets from `Depends(require_admin_key)`."""
    from fastapi import Depends

    harness = Harness()
    harness.app.get("/v1/admin/ping", dependencies=[Depends(ingest_app.require_admin_key)])(lambda: {"ok": True})
    async with harness.client() as client:
        assert (await client.get("/v1/admin/ping", headers=ADMIN)).status_code == 200
        assert (await client.get("/v1/admin/ping", headers=AUTH)).status_code == 403
        assert (await client.get("/v1/admin/ping")).status_code == 401


# --- accepting events -----------------------------------------------------------------------


async def test_batch_is_published_keyed_by_customer_then_202(harness: Harness) -> None:
    later = event(customer="a", occurred_at="2026-03-02T08:59:00Z")
    payload = {"events": [event(customer="a"), event("consent_confirmed", customer="b"), later]}
    async with harness.client() as client:
        response = await client.post("/v1/events", json=payload, headers=AUTH)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3}
    assert [(topic, key) for topic, key, _ in harness.producer.sent] == [
        ("lifecycle.events", b"a"),
        ("lifecycle.events", b"b"),
        ("lifecycle.events", b"a"),
    ]
    published = harness.producer.events()
    assert [e.type for e in published] == [
        EventType.PAGE_VIEWED,
        EventType.CONSENT_CONFIRMED,
        EventType.PAGE_VIEWED,
    ]
    assert all(e.received_at == NOW for e in published)  # from the injected clock
    assert len({e.event_id for e in published}) == 3


async def test_every_published_event_is_sealed_for_the_stager(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json={"events": [event(customer="a"), event(customer="b")]},
                                     headers=AUTH)
    assert response.status_code == 202
    seal = Seal.from_settings(make_settings())
    assert seal is not None
    sent = harness.producer.sent
    assert len(sent) == len(harness.producer.headers) == 2
    assert all(seal.verifies(value, headers) for (_, _, value), headers in zip(sent, harness.producer.headers,
                                                                               strict=True))
    other = Seal.from_settings(make_settings(signing_secret="another deployment's secret"))
    assert other is not None and not other.verifies(sent[0][2], harness.producer.headers[0])


async def test_an_event_without_id_gets_the_same_id_when_the_request_is_retried(harness: Harness) -> None:
    payload = {"events": [event(customer="a"), event(customer="b")]}
    async with harness.client() as client:
        for _ in range(2):
            assert (await client.post("/v1/events", json=payload, headers=AUTH)).status_code == 202
    first, second = harness.producer.events()[:2], harness.producer.events()[2:]
    assert [e.event_id for e in first] == [e.event_id for e in second]
    # scoped by the content, customer included: the same event of two customers differs
    assert first[0].event_id != first[1].event_id and first[0].event_id.startswith("d-")


async def test_single_event_and_client_event_id(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=event(event_id="e-1"), headers=AUTH)
    assert response.json() == {"accepted": 1}
    assert harness.producer.events()[0].event_id == "e-1"


async def test_money_is_read_exactly(harness: Harness) -> None:
    body = (
        b'{"type":"order_placed","customer_id":"c1","properties":{"order_id":"o1","currency":"EUR",'
        b'"value":0.30,"items":[{"product_id":"p","name":"n","quantity":3,"price":0.10}]}}'
    )
    async with harness.client() as client:
        response = await client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 202
    message = json.loads(harness.producer.sent[0][2])
    assert message["event"]["properties"]["value"] == "0.30"
    assert message["event"]["properties"]["items"][0]["price"] == "0.10"


async def test_invalid_event_refuses_the_whole_batch(harness: Harness) -> None:
    payload = {
        "events": [
            event(),
            {
                "type": "cart_updated",
                "customer_id": "c1",
                "properties": {
                    "cart_id": "k",
                    "currency": "EUR",
                    "value": 1,
                    "items": [{"product_id": "p", "name": "n", "quantity": 1, "price": -1}],
                },
            },
            event(),
            {"type": "nope", "customer_id": "c1"},
        ]
    }
    async with harness.client() as client:
        response = await client.post("/v1/events", json=payload, headers=AUTH)
    assert response.status_code == 422
    data = response.json()
    assert "nothing was accepted" in data["detail"]
    assert {(e["index"], e["field"]) for e in data["errors"]} == {
        (1, "properties.items.0.price"),
        (3, "type"),
    }
    assert all(isinstance(e["message"], str) and e["message"] for e in data["errors"])
    assert harness.producer.sent == []


async def test_future_event_is_422(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=event(occurred_at="2026-03-02T09:06:00Z"), headers=AUTH)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "occurred_at"


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"events": []}, "events"), ([], ""), ("hello", ""), ({"events": [event()], "more": 1}, "more")],
)
async def test_bad_payload_shapes_are_422(harness: Harness, payload: object, field: str) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", json=payload, headers=AUTH)
    assert response.status_code == 422
    assert [(e["index"], e["field"]) for e in response.json()["errors"]] == [(None, field)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"{", "not valid JSON"),
        (b'{"type": "page_viewed",}', "line 1 column"),
        (b'{"value": NaN}', "NaN"),
        (b'{"value": Infinity}', "Infinity"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"type": "page_viewed", "customer_id": "c\\ud800"}', "lone surrogate"),
        (b'{"type": "page_viewed", "customer_id": "c\\uDFFF\\ud83d"}', "lone surrogate"),
    ],
)
async def test_bad_json_is_400(harness: Harness, body: bytes, message: str) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 400
    assert message in response.json()["detail"]
    assert harness.producer.sent == []


async def test_escaped_characters_beyond_the_basic_plane_are_text(harness: Harness) -> None:
    # a surrogate pair in \u escapes is one character; an escaped backslash before "ud800" is no escape
    body = json.dumps({**event(), "customer_id": "c-\U0001F600-\\ud800"}, ensure_ascii=True).encode()
    assert b"\\ud83d\\ude00" in body
    async with harness.client() as client:
        response = await client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 202, response.text
    [(_, key, _)] = harness.producer.sent
    assert key.decode() == "c-\U0001F600-\\ud800"


async def test_byte_order_mark_is_tolerated(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", content=b"\xef\xbb\xbf" + json.dumps(event()).encode(), headers=AUTH)
    assert response.status_code == 202


async def test_body_over_1_mib_is_413(harness: Harness) -> None:
    body = json.dumps({"events": [event(properties={"url": "https://x/" + "a" * 2000})] * 600}).encode()
    assert len(body) > 1024 * 1024
    async with harness.client() as client:
        response = await client.post("/v1/events", content=body, headers=AUTH)
    assert response.status_code == 413
    assert "bytes" in response.json()["detail"]
    assert harness.producer.sent == []


async def test_declared_length_over_1_mib_is_413_without_reading(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post(
            "/v1/events", content=b"{}", headers={**AUTH, "Content-Length": str(2 * 1024 * 1024)}
        )
    assert response.status_code == 413


async def test_chunked_body_over_1_mib_is_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 65536

    async with harness.client() as client:
        response = await client.post("/v1/events", content=chunks(), headers=AUTH)
    assert response.status_code == 413


async def test_garbage_content_length_is_400(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post("/v1/events", content=b"{}", headers={**AUTH, "Content-Length": "lots"})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "failure",
    ["send", "ack", "hang"],
)
async def test_kafka_failure_is_503_with_retry_after(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    monkeypatch.setattr(ingest_app, "PUBLISH_TIMEOUT_SECONDS", 0.05)
    if failure == "send":
        harness.producer.send_error = KafkaTimeoutError()
    elif failure == "ack":
        harness.producer.ack_error = KafkaConnectionError("broker went away")
    else:
        harness.producer.hang = True
    async with harness.client() as client:
        response = await client.post("/v1/events", json={"events": [event(), event()]}, headers=AUTH)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "retry" in response.json()["detail"]


# --- customers ------------------------------------------------------------------------------


async def test_customer_found_and_not_found() -> None:
    customers: dict[str, dict[str, object]] = {"c1": {"customer_id": "c1", "created_at": NOW, "traits": {"a": 1}}}

    async def reader(customer_id: str) -> dict[str, object] | None:
        return customers.get(customer_id)

    harness = Harness(reader)
    async with harness.client() as client:
        found = await client.get("/v1/customers/c1", headers=ADMIN)
        missing = await client.get("/v1/customers/nobody", headers=ADMIN)
    assert found.status_code == 200
    assert found.json() == {
        "customer_id": "c1",
        "created_at": "2026-03-02T09:00:00+00:00",
        "traits": {"a": 1},
    }
    assert missing.status_code == 404
    assert missing.json() == {"detail": "customer not found"}


async def test_customer_store_down_is_503() -> None:
    async def reader(customer_id: str) -> dict[str, object] | None:
        raise OperationalError("SELECT", {}, ConnectionRefusedError())

    async with Harness(reader).client() as client:
        response = await client.get("/v1/customers/c1", headers=ADMIN)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


async def test_customer_lookup_not_configured(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get("/v1/customers/c1", headers=ADMIN)
    assert response.status_code == 501


# --- unsubscribe and confirm links ------------------------------------------------------------


async def test_each_unsubscribe_is_its_own_event(harness: Harness) -> None:
    token = unsubscribe_token(KEYS, "c1", "m1")
    async with harness.client() as client:
        first = await client.post(
            f"/v1/unsubscribe/{token}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert first.status_code == 200
        assert "You are unsubscribed." in first.text
        assert first.headers["content-type"].startswith("text/html")
        [published] = harness.producer.events()
        assert published.type is EventType.UNSUBSCRIBED
        assert published.customer_id == "c1"
        assert published.properties.message_id == "m1"  # type: ignore[union-attr]
        assert harness.producer.sent[0][1] == b"c1"
        # Unsubscribing again from the same email (say, after re-subscribing in the shop) is a new
        # event, never a duplicate: the stager applies it.
        again = await client.post(f"/v1/unsubscribe/{token}")
        assert again.status_code == 200
        first_id, second_id = (e.event_id for e in harness.producer.events())
        assert first_id != second_id


async def test_unsubscribe_page_does_not_unsubscribe(harness: Harness) -> None:
    token = unsubscribe_token(KEYS, "c1", "m1")
    async with harness.client() as client:
        response = await client.get(f"/v1/unsubscribe/{token}")
    assert response.status_code == 200
    assert 'method="post"' in response.text
    assert f'action="/v1/unsubscribe/{token}"' in response.text
    assert harness.producer.sent == []


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_forged_or_garbled_unsubscribe_token_is_refused(harness: Harness, method: str) -> None:
    forged = unsubscribe_token(OTHER_KEYS, "c1", "m1")
    wrong_purpose = confirm_token(KEYS, "c1", "ana@example.com")
    async with harness.client() as client:
        assert (await client.request(method, f"/v1/unsubscribe/{forged}")).status_code == 403
        assert (await client.request(method, f"/v1/unsubscribe/{wrong_purpose}")).status_code == 403
        assert (await client.request(method, "/v1/unsubscribe/garbage")).status_code == 400
    assert harness.producer.sent == []


async def test_unsubscribe_when_kafka_is_down(harness: Harness) -> None:
    harness.producer.ack_error = KafkaConnectionError("down")
    async with harness.client() as client:
        response = await client.post(f"/v1/unsubscribe/{unsubscribe_token(KEYS, 'c1', 'm1')}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"


async def test_signed_token_with_unusable_customer_id_is_400(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post(f"/v1/unsubscribe/{unsubscribe_token(KEYS, ' bad', 'm1')}")
    assert response.status_code == 400
    assert harness.producer.sent == []


async def test_confirm_link() -> None:
    async def reader(customer_id: str) -> dict[str, object] | None:
        return {"customer_id": customer_id, "email": "ana@example.com"} if customer_id == "c7" else None

    harness = Harness(reader)
    token = confirm_token(KEYS, "c7", "ana@example.com")
    async with harness.client() as client:
        page = await client.get(f"/v1/confirm/{token}")
        assert page.status_code == 200
        assert harness.producer.sent == []
        response = await client.post(f"/v1/confirm/{token}")
        assert response.status_code == 200
        assert (await client.post(f"/v1/confirm/{unsubscribe_token(KEYS, 'c7', 'm')}")).status_code == 403
        # a second opt-in (after signing up again) is a new event, not a duplicate of the first
        assert (await client.post(f"/v1/confirm/{token}")).status_code == 200
    published, again = harness.producer.events()
    assert published.type is again.type is EventType.CONSENT_CONFIRMED
    assert published.customer_id == "c7"
    assert published.event_id != again.event_id


# --- probes, metrics, OpenAPI -----------------------------------------------------------------


async def test_readyz_follows_kafka(harness: Harness) -> None:
    async with harness.client() as client:
        assert (await client.get("/readyz")).status_code == 200
        harness.producer.client.reachable = False
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert "Kafka" in not_ready.json()["detail"]
        assert (await client.get("/healthz")).status_code == 200


async def test_metrics_use_route_templates(harness: Harness) -> None:
    async with harness.client() as client:
        await client.get("/v1/customers/secret-customer-42", headers=ADMIN)
        await client.post("/v1/events", json={"events": [event("consent_confirmed")]}, headers=AUTH)
        await client.post("/v1/events", json={"type": "nope"}, headers=AUTH)
        await client.get("/no/such/path")
        text = metrics_text()
    assert "secret-customer-42" not in text
    assert 'lifecycle_ingest_requests_total{route="/v1/customers/{customer_id}",status="501"}' in text
    assert 'lifecycle_ingest_requests_total{route="/v1/events",status="202"}' in text
    assert 'lifecycle_ingest_requests_total{route="/v1/events",status="422"}' in text
    assert 'lifecycle_ingest_requests_total{route="unmatched",status="404"}' in text
    assert 'lifecycle_ingest_events_accepted_total{type="consent_confirmed"}' in text
    assert 'lifecycle_ingest_events_refused_total{reason="invalid"}' in text
    assert "lifecycle_ingest_request_duration_seconds_bucket" in text
    assert "lifecycle_ingest_produce_duration_seconds_count" in text


async def test_metrics_are_not_on_the_public_api(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get("/metrics")
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert response.status_code == 404
    assert "/metrics" not in paths


def test_the_public_server_trusts_x_forwarded_for_only_from_the_configured_proxies() -> None:
    settings = make_settings(forwarded_allow_ips="10.0.0.0/8")
    config = api_config(settings, create_app(settings, ManualClock(NOW), FakeProducer))
    assert config.proxy_headers is True
    assert config.forwarded_allow_ips == "10.0.0.0/8"
    assert (config.host, config.port) == (settings.ingest_host, settings.ingest_port)


def test_idle_connections_outlive_the_clients_and_balancers_in_front() -> None:
    # Closed by the API at the moment a client reuses it, a kept-alive connection fails that request:
    # the client (httpx keeps idle connections 5 s) and balancers (60 s) must always close first.
    settings = make_settings()
    config = api_config(settings, create_app(settings, ManualClock(NOW), FakeProducer))
    assert config.timeout_keep_alive == settings.ingest_keep_alive_seconds > 60
    client_expiry = httpx.Limits().keepalive_expiry
    assert client_expiry is not None and config.timeout_keep_alive > client_expiry
    custom = make_settings(ingest_keep_alive_seconds=120)
    assert api_config(custom, create_app(custom, ManualClock(NOW), FakeProducer)).timeout_keep_alive == 120


def test_uvicorn_logs_come_out_as_the_process_logs_them(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        setup_logging("json")
        settings = make_settings()
        config = api_config(settings, create_app(settings, ManualClock(NOW), FakeProducer))
        config.load()  # what uvicorn does first: it leaves the process's logging alone
        logging.getLogger("uvicorn.error").warning("port taken")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert (line["event"], line["logger"], line["level"]) == ("port taken", "uvicorn.error", "warning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_metrics_have_their_own_port_with_the_apis_readiness(harness: Harness) -> None:
    settings = make_settings(ingest_metrics_port=_free_port())
    app = create_app(settings, ManualClock(NOW), lambda: harness.producer)
    async with lifespan_client(app) as api:
        await api.post("/v1/events", json=event(), headers=AUTH)
        server, task = start_metrics_server(settings, app)
        try:
            async with asyncio.timeout(10):
                while not server.started:
                    await asyncio.sleep(0.01)
            base = f"http://127.0.0.1:{settings.ingest_metrics_port}"
            async with httpx.AsyncClient(base_url=base) as client:
                exported = await client.get("/metrics")
                ready = await client.get("/readyz")
                harness.producer.client.reachable = False
                not_ready = await client.get("/readyz")
        finally:
            server.should_exit = True
            await task
    assert exported.status_code == 200
    assert 'lifecycle_ingest_requests_total{route="/v1/events",status="202"}' in exported.text
    assert (ready.status_code, not_ready.status_code) == (200, 503)


# Every status each route can answer (a fuzzer holds the API to its document).
ANSWERS = {
    ("post", "/v1/events"): {"202", "400", "401", "403", "413", "422", "503"},
    ("get", "/v1/customers/{customer_id}"): {"200", "401", "403", "404", "501", "503"},
    ("get", "/v1/unsubscribe/{token}"): {"200", "400", "403", "429"},
    ("post", "/v1/unsubscribe/{token}"): {"200", "400", "403", "429", "503"},
    ("get", "/v1/preferences/{token}"): {"200", "400", "403", "429"},
    ("post", "/v1/preferences/{token}"): {"200", "400", "403", "429", "503"},
    ("get", "/v1/confirm/{token}"): {"200", "400", "403", "429"},
    ("post", "/v1/confirm/{token}"): {"200", "400", "403", "429", "503"},
    ("get", "/t/o/{token}.gif"): {"200"},  # always the image, beyond the rate limits too
    ("get", "/t/c/{token}"): {"302", "400", "404", "503"},  # always redirected, beyond the rate limits too
    ("get", "/healthz"): {"200"},
    ("get", "/readyz"): {"200", "503"},
    ("post", "/v1/admin/journeys"): {"200", "201", "400", "401", "403", "413", "415", "422", "503"},
    ("get", "/v1/admin/journeys"): {"200", "401", "403", "503"},
    ("get", "/v1/admin/journeys/{name}"): {"200", "401", "403", "404", "422", "503"},
    ("get", "/v1/admin/segments/preview"): {"200", "400", "401", "403", "404", "422", "503"},
    **{("post", f"/v1/{call}"): {"200", "400", "401", "403", "429", "503"}
       for call in ("identify", "track", "page", "alias", "batch")},
    ("post", "/v1/admin/campaigns"): {"200", "201", "400", "401", "403", "409", "413", "415", "422", "503"},
    ("get", "/v1/admin/campaigns"): {"200", "401", "403", "503"},
    ("get", "/v1/admin/campaigns/{name}"): {"200", "401", "403", "404", "422", "503"},
    ("post", "/v1/admin/campaigns/{name}/cancel"): {"200", "401", "403", "404", "422", "503"},
    ("delete", "/v1/admin/customers/{customer_id}"): {"200", "401", "403", "422", "503"},
    ("get", "/v1/admin/customers/{customer_id}/export"): {"200", "401", "403", "404", "422", "503"},
    ("post", "/v1/webhooks/shopify"): {"200", "400", "401", "404", "413", "503"},
}


async def test_openapi_documents_every_answer_of_every_route(harness: Harness) -> None:
    async with harness.client() as client:
        document = (await client.get("/openapi.json")).json()
    routes = {(method, path): operation for path, operations in document["paths"].items()
              for method, operation in operations.items()}
    assert set(routes) == set(ANSWERS)
    for route, answers in ANSWERS.items():
        assert answers <= set(routes[route]["responses"]), route
    assert routes[("post", "/v1/events")]["security"] == [{"WriteKey": []}]
    assert routes[("get", "/v1/customers/{customer_id}")]["security"] == [{"AdminKey": []}]


def _refs(node: object) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node)) if node else set()
    return set()


async def test_openapi_describes_every_event_type(harness: Harness) -> None:
    async with harness.client() as client:
        document = (await client.get("/openapi.json")).json()
    components = document["components"]["schemas"]
    mapping = components["AnyEvent"]["discriminator"]["mapping"]
    assert set(mapping) == {t.value for t in EventType}
    for kind in EventType:
        name = mapping[kind.value].rsplit("/", 1)[1]
        assert components[name]["properties"]["type"]["const"] == kind.value
    assert set(components["OrderPlacedProperties"]["properties"]) == {
        "order_id",
        "currency",
        "value",
        "items",
        "coupon_code",
    }
    body = document["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/EventBatch"} in body["oneOf"]
    # Every reference in the document resolves.
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in components, ref
