"""Erasing and exporting a customer on request (admin key): `DELETE /v1/admin/customers/{id}` and
`GET /v1/admin/customers/{id}/export`. What they do is lifecycle/privacy.py's; docs/privacy.md."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Path
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.events import IDENTIFIER_PATTERN
from lifecycle.privacy import PRIVACY
from lifecycle.shopify import redacted_customer_ids
from services.ingest.answers import ADMIN_KEY_RESPONSES, ErrorBody
from services.ingest.shopify_routes import TopicHandler, Unavailable, Webhook

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
CustomerId = Annotated[str, Path(min_length=1, max_length=128, pattern=IDENTIFIER_PATTERN,
                                 description="The customer's id, as the shop sends it")]


class PrivacyStore(Protocol):
    """PostgreSQL's side (lifecycle/privacy.py in the service; a fake in unit tests)."""

    async def erase(self, customer_id: str) -> dict[str, int]: ...

    async def export(self, customer_id: str) -> dict[str, Any] | None: ...

    async def shopify_customers(self, limit: int) -> list[str]: ...


class Erased(BaseModel):
    customer_id: str
    removed: dict[str, int] = Field(description="Rows removed, by table; `addresses_suppressed`: the addresses"
                                                " now suppressed by their salted hash alone")
    tombstones: list[str] = Field(description="The topics the customer's tombstone was published to")


class Export(BaseModel):
    """Everything held about the customer (docs/privacy.md lists the parts)."""

    customer_id: str
    exported_at: str
    profile: dict[str, Any] | None
    consent_proof: list[dict[str, Any]]


# shop/redact erases for this long per delivery, then asks Shopify to come back (a 503): the next delivery
# goes on where this one stopped, and no answer is later than Shopify's 5 s
SHOP_REDACT_SECONDS = 3.5
SHOP_REDACT_BATCH = 50


def shopify_privacy_topics(store: PrivacyStore, publish_tombstones: Callable[[str], Awaitable[list[str]]],
                           monotonic: Callable[[], float]) -> dict[str, TopicHandler]:
    """Shopify's mandatory privacy webhooks: customers/redact erases the customer (under their Shopify id,
    and as the guest of their address), customers/data_request checks what the export holds for the shop
    to send them, shop/redact erases every customer that came through Shopify."""

    async def erase(customer_id: str) -> None:
        try:
            await store.erase(customer_id)
            await publish_tombstones(customer_id)
        except Exception as exc:  # the database's or Kafka's errors: asking again finishes the work
            raise Unavailable(f"erasing a customer: {str(exc) or type(exc).__name__}") from exc
        PRIVACY.labels(action="erased").inc()

    async def redact(webhook: Webhook) -> tuple[int, Sequence[str]]:
        for customer_id in redacted_customer_ids(_payload(webhook)):
            await erase(customer_id)
        return 0, ()

    async def data_request(webhook: Webhook) -> tuple[int, Sequence[str]]:
        held = []
        for customer_id in redacted_customer_ids(_payload(webhook)):
            try:
                found = await store.export(customer_id)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                raise Unavailable(f"reading a customer: {exc}") from exc
            if found is not None:
                held.append(customer_id)
        # the shop answers its customer: the export is one admin request away
        log.info("Shopify data request %s: data held under %s; GET /v1/admin/customers/{id}/export returns it",
                 webhook.webhook_id[:80], ", ".join(held) or "no customer id")
        return 0, () if held else ("nothing_held",)

    async def shop_redact(webhook: Webhook) -> tuple[int, Sequence[str]]:
        started = monotonic()
        erased = 0
        while ids := await _shopify_customers():
            for customer_id in ids:
                await erase(customer_id)
                erased += 1
                if monotonic() - started > SHOP_REDACT_SECONDS:
                    log.info("shop/redact: %d customers erased in this delivery, more remain", erased)
                    raise Unavailable("the shop's customers are being erased; the next delivery goes on")
        log.info("shop/redact: every customer that came through Shopify is erased (%d in this delivery)", erased)
        return 0, ()

    async def _shopify_customers() -> list[str]:
        try:
            return await store.shopify_customers(SHOP_REDACT_BATCH)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise Unavailable(f"listing the shop's customers: {exc}") from exc

    return {"customers/redact": redact, "customers/data_request": data_request, "shop/redact": shop_redact}


def _payload(webhook: Webhook) -> Mapping[str, Any]:
    return webhook.payload if isinstance(webhook.payload, Mapping) else {}


def privacy_router(store: PrivacyStore | None, publish_tombstones: Callable[[str], Awaitable[list[str]]],
                   dependencies: Sequence[Depends]) -> APIRouter:
    router = APIRouter(tags=["privacy"], dependencies=list(dependencies))
    unavailable_doc = {"model": ErrorBody, "description": "PostgreSQL or Kafka is unavailable; retry after"
                                                          " Retry-After (asking again is safe)"}

    def unavailable(what: str, exc: Exception | None = None) -> JSONResponse:
        if exc is not None:
            log.warning("%s failed: %s", what, str(exc) or type(exc).__name__)
        return JSONResponse({"detail": f"{what} could not be done now; retry later (asking again is safe)"},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @router.delete(
        "/v1/admin/customers/{customer_id}",
        responses={200: {"model": Erased, "description": "Erased (again, if nothing was left): the profile, events,"
                                                        " stored emails and tracking are gone, the addresses"
                                                        " suppressed by hash, the tombstone in Kafka"},
                   **ADMIN_KEY_RESPONSES, 503: unavailable_doc},
        summary="Erase a customer (right to erasure): nothing of them is kept but salted hashes",
    )
    async def erase(customer_id: CustomerId) -> JSONResponse:
        if store is None:
            return unavailable("erasing")
        try:
            removed = await store.erase(customer_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable("erasing", exc)
        try:
            topics = await publish_tombstones(customer_id)
        except Exception as exc:  # Kafka's errors, or no producer: the rows are gone, the tombstone is owed
            return unavailable("publishing the customer's tombstone", exc)
        PRIVACY.labels(action="erased").inc()
        log.info("customer erased: %d rows removed", sum(removed.values()))
        return JSONResponse(Erased(customer_id=customer_id, removed=removed, tombstones=topics).model_dump())

    @router.get(
        "/v1/admin/customers/{customer_id}/export",
        responses={200: {"model": Export, "description": "Everything held about the customer, as JSON"},
                   **ADMIN_KEY_RESPONSES, 404: {"model": ErrorBody, "description": "Nothing is held about them"},
                   503: unavailable_doc},
        summary="Export a customer (right of access): everything held about them",
    )
    async def export(customer_id: CustomerId) -> JSONResponse:
        if store is None:
            return unavailable("exporting")
        try:
            found = await store.export(customer_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable("exporting", exc)
        if found is None:
            return JSONResponse({"detail": "nothing is held about this customer"}, status_code=404)
        PRIVACY.labels(action="exported").inc()
        return JSONResponse(found)

    return router
