"""Unsubscribe and preference pages, and the `unsubscribed_categories` trait they set.

The app runs in-process (httpx + ASGITransport) with a fake Kafka producer that records
what would be published and an in-memory customer store.
"""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from sqlalchemy.exc import OperationalError

from lifecycle.clock import ManualClock
from lifecycle.events import (
    EMAIL_CATEGORIES,
    ConsentConfirmedProperties,
    Event,
    EventInvalid,
    EventType,
    Traits,
    UnsubscribedProperties,
    parse_event,
)
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys, confirm_token, sign, unsubscribe_token
from lifecycle.tracking import preferences_url
from services.ingest.app import create_app
from services.ingest.pages import lang_of
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "test-signing-secret"
KEYS = SigningKeys.from_secret(SECRET)
OTHER_KEYS = SigningKeys.from_secret("another-secret")
TOKEN = unsubscribe_token(KEYS, "c1", "m1")
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Customers:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {}
        self.error: Exception | None = None

    async def __call__(self, customer_id: str) -> dict[str, object] | None:
        if self.error is not None:
            raise self.error
        return self.rows.get(customer_id)


class Harness:
    def __init__(self, with_reader: bool = True, **settings: Any) -> None:
        self.producer = FakeProducer()
        self.customers = Customers()
        self.issued_ids = 0
        self.seconds = 0.0  # the rate limits' monotonic clock
        values: dict[str, Any] = {"signing_secret": SECRET, "public_url": "http://test", "api_keys": "k", **settings}
        self.app: FastAPI = create_app(
            Settings(**values), ManualClock(NOW), lambda: self.producer, self.customers if with_reader else None,
            new_event_id=self.next_event_id, monotonic=lambda: self.seconds,
        )

    def next_event_id(self) -> str:
        self.issued_ids += 1
        return f"id-{self.issued_ids}"

    def client(self) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        return lifespan_client(self.app)


@pytest.fixture
def harness() -> Harness:
    return Harness()


def html_lang(response: httpx.Response) -> str:
    match = re.search(r'<html lang="(\w+)"', response.text)
    assert match is not None
    return match.group(1)


def hidden(response: httpx.Response, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', response.text)
    assert match is not None, name
    return match.group(1)


def assert_safe_page(response: httpx.Response) -> None:
    """Self-contained, never framed, cached or leaking its URL through a Referer."""
    assert response.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    text = response.text
    assert "<script" not in text and "<link" not in text and "<img" not in text
    assert 'name="viewport"' in text


# --- the trait --------------------------------------------------------------------------------


def customer_updated(traits: dict[str, object]) -> Event:
    return parse_event({"type": "customer_updated", "customer_id": "c1", "traits": traits}, NOW, lambda: "e1")


def test_trait_is_sorted_and_deduplicated() -> None:
    event = customer_updated({"unsubscribed_categories": ["offers", "cart_reminders", "offers"]})
    assert event.traits is not None
    assert event.traits.provided() == {"unsubscribed_categories": ["cart_reminders", "offers"]}


def test_trait_empty_list_and_null_differ() -> None:
    empty = customer_updated({"unsubscribed_categories": []})
    cleared = customer_updated({"unsubscribed_categories": None})
    absent = customer_updated({"first_name": "Ana"})
    assert empty.traits is not None and cleared.traits is not None and absent.traits is not None
    assert empty.traits.provided() == {"unsubscribed_categories": []}
    assert cleared.traits.provided() == {"unsubscribed_categories": None}
    assert "unsubscribed_categories" not in absent.traits.provided()


@pytest.mark.parametrize("value", [["spam"], "offers", [1], [None], {"offers": True}])
def test_trait_refuses_unknown_categories(value: object) -> None:
    with pytest.raises(EventInvalid) as caught:
        customer_updated({"unsubscribed_categories": value})
    assert all(e["field"].startswith("traits.unsubscribed_categories") for e in caught.value.errors)


def test_trait_survives_the_wire_format() -> None:
    event = customer_updated({"unsubscribed_categories": ["news", "cart_reminders"]})
    again = Event.from_message(event.to_message())
    assert again == event
    assert again.traits is not None
    assert again.traits.provided() == {"unsubscribed_categories": ["cart_reminders", "news"]}


def test_trait_only_on_customer_events() -> None:
    with pytest.raises(EventInvalid):
        parse_event(
            {"type": "page_viewed", "customer_id": "c1", "properties": {"url": "https://s.example"},
             "traits": {"unsubscribed_categories": ["news"]}},
            NOW,
            lambda: "e1",
        )


def test_categories_are_the_journey_categories() -> None:
    from lifecycle.journey_files import CATEGORIES

    assert set(EMAIL_CATEGORIES) == set(CATEGORIES)
    assert Traits.model_fields["unsubscribed_categories"].default is None


async def test_openapi_documents_the_trait(harness: Harness) -> None:
    async with harness.client() as client:
        document = (await client.get("/openapi.json")).json()
    trait = document["components"]["schemas"]["Traits"]["properties"]["unsubscribed_categories"]
    [as_list] = [option for option in trait["anyOf"] if option.get("type") == "array"]
    assert as_list["items"]["enum"] == list(EMAIL_CATEGORIES)
    assert "/v1/preferences/{token}" in document["paths"]
    assert "/t/c/{token}" in document["paths"]


def test_lang_of() -> None:
    assert [lang_of(x) for x in ("fr", "fr-CA", "EN_gb", "en", "de", "", None, 3)] == [
        "fr", "fr", "en", "en", None, None, None, None,
    ]


# --- the unsubscribe page ---------------------------------------------------------------------


async def test_unsubscribe_page_is_french_by_default_and_changes_nothing(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.get(f"/v1/unsubscribe/{TOKEN}")
    assert response.status_code == 200
    assert_safe_page(response)
    assert html_lang(response) == "fr"
    assert "Me désinscrire" in response.text
    assert f'action="/v1/unsubscribe/{TOKEN}"' in response.text
    assert hidden(response, "List-Unsubscribe") == "One-Click"
    assert f'href="/v1/preferences/{TOKEN}?lang=fr"' in response.text
    assert harness.producer.sent == []


@pytest.mark.parametrize(
    ("locale", "query", "expected"),
    [("en-GB", "", "en"), ("fr", "", "fr"), ("de", "", "fr"), (None, "", "fr"), ("fr", "?lang=en", "en"),
     ("en", "?lang=xx", "en")],
)
async def test_unsubscribe_page_speaks_the_customers_language(
    harness: Harness, locale: str | None, query: str, expected: str
) -> None:
    harness.customers.rows["c1"] = {"locale": locale, "consent": "opted_in"}
    async with harness.client() as client:
        response = await client.get(f"/v1/unsubscribe/{TOKEN}{query}")
    assert html_lang(response) == expected
    assert hidden(response, "lang") == expected
    assert ("<h1>Unsubscribe</h1>" if expected == "en" else "<h1>Se désinscrire</h1>") in response.text


async def test_pages_still_show_when_the_customer_store_is_down(harness: Harness) -> None:
    harness.customers.error = OperationalError("SELECT", {}, ConnectionRefusedError("no database"))
    async with harness.client() as client:
        page = await client.get(f"/v1/unsubscribe/{TOKEN}")
        prefs = await client.get(f"/v1/preferences/{TOKEN}")
    assert page.status_code == prefs.status_code == 200
    assert html_lang(page) == html_lang(prefs) == "fr"


async def test_the_shop_name_is_escaped() -> None:
    harness = Harness(shop_name='<script>alert("x")</script>')
    async with harness.client() as client:
        response = await client.get(f"/v1/unsubscribe/{TOKEN}")
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


async def test_forms_post_under_the_public_path() -> None:
    harness = Harness(public_url="https://mail.shop.example/lifecycle/")
    async with harness.client() as client:
        response = await client.get(f"/v1/preferences/{TOKEN}")
    assert f'action="/lifecycle/v1/preferences/{TOKEN}"' in response.text


# --- one-click unsubscribe --------------------------------------------------------------------


async def test_each_press_of_the_unsubscribe_button_is_a_new_event(harness: Harness) -> None:
    async with harness.client() as client:
        page = await client.get(f"/v1/unsubscribe/{TOKEN}")
        body = {"List-Unsubscribe": hidden(page, "List-Unsubscribe"), "lang": hidden(page, "lang")}
        first = await client.post(f"/v1/unsubscribe/{TOKEN}", data=body)
        again = await client.post(f"/v1/unsubscribe/{TOKEN}", data=body)
        mail_client = await client.post(f"/v1/unsubscribe/{TOKEN}", content=b"List-Unsubscribe=One-Click",
                                        headers=FORM)
    assert first.status_code == again.status_code == mail_client.status_code == 200
    assert_safe_page(first)
    assert html_lang(first) == "fr"
    assert "Vous êtes désinscrit(e)." in first.text
    events = harness.producer.events()
    # Never deduplicated as one: unsubscribing again after re-subscribing in the shop must count.
    # Repeats stay harmless downstream: opted out twice is opted out.
    assert [e.event_id for e in events] == ["id-1", "id-2", "id-3"]
    assert {e.type for e in events} == {EventType.UNSUBSCRIBED}
    assert {e.properties_as(UnsubscribedProperties).message_id for e in events} == {"m1"}
    # the consent proof: a link of ours, from the customer's address and browser
    assert {(e.origin.source, e.origin.ip) for e in events if e.origin} == {("link", "127.0.0.1")}
    assert all(e.origin and (e.origin.user_agent or "").startswith("python-httpx/") for e in events)


async def test_one_click_answers_in_the_customers_language_or_in_both(harness: Harness) -> None:
    async with harness.client() as client:
        unknown = await client.post(f"/v1/unsubscribe/{TOKEN}", content=b"List-Unsubscribe=One-Click", headers=FORM)
        harness.customers.rows["c1"] = {"locale": "en"}
        known = await client.post(f"/v1/unsubscribe/{TOKEN}", content=b"List-Unsubscribe=One-Click", headers=FORM)
        multipart = await client.post(f"/v1/unsubscribe/{TOKEN}", files={"List-Unsubscribe": (None, "One-Click")})
    assert "You are unsubscribed." in unknown.text and "Vous êtes désinscrit(e)." in unknown.text
    assert "You are unsubscribed." in known.text and "Vous êtes" not in known.text
    assert multipart.status_code == 200  # RFC 8058 allows multipart bodies too
    assert len(harness.producer.sent) == 3


# --- preferences ------------------------------------------------------------------------------


async def test_preference_page_shows_what_the_customer_receives(harness: Harness) -> None:
    harness.customers.rows["c1"] = {"locale": "en", "consent": "opted_in", "unsubscribed_categories": ["offers"]}
    async with harness.client() as client:
        response = await client.get(f"/v1/preferences/{TOKEN}")
    assert response.status_code == 200
    assert_safe_page(response)
    assert html_lang(response) == "en"
    for category in EMAIL_CATEGORIES:
        assert f'id="receive-{category}"' in response.text and f'for="receive-{category}"' in response.text
    assert re.search(r'value="cart_reminders" checked', response.text)
    assert re.search(r'value="news" checked', response.text)
    assert not re.search(r'value="offers" checked', response.text)
    assert "currently unsubscribed" not in response.text
    assert harness.producer.sent == []


async def test_preference_page_tells_an_opted_out_customer(harness: Harness) -> None:
    harness.customers.rows["c1"] = {"locale": "fr", "consent": "opted_out"}
    async with harness.client() as client:
        response = await client.get(f"/v1/preferences/{TOKEN}")
    assert "actuellement désinscrit(e)" in response.text


async def test_saving_preferences_publishes_the_trait(harness: Harness) -> None:
    async with harness.client() as client:
        response = await client.post(
            f"/v1/preferences/{TOKEN}",
            data={"action": "save", "receive": ["offers", "news"], "lang": "en"},
        )
    assert response.status_code == 200
    assert_safe_page(response)
    assert "Your preferences are saved." in response.text
    assert "You will no longer receive: cart reminders." in response.text
    [event] = harness.producer.events()
    assert event.type is EventType.CUSTOMER_UPDATED
    assert event.customer_id == "c1"
    assert event.traits is not None
    assert event.traits.provided() == {"unsubscribed_categories": ["cart_reminders"]}
    assert event.event_id == "id-1"


@pytest.mark.parametrize(
    ("receive", "left", "summary"),
    [
        (list(EMAIL_CATEGORIES), [], "Vous recevez tous nos e\u2011mails."),
        ([], ["cart_reminders", "news", "offers"], "Vous ne recevrez plus aucun de ces e\u2011mails."),
        (
            ["cart_reminders"],
            ["news", "offers"],
            "Vous ne recevrez plus : nouveautés et conseils, offres et promotions.",
        ),
    ],
)
async def test_saved_choices(harness: Harness, receive: list[str], left: list[str], summary: str) -> None:
    async with harness.client() as client:
        response = await client.post(f"/v1/preferences/{TOKEN}", data={"action": "save", "receive": receive})
    assert summary in response.text
    [event] = harness.producer.events()
    assert event.traits is not None
    assert event.traits.provided() == {"unsubscribed_categories": left}


async def test_every_save_is_a_new_event_and_repeating_one_changes_nothing_more(harness: Harness) -> None:
    async with harness.client() as client:
        form = {"action": "save", "receive": ["offers", "news"], "lang": "fr"}
        await client.post(f"/v1/preferences/{TOKEN}", data=form)
        await client.post(f"/v1/preferences/{TOKEN}", data=form)  # a double click
        await client.post(f"/v1/preferences/{TOKEN}", data={**form, "receive": ["news"]})
        await client.post(f"/v1/preferences/{TOKEN}", data=form)  # later, back to the first choice
    events = harness.producer.events()
    assert [e.event_id for e in events] == ["id-1", "id-2", "id-3", "id-4"]  # none swallowed as a duplicate
    chosen = [e.traits.provided()["unsubscribed_categories"] for e in events if e.traits is not None]
    assert chosen == [["cart_reminders"], ["cart_reminders"], ["cart_reminders", "offers"], ["cart_reminders"]]


async def test_leaving_all_marketing_unsubscribes(harness: Harness) -> None:
    async with harness.client() as client:
        form = {"action": "all", "lang": "fr"}
        response = await client.post(f"/v1/preferences/{TOKEN}", data=form)
        await client.post(f"/v1/preferences/{TOKEN}", data=form)
    assert response.status_code == 200
    assert "Vous êtes désinscrit(e)." in response.text
    first, again = harness.producer.events()
    assert first.type is again.type is EventType.UNSUBSCRIBED
    assert first.customer_id == "c1"
    assert first.properties_as(UnsubscribedProperties).message_id == "m1"
    assert (first.event_id, again.event_id) == ("id-1", "id-2")
    assert first.origin is not None and first.origin.source == "page"


@pytest.mark.parametrize(
    "body",
    [
        {"action": "save", "receive": ["spam"]},
        {"action": "delete"},
        {"receive": ["news"]},
        {},
    ],
)
async def test_tampered_preference_forms_change_nothing(harness: Harness, body: dict[str, Any]) -> None:
    async with harness.client() as client:
        response = await client.post(f"/v1/preferences/{TOKEN}", data=body)
    assert response.status_code == 400
    assert_safe_page(response)
    assert harness.producer.sent == []


async def test_oversized_or_foreign_bodies_change_nothing(harness: Harness) -> None:
    async with harness.client() as client:
        big = await client.post(f"/v1/preferences/{TOKEN}", content=b"action=save&x=" + b"a" * 20_000, headers=FORM)
        json_body = await client.post(f"/v1/preferences/{TOKEN}", json={"action": "save"})
        bad_bytes = await client.post(f"/v1/preferences/{TOKEN}", content=b"action=save&\xff", headers=FORM)
    assert big.status_code == json_body.status_code == bad_bytes.status_code == 400
    assert harness.producer.sent == []


# --- refused tokens ---------------------------------------------------------------------------

FORGED = unsubscribe_token(OTHER_KEYS, "c1", "m1")


@pytest.mark.parametrize("path", ["/v1/unsubscribe/{}", "/v1/preferences/{}", "/v1/confirm/{}"])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_forged_altered_or_foreign_tokens_are_refused(harness: Harness, path: str, method: str) -> None:
    foreign = confirm_token(KEYS, "c1", "ana@example.com") if "confirm" not in path else TOKEN
    altered = TOKEN[:5] + ("A" if TOKEN[5] != "A" else "B") + TOKEN[6:]
    body = {"action": "all", "List-Unsubscribe": "One-Click"}
    async with harness.client() as client:
        for token, status in ((FORGED, 403), (foreign, 403), (altered, 403), ("garbage", 400)):
            response = await client.request(method, path.format(token), data=body if method == "POST" else None)
            assert response.status_code == status, (token, response.text)
            assert_safe_page(response)
            assert "Lien invalide" in response.text and "Invalid link" in response.text
    assert harness.producer.sent == []


async def test_kafka_down_asks_to_retry(harness: Harness) -> None:
    harness.producer.ack_error = KafkaConnectionError("down")
    async with harness.client() as client:
        save = await client.post(f"/v1/preferences/{TOKEN}", data={"action": "save", "lang": "en"})
        unsubscribe = await client.post(f"/v1/unsubscribe/{TOKEN}", data={"lang": "fr"})
    assert save.status_code == unsubscribe.status_code == 503
    assert save.headers["retry-after"] == "5"
    assert "Please try again" in save.text
    assert "Veuillez réessayer" in unsubscribe.text


# --- double opt-in ----------------------------------------------------------------------------


CONFIRM = confirm_token(KEYS, "c1", "ana@example.com")


async def test_confirm_page_in_the_customers_language(harness: Harness) -> None:
    harness.customers.rows["c1"] = {"locale": "en", "email": "ana@example.com"}
    async with harness.client() as client:
        page = await client.get(f"/v1/confirm/{CONFIRM}")
        assert harness.producer.sent == []
        done = await client.post(f"/v1/confirm/{CONFIRM}", data={"lang": hidden(page, "lang")})
    assert_safe_page(page)
    assert "Yes, confirm" in page.text
    assert "Your subscription is confirmed." in done.text
    [event] = harness.producer.events()
    assert event.type is EventType.CONSENT_CONFIRMED
    assert event.customer_id == "c1"
    assert event.properties_as(ConsentConfirmedProperties).email == "ana@example.com"


async def test_the_address_is_compared_without_case_and_published_as_stored(harness: Harness) -> None:
    harness.customers.rows["c1"] = {"locale": "fr", "email": "Ana@Example.com"}
    async with harness.client() as client:
        done = await client.post(f"/v1/confirm/{CONFIRM}")
    assert done.status_code == 200
    [event] = harness.producer.events()
    assert event.properties_as(ConsentConfirmedProperties).email == "Ana@example.com"  # the domain normalised


@pytest.mark.parametrize("stored", ["bea@example.com", None])
async def test_a_link_sent_to_another_address_confirms_nothing(harness: Harness, stored: str | None) -> None:
    # The customer changed their address since: the old address must not confirm the new one.
    harness.customers.rows["c1"] = {"locale": "en", "email": stored}
    async with harness.client() as client:
        page = await client.get(f"/v1/confirm/{CONFIRM}")
        done = await client.post(f"/v1/confirm/{CONFIRM}")
        in_french = await client.post(f"/v1/confirm/{CONFIRM}", data={"lang": "fr"})
    for response in (page, done):
        assert response.status_code == 403
        assert_safe_page(response)
        assert html_lang(response) == "en"
        assert "This link was sent to another address" in response.text
        assert "Yes, confirm" not in response.text
    assert in_french.status_code == 403 and "envoyé à une autre adresse" in in_french.text
    assert harness.producer.sent == []


async def test_confirming_for_an_unknown_customer_records_nothing(harness: Harness) -> None:
    async with harness.client() as client:
        done = await client.post(f"/v1/confirm/{CONFIRM}")
    assert done.status_code == 403
    assert "no longer valid" in done.text and "plus valide" in done.text
    assert harness.producer.sent == []


async def test_confirming_while_the_customer_store_is_down_asks_to_retry(harness: Harness) -> None:
    harness.customers.error = OperationalError("SELECT", {}, ConnectionRefusedError("no database"))
    async with harness.client() as client:
        page = await client.get(f"/v1/confirm/{CONFIRM}")  # a GET changes nothing: shown anyway
        done = await client.post(f"/v1/confirm/{CONFIRM}", data={"lang": "en"})
    assert page.status_code == 200
    assert done.status_code == 503
    assert done.headers["retry-after"] == "5"
    assert "Please try again" in done.text
    assert harness.producer.sent == []


async def test_confirming_without_a_customer_store_asks_to_retry() -> None:
    harness = Harness(with_reader=False)
    async with harness.client() as client:
        done = await client.post(f"/v1/confirm/{CONFIRM}")
    assert done.status_code == 503
    assert harness.producer.sent == []


@pytest.mark.parametrize("payload", [{"c": "c1"}, {"p": "confirm", "c": "c1"}])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_confirmation_links_without_an_address_are_no_longer_valid(
    harness: Harness, payload: dict[str, str], method: str
) -> None:
    harness.customers.rows["c1"] = {"locale": "en", "email": "ana@example.com"}
    async with harness.client() as client:
        response = await client.request(method, f"/v1/confirm/{sign(KEYS, payload)}")
    assert response.status_code == 403
    assert_safe_page(response)
    assert "This link is no longer valid." in response.text and "Ce lien n’est plus valide." in response.text
    assert harness.producer.sent == []


def test_preferences_url_uses_the_unsubscribe_token() -> None:
    settings = Settings(signing_secret=SECRET, public_url="http://test")
    assert preferences_url(settings, KEYS, "c1", "m1") == f"http://test/v1/preferences/{TOKEN}"


# --- rate limits ------------------------------------------------------------------------------


def assert_too_many(response: httpx.Response, retry_after: str) -> None:
    assert response.status_code == 429
    assert response.headers["retry-after"] == retry_after
    assert_safe_page(response)
    assert "Trop de demandes" in response.text and "Too many requests" in response.text  # bilingual


async def test_a_link_used_too_often_gets_429_then_works_again() -> None:
    harness = Harness(page_limit_per_token_per_minute=2)
    async with harness.client() as client:
        assert (await client.get(f"/v1/unsubscribe/{TOKEN}")).status_code == 200
        assert (await client.get(f"/v1/preferences/{TOKEN}")).status_code == 200  # the same token
        assert_too_many(await client.get(f"/v1/unsubscribe/{TOKEN}"), "30")
        assert_too_many(await client.post(f"/v1/unsubscribe/{TOKEN}", data={"lang": "fr"}), "30")
        assert_too_many(await client.post(f"/v1/preferences/{TOKEN}", data={"action": "all"}), "30")
        assert harness.producer.sent == []  # nothing recorded beyond the limit
        assert (await client.get(f"/v1/unsubscribe/{unsubscribe_token(KEYS, 'c2', 'm1')}")).status_code == 200
        harness.seconds += 30
        assert (await client.post(f"/v1/unsubscribe/{TOKEN}", data={"lang": "fr"})).status_code == 200
    assert len(harness.producer.sent) == 1


async def test_an_address_using_too_many_links_gets_429() -> None:
    harness = Harness(page_limit_per_ip_per_minute=2)
    async with harness.client() as client:
        assert (await client.get(f"/v1/unsubscribe/{unsubscribe_token(KEYS, 'c1', 'm1')}")).status_code == 200
        assert (await client.get(f"/v1/preferences/{unsubscribe_token(KEYS, 'c2', 'm2')}")).status_code == 200
        confirm = confirm_token(KEYS, "c3", "ana@example.com")
        assert_too_many(await client.get(f"/v1/confirm/{confirm}"), "30")
        assert_too_many(await client.post(f"/v1/confirm/{confirm}"), "30")
    assert harness.producer.sent == []


async def test_refused_links_are_refused_without_spending_the_limits() -> None:
    harness = Harness(page_limit_per_ip_per_minute=1)
    async with harness.client() as client:
        for _ in range(5):
            assert (await client.get(f"/v1/unsubscribe/{FORGED}")).status_code == 403
        assert (await client.get(f"/v1/unsubscribe/{TOKEN}")).status_code == 200


async def test_the_openapi_document_lists_every_answer_of_the_pages(harness: Harness) -> None:
    async with harness.client() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for path in ("/v1/unsubscribe/{token}", "/v1/preferences/{token}", "/v1/confirm/{token}"):
        assert {"200", "400", "403", "429"} <= set(paths[path]["get"]["responses"]), path
        assert {"200", "400", "403", "429", "503"} <= set(paths[path]["post"]["responses"]), path
        assert "text/html" in paths[path]["post"]["responses"]["429"]["content"]
