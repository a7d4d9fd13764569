"""The email as it reaches a real SMTP server: MIME structure, headers, tracked links, language."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from lifecycle.tracking import open_pixel_url, read_click_token

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 7, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


async def post(runner: ScenarioRunner, event: dict[str, Any]) -> None:
    event.setdefault("occurred_at", (await runner.watch.clock.now()).isoformat())
    response = await runner.http.post("/v1/events", json=event)
    assert response.status_code == 202, response.text


def delivered(pipeline: Settings, to: str, journey: str, step: int) -> EmailMessage:
    found = [m for m in read_messages(mail_dir(pipeline))
             if str(m["To"]).lower() == to and m["X-Lifecycle-Journey"] == journey
             and m["X-Lifecycle-Step"] == str(step)]
    assert len(found) == 1, f"expected one {journey} {step} to {to}, got {len(found)}"
    return found[0]


def parts(message: EmailMessage) -> tuple[str, str]:
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in message.iter_parts())
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()), str(html.get_content())


async def stored_links(runner: ScenarioRunner, message_id: str) -> list[dict[str, str]]:
    async with runner.engine.connect() as conn:
        links = (await conn.execute(text("SELECT links FROM sends WHERE message_id = :m"),
                                    {"m": message_id})).scalar_one()
    assert isinstance(links, list)
    return links


@pytest.fixture
async def fresh(runner: ScenarioRunner) -> ScenarioRunner:
    await runner.configure(HERE, {})
    await runner.reset(START)
    return runner


async def test_an_abandoned_cart_email_as_delivered(pipeline: Settings, fresh: ScenarioRunner) -> None:
    await post(fresh, {"type": "customer_signed_up", "customer_id": "c-fmt-1", "traits": {
        "email": "lena@example.com", "first_name": "Lena", "locale": "en-GB", "timezone": "Europe/London",
        "consent": "opted_in"}})
    await post(fresh, {"type": "cart_updated", "customer_id": "c-fmt-1", "properties": {
        "cart_id": "k-fmt-1", "currency": "GBP", "value": 84.0, "items": [
            {"product_id": "p-mug", "name": "Stoneware mug", "quantity": 2, "price": 12.0},
            {"product_id": "p-throw", "name": "Wool throw", "quantity": 1, "price": 60.0}]}})
    await fresh.watch.advance_to(START + timedelta(hours=1, minutes=5))

    message = delivered(pipeline, "lena@example.com", "abandoned_cart", 1)
    plain, html = parts(message)
    message_id = str(message["Message-ID"])

    # headers
    assert message["From"] == pipeline.mail_from and message["To"] == "lena@example.com"
    assert message["Subject"] == "Lena, your cart is waiting for you"
    assert message["Content-Language"] == "en" and message["MIME-Version"] == "1.0"
    assert message["X-Lifecycle-Step"] == "1" and message["Date"]
    assert re.fullmatch(r"<\d+\.1\.[0-9a-f]{16}@[^>]+>", message_id)
    unsubscribe = str(message["List-Unsubscribe"])
    assert unsubscribe.startswith(f"<{pipeline.public_url}/v1/unsubscribe/") and "=?" not in unsubscribe
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # both parts, personalised, in the customer's language and money
    for part in (plain, html):
        assert "Stoneware mug" in part and "Wool throw" in part and "£84.00" in part and "£12.00" in part
    assert plain.startswith("Forgot something?\n\nHi Lena,\n")
    assert "<" not in plain
    # the shop's postal address in the footer of both parts (the local stack's sample)
    assert pipeline.sender_address and f"\n\n{pipeline.sender_address}\n\n" in plain
    assert f">{pipeline.sender_address}</p>" in html

    # every link tracked (but unsubscribe and preferences), pointing at the stored links
    links = await stored_links(fresh, message_id)
    assert [link["name"] for link in links] == ["shop", "product:p-mug", "product:p-throw", "cart", "support"]
    assert links[3]["url"] == f"{pipeline.shop_url}/cart"
    tracked = re.findall(rf'href="({re.escape(pipeline.public_url)}/t/c/([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+))"', html)
    assert tracked
    indexes = set()
    keys = SigningKeys.from_settings(pipeline)
    for _, token in tracked:
        claim = read_click_token(keys, token)
        assert claim.message_id == message_id and claim.customer_id == "c-fmt-1"
        assert claim.link_index is not None
        indexes.add(claim.link_index)
    assert indexes == set(range(len(links)))
    untracked = [h for h in re.findall(r'href="([^"]+)"', html) if "/t/c/" not in h]
    assert sorted(u.split("/v1/")[1].split("/")[0] for u in untracked) == ["preferences", "unsubscribe"]
    assert f"{pipeline.shop_url}/cart" not in html and f"{pipeline.shop_url}/cart" not in plain
    assert f'<img src="{open_pixel_url(pipeline, keys, message_id, "c-fmt-1")}"' in html


async def test_a_customer_without_locale_or_name_gets_the_default_language(pipeline: Settings,
                                                                            fresh: ScenarioRunner) -> None:
    await post(fresh, {"type": "customer_signed_up", "customer_id": "c-fmt-2",
                       "traits": {"email": "noname@example.com", "consent": "opted_in"}})
    await fresh.watch.wait_idle()
    message = delivered(pipeline, "noname@example.com", "prospect_welcome", 1)
    plain, html = parts(message)
    assert message["Content-Language"] == "fr"
    assert message["Subject"] == f"Bienvenue chez {pipeline.shop_name}\u00a0!"
    assert "Bonjour," in plain and "None" not in plain and "None" not in html
    links = await stored_links(fresh, str(message["Message-ID"]))
    assert {link["name"] for link in links} >= {"shop", "support"}


async def test_a_coupon_email_shows_the_issued_code_and_its_expiry(pipeline: Settings,
                                                                   fresh: ScenarioRunner) -> None:
    await post(fresh, {"type": "customer_signed_up", "customer_id": "c-fmt-3", "traits": {
        "email": "paul@example.com", "first_name": "Paul", "locale": "fr", "timezone": "Europe/Paris",
        "consent": "opted_in"}})
    await post(fresh, {"type": "cart_updated", "customer_id": "c-fmt-3", "properties": {
        "cart_id": "k-fmt-3", "currency": "EUR", "value": 80.0,
        "items": [{"product_id": "p-lamp", "name": "Lampe en laiton", "quantity": 1, "price": 80.0}]}})
    await fresh.watch.advance_to(START + timedelta(days=1, hours=1, minutes=5))
    message = delivered(pipeline, "paul@example.com", "abandoned_cart", 2)
    plain, html = parts(message)
    async with fresh.engine.connect() as conn:
        code = (await conn.execute(text("SELECT code FROM coupons WHERE customer_id = 'c-fmt-3'"))).scalar_one()
    assert code in plain and code in html
    assert str(message["Subject"]).startswith("-10\u00a0% sur votre panier")
    # valid 3 days, to the end of the third day in Paris
    assert "valable jusqu’au 11 septembre 2026, 23:59" in plain
    assert "Lampe en laiton" in plain and "80,00\u00a0€" in plain
