"""The seasonal campaign emails as a reader sees them: rendered, then opened in headless Chromium.

Each campaign template, in each locale, with the full sample and the bare one (no first name,
no coupon, no recommendations), and only what a campaign gives: `context` is the campaign's
name and nothing else. The page must load without a console or page error, show the shop's
name, its postal address and the button, have a real layout, and make a screenshot. The network is answered by
the test itself (a tiny PNG for every picture): nothing leaves the machine.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, Route

from lifecycle.templates import Templates, sample_contexts
from tests.support.browser import chromium

pytestmark = pytest.mark.integration
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a 1x1 transparent PNG: what every picture of the email (logo, products) gets
PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
LOCALES = ["fr", "en"]
# each template's button, in each locale: what the reader must see to go to the shop
BUTTONS = {
    "new_year": {"fr": "Découvrir la boutique", "en": "Discover the shop"},
    "winter_sales": {"fr": "Je découvre les soldes", "en": "Shop the sales"},
    "summer_sales": {"fr": "Je profite des soldes", "en": "Shop the summer sales"},
    "black_friday": {"fr": "Je découvre les offres", "en": "Shop Black Friday"},
    "christmas": {"fr": "Trouver le cadeau idéal", "en": "Find the perfect gift"},
}
TEMPLATES = Templates()


@dataclass
class Tab:
    """The one page every case is loaded into, and the errors it reported since it was last cleared."""

    page: Page
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as launched:
        yield launched


async def _offline(route: Route) -> None:
    """Every request answered here: pictures get a tiny PNG, anything else an empty answer."""
    if route.request.resource_type == "image":
        await route.fulfill(status=200, content_type="image/png", body=PIXEL_PNG)
    else:
        await route.fulfill(status=204, body=b"")


@pytest.fixture(scope="module")
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    page = await browser.new_page(viewport={"width": 800, "height": 900})
    found = Tab(page)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            found.errors.append(f"console: {message.text}")

    def on_page_error(error: Error) -> None:
        found.errors.append(f"page error: {error.message}")

    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    await page.route("**/*", _offline)
    try:
        yield found
    finally:
        await page.close()


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("name", sorted(BUTTONS))
async def test_a_campaign_email_opens_cleanly_in_a_browser(tab: Tab, name: str, locale: str) -> None:
    page = tab.page
    for index, values in enumerate(sample_contexts()[:2]):  # everything, then nothing optional
        values["context"] = {"campaign": "x"}
        rendered = TEMPLATES.render(name, values, locale=locale)
        where = f"{name} ({locale}, sample {index})"
        tab.errors.clear()
        await page.set_content(rendered.html, wait_until="load")
        text: str = await page.evaluate("document.body.innerText")
        width, height = await page.evaluate(
            "(() => { const box = document.body.getBoundingClientRect(); return [box.width, box.height]; })()"
        )
        shot = await page.screenshot()
        assert tab.errors == [], where
        assert values["shop"]["name"] in text, where
        assert values["shop"]["address"] in text, where  # the postal address a marketing email must show
        assert BUTTONS[name][locale] in text, where
        assert width > 300 and height > 300, (where, width, height)
        assert shot.startswith(PNG_SIGNATURE) and len(shot) > len(PNG_SIGNATURE), where
