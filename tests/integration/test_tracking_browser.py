"""The pages behind an email's links, in a real browser, on the real pipeline.

A shopper signs up; the welcome email is really delivered to the SMTP sink. From its
List-Unsubscribe URL, headless Chromium (Debian's `chromium`, driven by Playwright) opens
the unsubscribe page, goes to the preferences, leaves cart reminders, then unsubscribes;
the customer as stored by the stager shows each change. The click redirect and the open
pixel are exercised over HTTP with tokens for that same delivered email.

Screenshots of every page go to $LIFECYCLE_SCREENSHOT_DIR when set (else a temporary
directory), to look at them.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import text

from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from lifecycle.tracking import click_url, open_pixel_url
from services.ingest.tracking import PIXEL_GIF
from tests.support.browser import chromium

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


@pytest.fixture
async def fresh(runner: ScenarioRunner) -> AsyncIterator[ScenarioRunner]:
    await runner.configure(HERE, {})
    await runner.reset(START)
    yield runner


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("LIFECYCLE_SCREENSHOT_DIR") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def _sign_up(runner: ScenarioRunner, customer_id: str, email: str, locale: str) -> EmailMessage:
    """Signs a shopper up and returns the welcome email as delivered."""
    response = await runner.http.post(
        "/v1/events",
        json={
            "event_id": f"signup-{customer_id}",
            "type": "customer_signed_up",
            "customer_id": customer_id,
            "occurred_at": START.isoformat(),
            "traits": {"email": email, "consent": "opted_in", "locale": locale, "first_name": "Ana"},
        },
    )
    assert response.status_code == 202, response.text
    await runner.watch.wait_idle()
    delivered = [m for m in read_messages(mail_dir(runner.settings)) if str(m["To"]) == email]
    assert [(m["X-Lifecycle-Journey"], m["X-Lifecycle-Step"]) for m in delivered] == [("prospect_welcome", "1")]
    return delivered[0]


async def _customer(runner: ScenarioRunner, customer_id: str) -> dict[str, Any]:
    await runner.watch.wait_idle()
    response = await runner.http.get(f"/v1/customers/{customer_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _altered(url: str) -> str:
    """The link with one character of its token's payload changed, as a tamperer would."""
    base, token = url.rsplit("/", 1)
    flipped = "B" if token[5] == "A" else "A"
    return f"{base}/{token[:5]}{flipped}{token[6:]}"


async def _shoot(page: Page, shots: Path, name: str) -> None:
    await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)


async def test_unsubscribe_and_preferences_in_a_browser(
    pipeline: Settings, fresh: ScenarioRunner, browser: Browser, shots: Path
) -> None:
    email = await _sign_up(fresh, "c-browser-1", "ana@example.com", "fr-FR")
    unsubscribe = str(email["List-Unsubscribe"]).strip("<>")
    assert unsubscribe.startswith(f"{pipeline.public_url}/v1/unsubscribe/")
    page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone

    # The unsubscribe page: in the customer's language, and it changes nothing by itself.
    response = await page.goto(unsubscribe)
    assert response is not None and response.status == 200
    await expect(page.get_by_role("heading", name="Se désinscrire")).to_be_visible()
    assert await page.get_attribute("html", "lang") == "fr"
    await _shoot(page, shots, "1-unsubscribe-page")
    assert (await _customer(fresh, "c-browser-1"))["consent"] == "opted_in"

    # Preferences: leave cart reminders only.
    await page.get_by_role("link", name="Choisir les e\u2011mails que je reçois").click()
    await expect(page.get_by_role("heading", name="Vos préférences e\u2011mail")).to_be_visible()
    cart = page.get_by_role("checkbox", name=re.compile("Rappels de panier"))
    await expect(cart).to_be_checked()
    await _shoot(page, shots, "2-preferences-page")
    await cart.click()
    await expect(cart).not_to_be_checked()
    await page.get_by_role("button", name="Enregistrer mes préférences").click()
    await expect(page.get_by_role("heading", name="Vos préférences sont enregistrées.")).to_be_visible()
    await expect(page.get_by_text("Vous ne recevrez plus : rappels de panier.")).to_be_visible()
    await _shoot(page, shots, "3-preferences-saved")
    stored = await _customer(fresh, "c-browser-1")
    assert stored["unsubscribed_categories"] == ["cart_reminders"]
    assert stored["consent"] == "opted_in"

    # Back on the preferences, the stored choice is what the page shows.
    await page.get_by_role("link", name="Modifier mes préférences").click()
    await expect(page.get_by_role("checkbox", name=re.compile("Rappels de panier"))).not_to_be_checked()
    await expect(page.get_by_role("checkbox", name=re.compile("Offres et promotions"))).to_be_checked()

    # In English on request, then the one-click unsubscribe button.
    await page.goto(unsubscribe)
    await page.get_by_role("link", name="English").click()
    await expect(page.get_by_role("heading", name="Unsubscribe")).to_be_visible()
    await page.get_by_role("button", name="Unsubscribe").click()
    await expect(page.get_by_role("heading", name="You are unsubscribed.")).to_be_visible()
    await _shoot(page, shots, "4-unsubscribed")
    assert (await _customer(fresh, "c-browser-1"))["consent"] == "opted_out"

    # Clicking again (a reload re-posts) is harmless.
    await page.go_back()
    await page.get_by_role("button", name="Unsubscribe").click()
    await expect(page.get_by_role("heading", name="You are unsubscribed.")).to_be_visible()
    assert (await _customer(fresh, "c-browser-1"))["consent"] == "opted_out"

    # A forged link shows a refusal, in both languages, and changes nothing.
    response = await page.goto(_altered(unsubscribe))
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", name="Lien invalide")).to_be_visible()
    await expect(page.get_by_role("heading", name="Invalid link")).to_be_visible()
    await _shoot(page, shots, "5-forged-link")


async def _links_of(runner: ScenarioRunner, message_id: str) -> list[dict[str, str]]:
    async with runner.engine.connect() as conn:
        row = (
            await conn.execute(text("SELECT links FROM sends WHERE message_id = :m"), {"m": message_id})
        ).first()
    assert row is not None, f"no send recorded for {message_id}"
    links: list[dict[str, str]] = row.links
    return links


async def test_click_redirect_and_open_pixel_for_a_delivered_email(
    pipeline: Settings, fresh: ScenarioRunner
) -> None:
    email = await _sign_up(fresh, "c-browser-2", "bea@example.com", "en")
    message_id = str(email["Message-ID"])
    links = await _links_of(fresh, message_id)
    assert links, "the dispatcher stores the links of every email it sends"
    body = email.get_body(("plain", "html"))
    tracked = re.findall(r"https?://\S+/t/c/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", body.get_content() if body else "")
    assert tracked, "the email's links go through the click tracker"
    click = tracked[0]
    index = 0  # the first tracked link of an email is its first stored link
    keys = SigningKeys.from_settings(pipeline)

    async with httpx.AsyncClient(timeout=30) as client:
        redirected = await client.get(click + "?url=https://evil.example/")
        assert redirected.status_code == 302
        assert redirected.headers["location"] == links[index]["url"]  # never the query's URL
        beyond = await client.get(click_url(pipeline, keys, message_id, "c-browser-2", len(links)))
        assert beyond.status_code == 404 and "location" not in beyond.headers
        someone_else = await client.get(click_url(pipeline, keys, message_id, "c-browser-1", 0))
        assert someone_else.status_code == 404 and "location" not in someone_else.headers
        forged = await client.get(_altered(click))
        assert forged.status_code == 404 and "location" not in forged.headers

        pixel = await client.get(open_pixel_url(pipeline, keys, message_id, "c-browser-2"))
        assert pixel.status_code == 200 and pixel.content == PIXEL_GIF
        bogus_pixel = await client.get(f"{pipeline.public_url}/t/o/not.atoken.gif")
        assert bogus_pixel.status_code == 200 and bogus_pixel.content == PIXEL_GIF

    await fresh.watch.wait_idle()
    async with fresh.engine.connect() as conn:
        recorded = (
            await conn.execute(
                text(
                    "SELECT kind, journey, step, link FROM email_events"
                    " WHERE customer_id = 'c-browser-2' ORDER BY kind"
                )
            )
        ).all()
    assert [tuple(row) for row in recorded] == [
        ("clicked", "prospect_welcome", 1, links[index].get("name") or str(index)),
        ("opened", "prospect_welcome", 1, None),
    ]
    stored = await _customer(fresh, "c-browser-2")
    assert stored["last_engagement_at"] is not None
