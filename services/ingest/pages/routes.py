"""The router of the link pages: each handler checks the token, then the rate limits, then acts or shows."""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from lifecycle.clock import Clock
from lifecycle.events import EMAIL_CATEGORIES
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from services.ingest.pages.actions import (
    LinkActions,
    Publish,
    consent_confirmed_event,
    origin_of,
    preferences_event,
)
from services.ingest.pages.forms import field, read_form
from services.ingest.pages.links import LinkToken, confirm_claim, sent_to_current_address, unsubscribe_claim
from services.ingest.pages.openapi import (
    NOT_RECORDED,
    REFUSED_LINK,
    SHOWN,
    html_answer,
    preferences_form_doc,
    unsubscribe_form_doc,
)
from services.ingest.pages.readers import CustomerLookup, CustomerReader, LookupFailed
from services.ingest.pages.render import ShopPages, message_page
from services.ingest.pages.texts import FALLBACK_LANG, lang_of
from services.ingest.ratelimit import RateLimiter, client_address, token_key

# The package's logger, so records keep the name they had before pages.py became a package.
log = logging.getLogger(__package__)


def pages_router(
    settings: Settings,
    keys: SigningKeys,
    clock: Clock,
    publish: Publish,
    customer_reader: CustomerReader | None,
    *,
    new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    monotonic: Callable[[], float] = time.monotonic,
) -> APIRouter:
    """Unsubscribe, preferences and confirmation pages, published through `publish`.

    `new_event_id` names each event a POST publishes (a fresh uuid4 by default); `monotonic`
    is the rate limits' clock.
    """
    router = APIRouter(tags=["links in emails"])
    shop = settings.shop_name
    # Behind a proxy the API may live under a path: forms must post back there.
    prefix = urlsplit(settings.public_url).path.rstrip("/")
    default_lang = lang_of(settings.default_locale) or FALLBACK_LANG
    by_address = RateLimiter(settings.page_limit_per_ip_per_minute, max_keys=settings.rate_limit_max_keys,
                             now=monotonic)
    by_token = RateLimiter(settings.page_limit_per_token_per_minute, max_keys=settings.rate_limit_max_keys,
                           now=monotonic)
    pages = ShopPages(shop=shop, shop_url=settings.shop_url, prefix=prefix)
    customers = CustomerLookup(customer_reader, default_lang)
    actions = LinkActions(pages, clock, publish, new_event_id)

    def over_limit(request: Request, token: str) -> HTMLResponse | None:
        """The 429 page when this address or this link was used too often, else None.

        Checked once the token is known good (a forged one costs a MAC and is refused anyway), and
        before any lookup or publishing. The address first: a refusal there spends nothing of the token's.
        """
        verdict = by_address.check(client_address(request))
        if verdict.allowed:
            verdict = by_token.check(token_key(token))
        if verdict.allowed:
            return None
        retry = {"Retry-After": str(max(1, math.ceil(verdict.retry_after)))}
        return message_page(None, 429, "limited_title", "limited", shop=shop, headers=retry)

    # --- unsubscribe ---

    @router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe confirmation page",
                responses={**SHOWN, **REFUSED_LINK})
    async def unsubscribe_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = unsubscribe_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        shown = await customers.lang_for(lang, claim.customer_id) or default_lang
        # A GET must never act: link scanners and mail previews follow links. The form POSTs.
        return pages.unsubscribe_page(token, shown)

    @router.post(
        "/v1/unsubscribe/{token}",
        response_class=HTMLResponse,
        summary="One-click unsubscribe (RFC 8058); the token is the authorisation",
        openapi_extra=unsubscribe_form_doc(),
        responses={200: html_answer("Unsubscribed: the event is in Kafka"), **REFUSED_LINK, **NOT_RECORDED},
    )
    async def unsubscribe(token: LinkToken, request: Request) -> HTMLResponse:
        # The body (List-Unsubscribe=One-Click) carries no information: the token says it all.
        claim = unsubscribe_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request) or {}
        lang = await customers.lang_for(field(form, "lang"), claim.customer_id)
        return await actions.unsubscribe(claim, lang, origin_of(request, "link"))

    # --- preferences ---

    @router.get("/v1/preferences/{token}", response_class=HTMLResponse, summary="Email preferences page",
                responses={**SHOWN, **REFUSED_LINK})
    async def preferences_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = unsubscribe_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        found, shown = await customers.customer_and_lang(claim.customer_id, lang)
        left = found.get("unsubscribed_categories") if found else None
        left_set = set(left) if isinstance(left, list | tuple) else set()
        opted_out = found is not None and found.get("consent") == "opted_out"
        return pages.preferences_page(token, shown, left_set, opted_out)

    @router.post(
        "/v1/preferences/{token}",
        response_class=HTMLResponse,
        summary="Save email preferences, or unsubscribe from all marketing; the token is the authorisation",
        openapi_extra=preferences_form_doc(),
        responses={200: html_answer("Saved: the event is in Kafka"), **REFUSED_LINK, **NOT_RECORDED},
    )
    async def save_preferences(token: LinkToken, request: Request) -> HTMLResponse:
        claim = unsubscribe_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request)
        action = field(form, "action") if form else None
        receive = form.get("receive", []) if form else []
        lang = await customers.lang_for(field(form, "lang") if form else None, claim.customer_id)
        if action not in ("save", "all") or not set(receive) <= set(EMAIL_CATEGORIES):
            # Not our form (or a tampered one): refuse rather than guess a choice.
            return message_page(lang, 400, "bad_form_title", "bad_form", shop=shop)
        if action == "all":
            return await actions.unsubscribe(claim, lang, origin_of(request, "page"))
        left = sorted(set(EMAIL_CATEGORIES) - set(receive))
        failed = await actions.publish_one(preferences_event(claim.customer_id, left), lang,
                                           origin_of(request, "page"))
        if failed is not None:
            return failed
        return pages.preferences_saved_page(token, lang or default_lang, left)

    # --- double opt-in ---

    @router.get(
        "/v1/confirm/{token}",
        response_class=HTMLResponse,
        summary="Double opt-in confirmation page",
        responses={
            200: html_answer("The page, with a button that confirms"),
            **REFUSED_LINK,
            403: html_answer("Forged or outdated link, or sent to an address the customer no longer has"),
        },
    )
    async def confirm_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = confirm_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        found, shown = await customers.customer_and_lang(claim.customer_id, lang)
        # Said now rather than after the button: the POST would refuse it anyway.
        if found is not None and not sent_to_current_address(found, claim):
            return pages.other_address_page(shown)
        return pages.confirm_page(token, shown)

    @router.post(
        "/v1/confirm/{token}",
        response_class=HTMLResponse,
        summary="Confirm a subscription (double opt-in); the token is the authorisation",
        responses={
            200: html_answer("Confirmed: consent_confirmed is in Kafka"),
            **REFUSED_LINK,
            403: html_answer("Forged or outdated link, unknown customer, or sent to an address the customer "
                             "no longer has; nothing is recorded"),
            **NOT_RECORDED,
        },
    )
    async def confirm(token: LinkToken, request: Request) -> HTMLResponse:
        claim = confirm_claim(keys, token, shop)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request) or {}
        chosen = lang_of(field(form, "lang"))
        try:
            found = await customers.lookup(claim.customer_id)
        except LookupFailed as exc:
            # The address must be checked before anything is recorded: no check, no confirmation.
            log.warning("customer lookup for a confirmation failed: %s", exc)
            return pages.retry_page(chosen)
        lang = chosen or (lang_of(found.get("locale")) if found else None)
        if found is None:
            return message_page(lang, 403, "invalid_title", "invalid_outdated", shop=shop)
        if not sent_to_current_address(found, claim):
            return pages.other_address_page(lang)
        failed = await actions.publish_one(consent_confirmed_event(claim.customer_id, found["email"]), lang,
                                           origin_of(request, "link"))
        if failed is not None:
            return failed
        return pages.confirmed_page(lang)

    return router
