"""Shopify's webhooks on the ingest service: `POST /v1/webhooks/shopify`, the URL a shop's Shopify app
subscribes to its topics (docs/integrations.md#shopify-webhooks).

A webhook is taken only signed: `X-Shopify-Hmac-SHA256` is the base64 HMAC-SHA256 of the raw body under
the app's secret (`LIFECYCLE_SHOPIFY_SECRETS`: one, or two during a rotation); otherwise `401`, and nothing
is published. Its topic (`X-Shopify-Topic`) picks its handler in one table (`TOPICS` below, plus those
given to the router); a topic without one is answered `200` and counted, since Shopify would only retry
it. The events are published as `/v1/events` publishes them, and the answer comes once Kafka has them,
well within Shopify's 5 s (`503` with `Retry-After` otherwise: Shopify delivers again). Their ids are
derived from `X-Shopify-Webhook-Id`, so that a webhook delivered again counts once; a worker also
remembers the ids it published lately and does not publish them again.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.events import Event
from lifecycle.payloads import id_text
from lifecycle.shopify import MAPPINGS, Delivery, KnownOrder, PayloadInvalid, read_webhook
from services.ingest import metrics
from services.ingest.answers import ErrorBody
from services.ingest.bodies import decode_json, read_body

log = logging.getLogger(__name__)

PATH: Final = "/v1/webhooks/shopify"
MAX_BODY_BYTES: Final = 1024 * 1024
PUBLISH_TIMEOUT_SECONDS: Final = 3.0  # Shopify waits 5 s for the answer
LOOKUP_TIMEOUT_SECONDS: Final = 1.0
RETRY_AFTER_SECONDS: Final = 5
RECENT_WEBHOOKS: Final = 10_000  # webhook ids a worker remembers having published
OTHER_TOPIC: Final = "other"  # the metrics' topic for those without a handler (bounded labels)

OrderReader = Callable[[str], Awaitable[KnownOrder | None]]


@dataclass(frozen=True)
class Webhook:
    """One signed webhook, read: what a topic's handler gets."""

    topic: str
    webhook_id: str  # X-Shopify-Webhook-Id, else a digest of the body
    payload: Any
    received_at: datetime


class Unavailable(Exception):
    """What a handler raises when what it needs (Kafka, the database) does not answer: a 503."""


TopicHandler = Callable[[Webhook], Awaitable[tuple[int, Sequence[str]]]]  # (events published, left out)


class ShopifyAnswer(BaseModel):
    outcome: Literal["accepted", "nothing_kept", "duplicate", "ignored"]
    events: int


class RecentIds:
    """The last ids seen, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._capacity = capacity

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


def signed(body: bytes, signature: str | None, secrets: Sequence[str]) -> bool:
    """Whether `signature` is the base64 HMAC-SHA256 of `body` under one of `secrets`."""
    if not signature:
        return False
    presented = signature.strip().encode()
    matched = False
    for secret in secrets:  # every secret, without stopping early: timing reveals nothing
        digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(base64.b64encode(digest), presented)
    return matched


def shopify_router(publish: Callable[..., Awaitable[None]], now: Callable[[], Awaitable[datetime]],
                   secrets: Sequence[str], publish_failed: type[Exception], order_reader: OrderReader | None,
                   topics: Mapping[str, TopicHandler] | None = None) -> APIRouter:
    """The route. `topics` adds handlers to (or replaces those of) the mapped topics."""
    router = APIRouter(tags=["shopify"])
    recent = RecentIds(RECENT_WEBHOOKS)

    async def publish_events(events: list[Event]) -> None:
        if not events:
            return
        try:
            await publish(events, timeout=PUBLISH_TIMEOUT_SECONDS)
        except publish_failed as exc:
            raise Unavailable(str(exc)) from exc

    async def mapped(webhook: Webhook, order: KnownOrder | None = None) -> tuple[int, Sequence[str]]:
        read = read_webhook(webhook.payload, Delivery(webhook.topic, webhook.webhook_id, webhook.received_at, order))
        await publish_events(read.events)
        return len(read.events), read.left_out

    async def refund(webhook: Webhook) -> tuple[int, Sequence[str]]:
        """A refund names its order, not its customer: the order as the stager keeps it says whose it is."""
        order_id = id_text(webhook.payload.get("order_id")) if isinstance(webhook.payload, Mapping) else None
        order = None
        if order_id is not None and order_reader is not None:
            try:
                async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                    order = await order_reader(order_id)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise Unavailable(f"the order store did not answer: {exc}") from exc
        return await mapped(webhook, order)

    # topic -> its handler: adding a topic is one entry here (or in `topics`)
    handlers: dict[str, TopicHandler] = {topic: mapped for topic in MAPPINGS}
    handlers["refunds/create"] = refund
    handlers.update(topics or {})

    def refuse(status: int, detail: str, topic: str, outcome: str, retry_after: int | None = None) -> JSONResponse:
        metrics.SHOPIFY_WEBHOOKS.labels(topic=topic, outcome=outcome).inc()
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)

    def answer(topic: str, outcome: str, events: int) -> JSONResponse:
        metrics.SHOPIFY_WEBHOOKS.labels(topic=topic, outcome=outcome).inc()
        return JSONResponse({"outcome": outcome, "events": events})

    async def receive(request: Request) -> JSONResponse:
        topic = (request.headers.get("x-shopify-topic") or "").strip(" \t")  # HTTP's own spaces
        label = topic if topic in handlers else OTHER_TOPIC
        signature = request.headers.get("x-shopify-hmac-sha256")
        if not signature:
            return refuse(401, "X-Shopify-Hmac-SHA256 is missing: Shopify signs every webhook", label,
                          "unauthorized")
        if not topic:
            return refuse(400, "X-Shopify-Topic is missing", label, "invalid")
        if not secrets:
            return refuse(404, "Shopify webhooks are not enabled: set LIFECYCLE_SHOPIFY_SECRETS to the app's secret",
                          label, "not_enabled")
        body = await read_body(request, MAX_BODY_BYTES)
        if not signed(body, signature, secrets):
            return refuse(401, "X-Shopify-Hmac-SHA256 is not the body's signature under the app's secret"
                               " (LIFECYCLE_SHOPIFY_SECRETS)", label, "unauthorized")
        payload = decode_json(body, "the body is empty: a Shopify webhook is a JSON object")
        if not isinstance(payload, dict):
            return refuse(400, "a Shopify webhook's body is a JSON object", label, "invalid")
        handler = handlers.get(topic)
        if handler is None:
            log.info("Shopify webhook of topic %r answered and not read: no handler", topic[:100])
            return answer(label, "ignored", 0)
        webhook_id = id_text(request.headers.get("x-shopify-webhook-id")) \
            or "sha256:" + hashlib.sha256(topic.encode() + b"\n" + body).hexdigest()
        if webhook_id in recent:
            return answer(label, "duplicate", 0)
        try:
            published, left_out = await handler(Webhook(topic, webhook_id, payload, await now()))
        except PayloadInvalid as exc:
            return refuse(400, str(exc), label, "invalid")
        except Unavailable as exc:
            log.warning("Shopify webhook %s (%s) not taken: %s", webhook_id[:80], topic, exc)
            return refuse(503, "events could not be stored right now; retry later (a webhook delivered again"
                               " counts once)", label, "unavailable", RETRY_AFTER_SECONDS)
        recent.add(webhook_id)
        for what in left_out:
            metrics.SHOPIFY_LEFT_OUT.labels(what=what.split(" ")[0]).inc()
        if left_out:
            log.info("Shopify webhook %s (%s) accepted with parts left out: %s", webhook_id[:80], topic,
                     "; ".join(left_out[:10]))
        # a privacy topic's work publishes no event and leaves nothing out: accepted too
        return answer(label, "accepted" if published or not left_out else "nothing_kept", published)

    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": ShopifyAnswer, "description": "Taken: its events are stored in Kafka, or the privacy request"
              " is done (`accepted`), or"
              " nothing of it was kept (`nothing_kept`: see lifecycle_ingest_shopify_left_out_total), or it was"
              " published already (`duplicate`), or its topic is not read here (`ignored`)"},
        400: {"model": ErrorBody, "description": "Without X-Shopify-Topic, or signed but not a JSON object"},
        401: {"model": ErrorBody, "description": "X-Shopify-Hmac-SHA256 missing or wrong; nothing was kept"},
        404: {"model": ErrorBody, "description": "Shopify webhooks are not enabled (LIFECYCLE_SHOPIFY_SECRETS): a"
                                                 " request with both headers"},
        413: {"model": ErrorBody, "description": f"The body is larger than {MAX_BODY_BYTES} bytes"},
        503: {"model": ErrorBody, "description": "Kafka or the database is unavailable; retry after Retry-After"},
    }
    # a value of HTTP's spaces alone (which the server strips) is no value
    header = {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "[^ \t]"}
    extra: dict[str, Any] = {
        "parameters": [
            {"name": "X-Shopify-Hmac-SHA256", "in": "header", "required": True, "schema": header,
             "description": "base64 HMAC-SHA256 of the raw body, keyed with the app's secret"},
            {"name": "X-Shopify-Topic", "in": "header", "required": True, "schema": header,
             "description": "customers/create, customers/update, checkouts/create, checkouts/update,"
                            " orders/create, orders/updated, orders/cancelled, refunds/create, and the privacy topics"
                            " customers/redact, customers/data_request, shop/redact; others are answered and"
                            " not read"},
            {"name": "X-Shopify-Webhook-Id", "in": "header", "required": False, "schema": header,
             "description": "the delivery's id: a webhook delivered again counts once"},
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "description": "the topic's resource, as Shopify's REST Admin API gives it"}}}},
    }
    router.add_api_route(PATH, receive, methods=["POST"], responses=responses, openapi_extra=extra,
                         summary="Shopify's webhooks (signed with the app's secret)", name="shopify_webhook")
    return router


__all__: Sequence[str] = ("OrderReader", "TopicHandler", "Unavailable", "Webhook", "shopify_router", "signed")
