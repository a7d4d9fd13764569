"""Admin routes for campaigns (admin key only), as `lifecycle campaigns` does from the command line.

`POST /v1/admin/campaigns` takes one campaign as a JSON object (docs/campaigns.md), checked as a
campaign file is; it is scheduled, or replaces the scheduled campaign of that name. `GET` lists them
with their progress, `GET /{name}` shows one with its definition, `POST /{name}/cancel` stops every
send of it not yet started.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Path, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.campaign_catalog import MAX_CAMPAIGN_BYTES, CampaignConflict, CampaignInfo, Saved
from lifecycle.core.campaigns import CampaignError, campaign_json_schema
from lifecycle.core.journeys import NAME_PATTERN
from services.ingest.admin import read_json_object
from services.ingest.answers import ADMIN_KEY_RESPONSES, ErrorBody

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class CampaignStore(Protocol):
    """Where campaigns live (PostgreSQL in the service)."""

    async def save(self, value: dict[str, Any], origin: str) -> Saved: ...

    async def campaigns(self, name: str | None) -> list[CampaignInfo]: ...

    async def cancel(self, name: str) -> CampaignInfo | None: ...


class CampaignProblemView(BaseModel):
    field: str
    message: str


class InvalidCampaign(BaseModel):
    detail: str
    errors: list[CampaignProblemView]


class CampaignProgress(BaseModel):
    pending: int
    sending: int
    sent: int
    skipped: int
    failed: int
    cancelled: int


class CampaignView(BaseModel):
    name: str
    status: Literal["scheduled", "sending", "done", "cancelled"]
    category: str
    send_at: str
    local_time: bool
    start_at: str
    source: Literal["file", "api"]
    origin: str
    created_at: str
    updated_at: str
    started_at: str | None
    cancelled_at: str | None
    audience: int | None
    passed: int | None
    progress: CampaignProgress
    definition: str | None = None


class SavedCampaignView(CampaignView):
    outcome: Literal["created", "replaced", "unchanged"]


class CampaignList(BaseModel):
    campaigns: list[CampaignView]


def campaigns_router(store: CampaignStore | None, dependencies: Sequence[Depends],
                     template_names: list[str], segment_names: list[str] | None) -> APIRouter:
    router = APIRouter(tags=["admin"], dependencies=list(dependencies))
    unavailable_doc = {"model": ErrorBody, "description": "PostgreSQL is unavailable; retry after Retry-After"}

    def unavailable(exc: Exception | None = None) -> JSONResponse:
        if exc is not None:
            log.warning("campaign store unavailable: %s", exc)
        detail = "campaigns are not configured on this server" if exc is None else \
            "PostgreSQL is unavailable; retry later"
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @router.post(
        "/v1/admin/campaigns",
        openapi_extra={"requestBody": {
            "required": True,
            "description": "One campaign (docs/campaigns.md), as JSON. A named segment is one of those there"
                           " were when the API started (one added to LIFECYCLE_SEGMENTS_DIR since is taken too)."
                           " Checked on top of the schema: variant names differ.",
            "content": {"application/json": {"schema": campaign_json_schema(template_names, segment_names)}},
        }},
        responses={
            200: {"model": SavedCampaignView, "description": "It replaced the scheduled campaign of that name"
                  " (`outcome: replaced`), or was that campaign already (`unchanged`)"},
            201: {"model": SavedCampaignView, "description": "Scheduled: it starts at `start_at`"},
            400: {"model": ErrorBody, "description": "The body is not a JSON object"},
            **ADMIN_KEY_RESPONSES,
            409: {"model": ErrorBody, "description": "A campaign of that name has started or was cancelled"},
            413: {"model": ErrorBody, "description": f"The body is larger than {MAX_CAMPAIGN_BYTES} bytes"},
            415: {"model": ErrorBody, "description": "Not application/json"},
            422: {"model": InvalidCampaign, "description": "Not a valid campaign; every problem is listed"},
            503: unavailable_doc,
        },
        status_code=201,
        summary="Schedule a campaign, or replace one not started yet",
    )
    async def save_campaign(request: Request) -> JSONResponse:
        value = await read_json_object(request, MAX_CAMPAIGN_BYTES, "campaign")
        if isinstance(value, JSONResponse):
            return value
        if store is None:
            return unavailable()
        try:
            saved = await store.save(value, "api")
        except CampaignError as exc:
            errors = [{"field": p.field, "message": p.message} for p in exc.problems]
            return JSONResponse({"detail": f"{len(errors)} problem(s) in the campaign; nothing was saved",
                                 "errors": errors}, status_code=422)
        except CampaignConflict as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        log.info("campaign %s %s (starts %s)", saved.info.name, saved.outcome, saved.info.start_at.isoformat())
        return JSONResponse({**saved.info.as_json(), "outcome": saved.outcome},
                            status_code=201 if saved.outcome == "created" else 200)

    @router.get(
        "/v1/admin/campaigns",
        responses={200: {"model": CampaignList, "description": "Every campaign, by start"},
                   **ADMIN_KEY_RESPONSES, 503: unavailable_doc},
        summary="List campaigns and their progress",
    )
    async def list_campaigns() -> JSONResponse:
        if store is None:
            return unavailable()
        try:
            found = await store.campaigns(None)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        return JSONResponse({"campaigns": [info.as_json() for info in found]})

    @router.get(
        "/v1/admin/campaigns/{name}",
        responses={200: {"model": CampaignView, "description": "One campaign, its progress and its definition"},
                   **ADMIN_KEY_RESPONSES, 404: {"model": ErrorBody, "description": "No campaign of that name"},
                   503: unavailable_doc},
        summary="One campaign, with its definition",
    )
    async def show_campaign(name: Annotated[str, Path(pattern=NAME_PATTERN)]) -> JSONResponse:
        if store is None:
            return unavailable()
        try:
            found = await store.campaigns(name)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        if not found:
            return JSONResponse({"detail": f"no campaign named {name!r}"}, status_code=404)
        return JSONResponse(found[0].as_json(with_definition=True))

    @router.post(
        "/v1/admin/campaigns/{name}/cancel",
        responses={200: {"model": CampaignView, "description": "Cancelled (again, if it already was): nothing"
                                                              " more of it is sent"},
                   **ADMIN_KEY_RESPONSES, 404: {"model": ErrorBody, "description": "No campaign of that name"},
                   503: unavailable_doc},
        summary="Cancel a campaign: every send not yet started stops",
    )
    async def cancel_campaign(name: Annotated[str, Path(pattern=NAME_PATTERN)]) -> JSONResponse:
        if store is None:
            return unavailable()
        try:
            found = await store.cancel(name)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        if found is None:
            return JSONResponse({"detail": f"no campaign named {name!r}"}, status_code=404)
        log.info("campaign %s cancelled", name)
        return JSONResponse(found.as_json())

    return router
