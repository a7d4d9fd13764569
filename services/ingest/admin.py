"""Admin routes: journeys applied and listed while the services run (admin key only).

`POST /v1/admin/journeys` takes one journey as a JSON object (`lifecycle journeys apply` takes the
YAML file), validated exactly like a journey file; it becomes the journey's current version: new runs
take it, runs in flight finish on their version (or move to it with `?runs=migrate`).
`GET /v1/admin/journeys` lists every version.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Path, Query, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.journey_catalog import (
    MAX_DEFINITION_BYTES,
    Applied,
    RunsPolicy,
    VersionInfo,
    catalog_view,
    definition_text,
)
from lifecycle.journey_files import JOURNEY_NAME, JourneyError, journey_json_schema
from services.ingest.answers import ADMIN_KEY_RESPONSES, ErrorBody

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class JourneyStore(Protocol):
    """Where versions live (PostgreSQL in the service; a fake in unit tests)."""

    async def apply(self, definition: str, runs: RunsPolicy, origin: str) -> Applied: ...

    async def versions(self, journey: str | None) -> list[VersionInfo]: ...


# --- documentation of the answers -------------------------------------------------------------


class JourneyProblem(BaseModel):
    field: str
    line: int
    message: str


class InvalidJourney(BaseModel):
    detail: str
    errors: list[JourneyProblem]


class VersionView(BaseModel):
    version: int
    version_id: int
    source: Literal["file", "api"]
    origin: str
    digest: str
    retired: bool
    created_at: str
    definition: str | None = None


class JourneyView(BaseModel):
    name: str
    current_version: int | None
    versions: list[VersionView]


class JourneyList(BaseModel):
    journeys: list[JourneyView]


class AppliedView(BaseModel):
    journey: str
    version: int
    version_id: int
    created: bool
    runs_migrated: int
    runs_ended: int


def _journey_body_doc(template_names: list[str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": "One journey in the journey file format (docs/journeys.md), as JSON. Checked on top"
                           " of the schema: the ids given to send steps differ, variant names differ, a coupon's"
                           " reuse_step names an earlier send step.",
            "content": {"application/json": {"schema": journey_json_schema(template_names)}},
        }
    }


def admin_router(store: JourneyStore | None, dependencies: Sequence[Depends],
                 template_names: list[str]) -> APIRouter:
    router = APIRouter(tags=["admin"], dependencies=list(dependencies))

    def unavailable(exc: Exception) -> JSONResponse:
        log.warning("journey store unavailable: %s", exc)
        return JSONResponse({"detail": "the journey store is unavailable; retry later"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def not_configured() -> JSONResponse:
        return JSONResponse({"detail": "journeys are not configured on this server"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    @router.post(
        "/v1/admin/journeys",
        openapi_extra=_journey_body_doc(template_names),
        responses={
            200: {"model": AppliedView, "description": "The same definition was already current: nothing changed"},
            201: {"model": AppliedView, "description": "A new version, current from now on"},
            400: {"model": ErrorBody, "description": "The body is not a JSON object, or `runs` is neither keep"
                                                    " nor migrate"},
            **ADMIN_KEY_RESPONSES,
            413: {"model": ErrorBody, "description": f"The body is larger than {MAX_DEFINITION_BYTES} bytes"},
            415: {"model": ErrorBody, "description": "Not application/json"},
            422: {"model": InvalidJourney, "description": "Not a valid journey; every problem is listed"},
            503: {"model": ErrorBody, "description": "The journey store is unavailable; retry after Retry-After"},
        },
        status_code=201,
        summary="Add or replace a journey while the services run",
    )
    async def apply_journey(
        request: Request,
        runs: Annotated[str, Query(
            description="keep: runs in flight finish on their version; migrate: they move to this one "
                        "at the step with the same id (those whose step is gone end)",
            json_schema_extra={"enum": ["keep", "migrate"]})] = "keep",
    ) -> JSONResponse:
        if runs not in ("keep", "migrate"):
            return JSONResponse({"detail": "runs is keep or migrate"}, status_code=400)
        value = await read_json_object(request, MAX_DEFINITION_BYTES, "journey")
        if isinstance(value, JSONResponse):
            return value
        definition = definition_text(value)
        if store is None:
            return not_configured()
        try:
            applied = await store.apply(definition, "migrate" if runs == "migrate" else "keep", "api")
        except JourneyError as exc:
            problems = [{"field": p.field, "line": p.line, "message": p.message} for p in exc.problems]
            return JSONResponse({"detail": f"{len(problems)} problem(s) in the journey; nothing was applied",
                                 "errors": problems}, status_code=422)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        version = applied.version
        log.info("journey %s version %d applied (%s runs in flight)", version.journey, version.version, runs)
        return JSONResponse({"journey": version.journey, "version": version.version,
                             "version_id": version.version_id, "created": applied.created,
                             "runs_migrated": applied.runs_migrated, "runs_ended": applied.runs_ended},
                            status_code=201 if applied.created else 200)

    @router.get(
        "/v1/admin/journeys",
        responses={
            200: {"model": JourneyList, "description": "Every journey with all its versions, oldest first"},
            **ADMIN_KEY_RESPONSES,
            503: {"model": ErrorBody, "description": "The journey store is unavailable; retry after Retry-After"},
        },
        summary="List journeys and their versions",
    )
    async def list_journeys() -> JSONResponse:
        if store is None:
            return not_configured()
        try:
            versions = await store.versions(None)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        return JSONResponse({"journeys": catalog_view(versions)})

    @router.get(
        "/v1/admin/journeys/{name}",
        responses={
            200: {"model": JourneyView, "description": "One journey, every version with its definition"},
            **ADMIN_KEY_RESPONSES,
            404: {"model": ErrorBody, "description": "No journey of that name"},
            503: {"model": ErrorBody, "description": "The journey store is unavailable; retry after Retry-After"},
        },
        summary="One journey and its versions, with their definitions",
    )
    async def show_journey(name: Annotated[str, Path(pattern=JOURNEY_NAME)]) -> JSONResponse:
        if store is None:
            return not_configured()
        try:
            versions = await store.versions(name)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return unavailable(exc)
        if not versions:
            return JSONResponse({"detail": f"no journey named {name!r}"}, status_code=404)
        return JSONResponse(catalog_view(versions, with_definition=True)[0])

    return router


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() else value


async def read_json_object(request: Request, max_bytes: int, what: str) -> dict[str, Any] | JSONResponse:
    """The posted JSON object (a journey, a campaign), or the answer that refuses it: too large, not
    JSON, not an object."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            return JSONResponse({"detail": f"the body is larger than {max_bytes} bytes"}, status_code=413)
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError:
        return JSONResponse({"detail": "the body is not UTF-8 text"}, status_code=400)
    if media != "application/json":
        return JSONResponse({"detail": f"send the {what} as application/json (`lifecycle {what}s apply` takes a"
                                       " YAML file)"}, status_code=415)
    try:
        # 3.0 is the integer 3 in JSON Schema: it reaches the checks as one
        obj = json.loads(text, parse_float=_number)
    except (ValueError, RecursionError):
        return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    if not isinstance(obj, dict):
        return JSONResponse({"detail": f"the body must be one {what} (a JSON object)"}, status_code=400)
    return obj
