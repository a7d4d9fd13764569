"""What a POST from a link page does: publish one event, under a fresh event id, and say how it went."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal, Protocol

from fastapi import Request
from fastapi.responses import HTMLResponse

from lifecycle.clock import Clock
from lifecycle.events import Event, EventInvalid, EventType, Origin, parse_event
from lifecycle.events.fields import ip_text
from lifecycle.tokens import UnsubscribeClaim
from services.ingest.pages.render import ShopPages, message_page
from services.ingest.pages.texts import Lang

# The package's logger, so records keep the name they had before pages.py became a package.
log = logging.getLogger(__package__)


class PublishFailed(Exception):
    """Kafka did not acknowledge the events in time; nothing can be promised."""


class Publish(Protocol):
    """The ingest API's one publish path (metrics, timeout); raises PublishFailed."""

    def __call__(self, events: Sequence[Event], /, *, timeout: float | None = None) -> Awaitable[None]: ...


_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


def origin_of(request: Request, source: Literal["link", "page"]) -> Origin:
    """The proof a consent change from our own link or page keeps: the customer's IP address (the
    proxies' X-Forwarded-For is read by the server where LIFECYCLE_FORWARDED_ALLOW_IPS trusts them)
    and browser."""
    ip = ip_text(request.client.host) if request.client is not None else None
    agent = _CONTROLS.sub(" ", request.headers.get("user-agent", "")).strip()[:512] or None
    return Origin(source=source, ip=ip, user_agent=agent)


def unsubscribed_event(claim: UnsubscribeClaim) -> dict[str, object]:
    return {
        "type": EventType.UNSUBSCRIBED.value,
        "customer_id": claim.customer_id,
        "properties": {"message_id": claim.message_id},
    }


def preferences_event(customer_id: str, left: Sequence[str]) -> dict[str, object]:
    """`left`: the categories the customer no longer receives."""
    return {
        "type": EventType.CUSTOMER_UPDATED.value,
        "customer_id": customer_id,
        "traits": {"unsubscribed_categories": left},
    }


def consent_confirmed_event(customer_id: str, email: object) -> dict[str, object]:
    return {
        "type": EventType.CONSENT_CONFIRMED.value,
        "customer_id": customer_id,
        # As stored (it equals the link's address but for case): the stager checks it is still current.
        "properties": {"email": email},
    }


class LinkActions:
    """Publishes the events of the link pages through `publish`, each named by `new_event_id`."""

    def __init__(self, pages: ShopPages, clock: Clock, publish: Publish, new_event_id: Callable[[], str]) -> None:
        self._pages = pages
        self._clock = clock
        self._publish = publish
        self._new_event_id = new_event_id

    async def publish_one(self, raw: dict[str, object], lang: Lang | None, origin: Origin) -> HTMLResponse | None:
        """Publishes one link event under a fresh event id; a page to answer instead when it could not be."""
        try:
            # raw has no event_id: a fresh one
            event = parse_event(raw, await self._clock.now(), self._new_event_id, origin)
        except EventInvalid as exc:
            # Only possible if we signed bad data (say, a customer id with spaces).
            log.warning("a validly signed token carries bad data: %s", exc)
            return message_page(lang, 400, "invalid_title", "invalid_forged", shop=self._pages.shop)
        try:
            await self._publish([event])
        except PublishFailed:
            return self._pages.retry_page(lang)
        return None

    async def unsubscribe(self, claim: UnsubscribeClaim, lang: Lang | None, origin: Origin) -> HTMLResponse:
        failed = await self.publish_one(unsubscribed_event(claim), lang, origin)
        if failed is not None:
            return failed
        return self._pages.unsubscribed_page(lang)
