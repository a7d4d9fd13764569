"""Privacy in pure code and at the API's edge: where an event came from is kept with the consent changes
it makes, a client cannot pass for our own pages, tombstones split a batch in order, and the erase and
export routes answer what they did (with a fake store and producer)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import OperationalError

from lifecycle.clock import ManualClock
from lifecycle.core.rules import RuleConfig, apply_event
from lifecycle.core.state import ConsentFact, CustomerState, derive_consent
from lifecycle.events import EventInvalid, Origin, parse_event
from lifecycle.events.fields import IP_PATTERN, ip_text
from lifecycle.privacy import Tombstone, _plain, read_tombstone, split_at_tombstones
from lifecycle.settings import Settings
from lifecycle.shopify import guest_id
from lifecycle.trusted import decode_sealed_event, decode_trusted_event
from services.ingest.app import create_app
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2027, 5, 3, 12, 0, tzinfo=UTC)
ADMIN = {"Authorization": "Bearer admin-key"}


def _event(raw: dict[str, Any], origin: Origin | None = None) -> Any:
    return parse_event(raw, NOW, lambda: "e-1", origin)


def test_a_client_says_api_or_import_and_our_pages_say_link_or_page() -> None:
    imported = _event({"type": "customer_updated", "customer_id": "c1", "traits": {"consent": "opted_in"},
                       "origin": {"source": "import", "ip": "2001:db8::1", "user_agent": "CRM sync"}})
    assert imported.origin == Origin(source="import", ip="2001:db8::1", user_agent="CRM sync")
    with pytest.raises(EventInvalid) as refused:
        _event({"type": "unsubscribed", "customer_id": "c1", "origin": {"source": "page"}})
    assert refused.value.errors[0]["field"] == "origin.source"
    with pytest.raises(EventInvalid) as bad_ip:
        _event({"type": "unsubscribed", "customer_id": "c1", "origin": {"source": "api", "ip": "300.1.1.1"}})
    assert bad_ip.value.errors[0]["field"] == "origin.ip"
    # the server's own origin replaces whatever the body said
    ours = _event({"type": "unsubscribed", "customer_id": "c1", "origin": {"source": "import"}},
                  Origin(source="link", ip="192.0.2.4"))
    assert ours.origin == Origin(source="link", ip="192.0.2.4")


def test_the_origin_travels_through_both_trusted_readings() -> None:
    event = _event({"type": "customer_signed_up", "customer_id": "c1", "traits": {"consent": "pending"},
                    "origin": {"source": "api", "ip": "198.51.100.9", "user_agent": "Form"}})
    message = event.to_message()
    assert decode_sealed_event(message) == event == decode_trusted_event(message)


def test_every_consent_change_keeps_its_proof() -> None:
    state = CustomerState("c1")
    config = RuleConfig()
    apply_event(state, _event({"type": "customer_signed_up", "customer_id": "c1",
                               "traits": {"email": "a@example.com", "consent": "pending"}}), NOW, config)
    confirmed_at = NOW + timedelta(minutes=5)
    confirm = parse_event({"type": "consent_confirmed", "customer_id": "c1", "occurred_at": confirmed_at.isoformat()},
                          confirmed_at, lambda: "e-2", Origin(source="link", ip="192.0.2.1", user_agent="Phone"))
    apply_event(state, confirm, confirmed_at, config)
    left_at = NOW + timedelta(days=2)
    categories = parse_event({"type": "customer_updated", "customer_id": "c1", "occurred_at": left_at.isoformat(),
                              "traits": {"unsubscribed_categories": ["offers", "news"]}}, left_at, lambda: "e-3",
                             Origin(source="page", ip="192.0.2.2", user_agent="Laptop"))
    apply_event(state, categories, left_at, config)
    assert [(f.kind, f.value, f.source, f.ip, f.user_agent) for f in state.consent_log] == [
        ("trait", "pending", "api", None, None),
        ("confirmed", None, "link", "192.0.2.1", "Phone"),
        ("categories", "news,offers", "page", "192.0.2.2", "Laptop"),
    ]
    assert state.consent == "opted_in"  # leaving categories is not leaving everything
    restored = CustomerState.from_json(state.to_json())
    assert restored.consent_log == state.consent_log


def test_facts_stored_before_sources_read_back_without_one() -> None:
    old = ConsentFact.from_json({"at": NOW.isoformat(), "kind": "trait", "value": "opted_in"})
    assert old.source is None and old.to_json() == {"at": NOW.isoformat(), "kind": "trait", "value": "opted_in"}
    assert derive_consent([old, ConsentFact(NOW, "categories", "news", "page")]) == ("opted_in", False)


def test_tombstones_split_a_batch_in_its_order() -> None:
    gone = Tombstone("c2")
    assert split_at_tombstones([1, 2, gone, 3, Tombstone("c3"), Tombstone("c4")]) == [
        [1, 2], gone, [3], Tombstone("c3"), Tombstone("c4")]
    assert split_at_tombstones([]) == []
    assert read_tombstone(b"c\xc3\xa9") == Tombstone("cé")
    with pytest.raises(ValueError, match="no customer"):
        read_tombstone(None)


def test_exported_values_are_plain_json() -> None:
    assert _plain({"at": NOW, "spent": Decimal("12.50"), "body": b"Subject: hi", "raw": b"\xff",
                   "rows": [(1, "a")]}) == {
        "at": "2027-05-03T12:00:00+00:00", "spent": "12.50", "body": "Subject: hi", "raw": {"base64": "/w=="},
        "rows": [[1, "a"]]}


@dataclass
class FakePrivacy:
    held: dict[str, dict[str, Any]] = field(default_factory=dict)
    down: bool = False
    shopify: list[str] = field(default_factory=list)  # the ids shop/redact finds
    erased: list[str] = field(default_factory=list)

    async def erase(self, customer_id: str) -> dict[str, int]:
        if self.down:
            raise OperationalError("DELETE", {}, Exception("connection refused"))
        self.erased.append(customer_id)
        if customer_id in self.shopify:
            self.shopify.remove(customer_id)
        return {"customers": int(self.held.pop(customer_id, None) is not None)}

    async def shopify_customers(self, limit: int) -> list[str]:
        return self.shopify[:limit]

    async def export(self, customer_id: str) -> dict[str, Any] | None:
        if self.down:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return self.held.get(customer_id)


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shopify"


def _app(store: FakePrivacy | None, producer: FakeProducer) -> Any:
    settings = Settings(api_keys="write-key", admin_keys="sha256:" + hashlib.sha256(b"admin-key").hexdigest(),
                        signing_secret="s", public_url="http://test")
    return create_app(settings, ManualClock(NOW), lambda: producer, privacy_store=store)


async def test_erase_and_export_answer_what_they_did() -> None:
    store, producer = FakePrivacy({"c1": {"customer_id": "c1", "profile": {"email": "a@example.com"}}}), FakeProducer()
    async with lifespan_client(_app(store, producer)) as client:
        exported = await client.get("/v1/admin/customers/c1/export", headers=ADMIN)
        assert exported.status_code == 200 and exported.json()["profile"] == {"email": "a@example.com"}
        erased = await client.delete("/v1/admin/customers/c1", headers=ADMIN)
        assert erased.status_code == 200
        assert erased.json() == {"customer_id": "c1", "removed": {"customers": 1},
                                 "tombstones": ["lifecycle.events", "lifecycle.triggers"]}
        assert producer.tombstones == [("lifecycle.events", b"c1"), ("lifecycle.triggers", b"c1")]
        # again: nothing left, still erased (and the tombstone published again)
        assert (await client.delete("/v1/admin/customers/c1", headers=ADMIN)).json()["removed"] == {"customers": 0}
        assert (await client.get("/v1/admin/customers/c1/export", headers=ADMIN)).status_code == 404
        assert (await client.delete("/v1/admin/customers/c1", headers={"Authorization": "Bearer write-key"})
                ).status_code == 403
        assert (await client.delete("/v1/admin/customers/%20c1", headers=ADMIN)).status_code == 422
        producer.ack_error = OSError("broker gone")
        owed = await client.delete("/v1/admin/customers/c1", headers=ADMIN)
        assert owed.status_code == 503 and "tombstone" in owed.json()["detail"] and owed.headers["Retry-After"]
        store.down = True
        down = await client.get("/v1/admin/customers/c1/export", headers=ADMIN)
        assert down.status_code == 503 and down.headers["Retry-After"]
    async with lifespan_client(_app(None, FakeProducer())) as client:
        assert (await client.delete("/v1/admin/customers/c1", headers=ADMIN)).status_code == 503


@settings(max_examples=500, deadline=None)
@given(st.from_regex(re.compile(IP_PATTERN.removeprefix("^").removesuffix("$")), fullmatch=True))
def test_every_address_the_documented_pattern_allows_is_taken(address: str) -> None:
    event = _event({"type": "unsubscribed", "customer_id": "c1", "origin": {"source": "api", "ip": address}})
    assert event.origin is not None and event.origin.ip == str(ipaddress.ip_address(address))


def test_addresses_outside_the_pattern_are_refused_and_the_servers_own_are_made_to_fit() -> None:
    for address in ("01.2.3.4", "1.2.3", "::ffff:1.2.3.4", "fe80::1%eth0", "1.2.3.4\n", "1::2::3"):
        with pytest.raises(EventInvalid):
            _event({"type": "unsubscribed", "customer_id": "c1", "origin": {"source": "api", "ip": address}})
    assert (ip_text("::ffff:192.0.2.1"), ip_text("fe80::1%eth0"), ip_text("testclient")) == ("192.0.2.1", None, None)


async def test_shopifys_privacy_topics_erase_and_find_the_export() -> None:
    store, producer = FakePrivacy({"191167": {"profile": {}}}), FakeProducer()
    store.shopify = [str(n) for n in range(120)] + ["shopify-guest:ab"]
    ticks = iter(range(1000))
    settings = Settings(api_keys="write-key", signing_secret="s", public_url="http://test", shopify_secrets="shh")
    app = create_app(settings, ManualClock(NOW), lambda: producer, privacy_store=store,
                     monotonic=lambda: float(next(ticks)) / 10)  # a tenth of a second an erasure

    async def deliver(client: Any, topic: str, name: str) -> Any:
        body = (FIXTURES / f"{name}.json").read_bytes()
        signature = base64.b64encode(hmac.new(b"shh", body, hashlib.sha256).digest()).decode()
        return await client.post("/v1/webhooks/shopify", content=body, headers={
            "X-Shopify-Topic": topic, "X-Shopify-Hmac-SHA256": signature, "X-Shopify-Webhook-Id": f"w-{topic}",
            "Content-Type": "application/json"})

    async with lifespan_client(app) as client:
        asked = await deliver(client, "customers/data_request", "customers_data_request")
        assert asked.json() == {"outcome": "accepted", "events": 0} and store.held  # read, kept
        redacted = await deliver(client, "customers/redact", "customers_redact")
        assert redacted.json() == {"outcome": "accepted", "events": 0}
        guest = guest_id("john@example.com")
        assert store.erased == ["191167", guest] and not store.held
        assert producer.tombstones[-2:] == [("lifecycle.events", guest.encode()),
                                            ("lifecycle.triggers", guest.encode())]
        store.erased.clear()
        first = await deliver(client, "shop/redact", "shop_redact")  # 3.5 s of erasing, then come back
        assert first.status_code == 503 and first.headers["Retry-After"] and 0 < len(store.erased) < 121
        deliveries = 1
        while (again := await deliver(client, "shop/redact", "shop_redact")).status_code == 503:
            deliveries += 1  # Shopify delivers again: the erasure goes on where it stopped
        assert again.json() == {"outcome": "accepted", "events": 0} and store.shopify == []
        assert deliveries > 2 and len(set(store.erased)) == len(store.erased) == 121
