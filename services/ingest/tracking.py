"""Open pixel and click redirect: `GET /t/o/{token}.gif` and `GET /t/c/{token}`.

* The pixel is always the same 1x1 transparent GIF, whatever the token: a scanner cannot
  learn which tokens are valid. Only a valid open token publishes `email_opened`, after
  the answer is sent (nobody waits for Kafka to see an image).
* The click redirect goes only to `links[index].url` of the message the token names, as
  stored in `sends` when the email was composed; nothing in the request can choose the
  target, so this is no open redirect. `email_clicked` is published before the 302; if
  Kafka fails the shopper is still sent on (the click is lost, logged and counted).
* Opens are a weak signal (mail privacy proxies fetch images unread); clicks are the
  strong one. See docs/tracking.md.
* Rate limits never change the answer, only what is recorded: at most
  LIFECYCLE_OPEN_LIMIT_PER_TOKEN_PER_MINUTE opens per pixel and LIFECYCLE_CLICK_LIMIT_PER_TOKEN_PER_MINUTE
  clicks per link a minute, and nothing beyond the per-address limits, so a flood of hits
  never becomes a flood of events (counted as `limited`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Final, Protocol

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.background import BackgroundTask

from lifecycle.clock import Clock
from lifecycle.events import EventInvalid, EventType, parse_event
from lifecycle.settings import Settings
from lifecycle.tokens import InvalidToken, MalformedToken, SigningKeys
from lifecycle.tracking import TrackingClaim, read_click_token, read_open_token
from services.ingest import metrics
from services.ingest.pages import RETRY_AFTER_SECONDS, LinkToken, Publish, PublishFailed, html_answer, message_page
from services.ingest.ratelimit import RateLimiter, client_address, token_key

log = logging.getLogger(__name__)

# The pixel answers its image whatever the token: any text is a token it takes.
PixelToken = Annotated[str, Path(description="The open token of the email (any text gets the image)")]

# The classic 43-byte transparent 1x1 GIF.
PIXEL_GIF: Final = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every fetch must reach us (each is an open), and nothing may keep or share the answer.
NO_CACHE: Final[Mapping[str, str]] = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}
# The shopper waits on a click: past this, the click is dropped and they go on anyway.
CLICK_PUBLISH_TIMEOUT_SECONDS: Final = 3.0
LOOKUP_TIMEOUT_SECONDS: Final = 5.0
# Only web links are followed, whatever a template stored.
_WEB_SCHEMES: Final = ("https://", "http://")


class MessageReader(Protocol):
    """Looks an email up by Message-ID: {customer_id, journey, step, variant, links}; None when unknown."""

    def __call__(self, message_id: str, /) -> Awaitable[Mapping[str, object] | None]: ...


class _LookupFailed(Exception):
    """The message store did not answer."""


def pixel(background: BackgroundTask | None = None) -> Response:
    return Response(PIXEL_GIF, media_type="image/gif", headers=dict(NO_CACHE), background=background)


def tracking_router(
    settings: Settings,
    keys: SigningKeys,
    clock: Clock,
    publish: Publish,
    message_reader: MessageReader | None,
    *,
    new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    monotonic: Callable[[], float] = time.monotonic,
) -> APIRouter:
    """The open pixel and the click redirect, publishing through `publish` (each hit a new event id).

    `monotonic` is the rate limits' clock.
    """
    router = APIRouter(tags=["tracking"])
    shop = settings.shop_name
    keys_kept = settings.rate_limit_max_keys
    opens_by_address = RateLimiter(settings.open_limit_per_ip_per_minute, max_keys=keys_kept, now=monotonic)
    opens_by_token = RateLimiter(settings.open_limit_per_token_per_minute, max_keys=keys_kept, now=monotonic)
    clicks_by_address = RateLimiter(settings.click_limit_per_ip_per_minute, max_keys=keys_kept, now=monotonic)
    clicks_by_token = RateLimiter(settings.click_limit_per_token_per_minute, max_keys=keys_kept, now=monotonic)

    def within_limits(by_address: RateLimiter, by_token: RateLimiter, request: Request, token: str) -> bool:
        # The address first: a hit refused there takes nothing from the token's allowance.
        return by_address.check(client_address(request)).allowed and by_token.check(token_key(token)).allowed

    async def message(message_id: str) -> Mapping[str, object] | None:
        if message_reader is None:
            raise _LookupFailed("no message store configured")
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                return await message_reader(message_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _LookupFailed(str(exc) or type(exc).__name__) from exc

    async def record(kind: str, raw: dict[str, object], timeout: float | None) -> bool:
        try:
            event = parse_event(raw, await clock.now(), new_event_id)
        except EventInvalid as exc:
            # Only possible if we signed or stored bad data; never worth failing the shopper.
            log.warning("%s event for message %r is invalid: %s", kind, raw.get("properties"), exc)
            metrics.TRACKING.labels(kind=kind, outcome=metrics.TRACKING_NOT_RECORDED).inc()
            return False
        try:
            await publish([event], timeout=timeout)
        except PublishFailed as exc:
            log.warning("%s of %s not recorded: Kafka did not acknowledge (%s)", kind, event.customer_id, exc)
            metrics.TRACKING.labels(kind=kind, outcome=metrics.TRACKING_NOT_RECORDED).inc()
            return False
        metrics.TRACKING.labels(kind=kind, outcome=metrics.TRACKING_RECORDED).inc()
        return True

    async def record_open(claim: TrackingClaim) -> None:
        properties: dict[str, object] = {"message_id": claim.message_id}
        try:
            found = await message(claim.message_id)
        except _LookupFailed as exc:
            # The token alone proves who opened what; journey and step are a nicety.
            log.warning("message lookup for an open failed: %s", exc)
            found = None
        if found is not None:
            if found.get("customer_id") != claim.customer_id:
                log.warning("open token for message %s names another customer; ignored", claim.message_id)
                metrics.TRACKING.labels(kind="open", outcome=metrics.TRACKING_UNKNOWN_MESSAGE).inc()
                return
            properties.update(journey=found.get("journey"), step=found.get("step"))
        raw: dict[str, object] = {
            "type": EventType.EMAIL_OPENED.value,
            "customer_id": claim.customer_id,
            "properties": properties,
        }
        await record("open", raw, None)

    @router.get(
        "/t/o/{token}.gif",
        response_class=Response,
        responses={200: {"content": {"image/gif": {}},
                         "description": "A 1x1 transparent GIF, always: for any token, and beyond the rate limits"}},
        summary="Open-tracking pixel (an unreliable signal: privacy proxies prefetch images)",
    )
    async def open_pixel(token: PixelToken, request: Request) -> Response:
        try:
            claim = read_open_token(keys, token)
        except InvalidToken:
            metrics.TRACKING.labels(kind="open", outcome=metrics.TRACKING_INVALID_TOKEN).inc()
            return pixel()
        if not within_limits(opens_by_address, opens_by_token, request, token):
            # The same image all the same: the client cannot tell, and nothing is looked up or published.
            metrics.TRACKING.labels(kind="open", outcome=metrics.TRACKING_LIMITED).inc()
            return pixel()
        # Recorded after the image is sent: the mail client never waits on Kafka.
        return pixel(BackgroundTask(record_open, claim))

    def not_found() -> HTMLResponse:
        return message_page(None, 404, "invalid_title", "invalid_forged", shop=shop)

    @router.get(
        "/t/c/{token}",
        response_class=RedirectResponse,
        status_code=302,
        responses={
            302: {"description": "To the link stored with the email, and nowhere else; beyond the rate limits "
                                 "too (only the recording is skipped)"},
            400: html_answer("Garbled link"),
            404: html_answer("Forged link, unknown email or link"),
            503: html_answer("The email store is unavailable; retry after Retry-After"),
        },
        summary="Click redirect: records email_clicked, then goes to the email's stored link",
    )
    async def click(token: LinkToken, request: Request) -> Response:
        try:
            claim = read_click_token(keys, token)
        except InvalidToken as exc:
            metrics.TRACKING.labels(kind="click", outcome=metrics.TRACKING_INVALID_TOKEN).inc()
            if isinstance(exc, MalformedToken):
                return message_page(None, 400, "invalid_title", "invalid_damaged", shop=shop)
            return not_found()
        try:
            found = await message(claim.message_id)
        except _LookupFailed as exc:
            log.warning("message lookup for a click failed: %s", exc)
            metrics.TRACKING.labels(kind="click", outcome=metrics.TRACKING_LOOKUP_FAILED).inc()
            retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
            return message_page(None, 503, "retry_title", "retry", shop=shop, headers=retry)
        target = _target(found, claim)
        if found is None or target is None:
            metrics.TRACKING.labels(kind="click", outcome=metrics.TRACKING_UNKNOWN_MESSAGE).inc()
            return not_found()
        name, url = target
        redirect = RedirectResponse(url, status_code=302, headers={**NO_CACHE, "Referrer-Policy": "no-referrer"})
        if not within_limits(clicks_by_address, clicks_by_token, request, token):
            # A real shopper still goes where the link leads; only the recording is skipped.
            metrics.TRACKING.labels(kind="click", outcome=metrics.TRACKING_LIMITED).inc()
            return redirect
        raw: dict[str, object] = {
            "type": EventType.EMAIL_CLICKED.value,
            "customer_id": claim.customer_id,
            "properties": {
                "journey": found.get("journey"),
                "step": found.get("step"),
                "link": name,
                "message_id": claim.message_id,
            },
        }
        # Before the redirect: once the browser has left, nothing more reaches us.
        await record("click", raw, CLICK_PUBLISH_TIMEOUT_SECONDS)
        return redirect

    return router


def _target(found: Mapping[str, object] | None, claim: TrackingClaim) -> tuple[str, str] | None:
    """(link name, url) the click token points at, or None if it points at nothing we sent."""
    if found is None or found.get("customer_id") != claim.customer_id or claim.link_index is None:
        return None
    links = found.get("links")
    if not isinstance(links, list) or not 0 <= claim.link_index < len(links):
        return None
    link = links[claim.link_index]
    if not isinstance(link, Mapping):
        return None
    url = link.get("url")
    if not isinstance(url, str) or not url.lower().startswith(_WEB_SCHEMES) or any(c in url for c in "\r\n"):
        return None
    name = link.get("name")
    return (name.strip() if isinstance(name, str) and name.strip() else str(claim.link_index)), url

