"""`GET /v1/admin/segments/preview`: how many customers a segment matches now, and a sample (admin key).

The segment is a name (a built-in segment or one of LIFECYCLE_SEGMENTS_DIR, read when asked), a filter
given inline as JSON, checked exactly as a segment file's `filter` (docs/segments.md), or both (the
customers both match); neither previews every customer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.core.segments import EVERYONE, SEGMENT_NAME, All, Filter, SegmentError, parse_filter
from lifecycle.db.segments import Preview
from lifecycle.events.kinds import EmailCategory
from lifecycle.segment_files import SegmentFileError, named_segment
from services.ingest.answers import ADMIN_KEY_RESPONSES, ErrorBody

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5

# (filter, category, sample size) -> (the clock's now, the preview)
SegmentPreviewer = Callable[[Filter, str | None, int], Awaitable[tuple[datetime, Preview]]]


class SegmentProblemView(BaseModel):
    field: str
    message: str


class InvalidSegment(BaseModel):
    detail: str
    errors: list[SegmentProblemView]


class QueryProblems(BaseModel):
    """FastAPI's own answer to a query parameter out of its bounds (`sample=500`, an unknown `category`)."""

    detail: list[dict[str, Any]]


class SampleCustomer(BaseModel):
    customer_id: str
    email: str | None
    stage: str | None
    consent: str | None
    locale: str | None
    timezone: str | None


class SegmentPreviewView(BaseModel):
    segment: str | None
    at: str
    category: str | None
    matched: int
    audience: int
    sample: list[SampleCustomer]


def segments_router(previewer: SegmentPreviewer | None, dependencies: Sequence[Depends],
                    segments_dir: Path | None) -> APIRouter:
    router = APIRouter(tags=["admin"], dependencies=list(dependencies))

    @router.get(
        "/v1/admin/segments/preview",
        responses={
            200: {"model": SegmentPreviewView, "description": "The customers the segment matches now: `matched`;"
                  " those of them a campaign may reach (an address, opted in, not suppressed, not unsubscribed"
                  " from `category`): `audience`, and the first of these by customer id"},
            400: {"model": ErrorBody, "description": "A filter that is not a JSON object"},
            **ADMIN_KEY_RESPONSES,
            404: {"model": ErrorBody, "description": "No segment of that name"},
            422: {"model": InvalidSegment | QueryProblems,
                  "description": "Not a valid filter (or segment file): every problem is listed with its field;"
                                 " or a query parameter out of its bounds"},
            503: {"model": ErrorBody, "description": "PostgreSQL is unavailable; retry after Retry-After"},
        },
        summary="Count and sample the customers a segment matches now",
    )
    async def preview_segment(
        name: Annotated[str | None, Query(pattern=SEGMENT_NAME.pattern,
                                          description="a segment's name (with filter: both must match)")] = None,
        filter_text: Annotated[str | None, Query(
            alias="filter", description="a filter as JSON, e.g. {\"stage\": [\"active\"]} (with name: both must"
                                        " match)")] = None,
        category: Annotated[EmailCategory | None, Query(description="a campaign's category: its unsubscribers are"
                                                        " not in the audience")] = None,
        sample: Annotated[int, Query(ge=0, le=100, description="customers in the sample")] = 10,
    ) -> JSONResponse:
        parts: list[Filter] = []
        try:
            if name is not None:
                segment = named_segment(name, segments_dir)
                if segment is None:
                    return JSONResponse({"detail": f"no segment named {name!r}"}, status_code=404)
                parts.append(segment.filter)
            if filter_text is not None:
                try:
                    value: Any = json.loads(filter_text)
                except (ValueError, RecursionError):
                    return JSONResponse({"detail": "filter is not valid JSON"}, status_code=400)
                if not isinstance(value, dict):
                    return JSONResponse({"detail": "filter must be a JSON object"}, status_code=400)
                parts.append(parse_filter(value))
        except SegmentError as exc:
            errors = [{"field": p.field, "message": p.message} for p in exc.problems]
            return JSONResponse({"detail": f"{len(errors)} problem(s) in the filter", "errors": errors},
                                status_code=422)
        except SegmentFileError as exc:
            errors = [{"field": "", "message": p} for p in exc.problems]
            return JSONResponse({"detail": "the segment's file has problems", "errors": errors}, status_code=422)
        chosen: Filter = EVERYONE if not parts else parts[0] if len(parts) == 1 else All(tuple(parts))
        if previewer is None:
            return JSONResponse({"detail": "segments are not configured on this server"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        try:
            now, found = await previewer(chosen, category, sample)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning("segment preview: PostgreSQL unavailable: %s", exc)
            return JSONResponse({"detail": "PostgreSQL is unavailable; retry later"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        return JSONResponse({"segment": name, "at": now.isoformat(), "category": category, **found.to_json()})

    return router
