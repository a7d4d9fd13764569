"""Segment's HTTP Tracking API on the ingest service: `POST /v1/identify`, `/v1/track`, `/v1/page` and
`/v1/batch`, so that a shop points the Segment library it already uses at us (docs/integrations.md).

The write key is taken the way Segment's libraries send it: HTTP Basic with the key as user name and an
empty password, or `writeKey` in the body (a Bearer key works too). The calls are read by
lifecycle/segmentio.py into our events, then published as `/v1/events` publishes them: the answer,
`200 {"success": true}`, comes once Kafka has them. Limits and errors follow Segment: 32 KB per call and
500 KB per batch, `400` with the reason for a request that cannot be read (nothing of it is kept), `429`
with `Retry-After` when this worker has too many requests in flight, `503` with `Retry-After` when Kafka
does not answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from lifecycle.events import Event
from lifecycle.events.fields import IDENTIFIER_PATTERN, TEXT_PATTERN
from lifecycle.segmentio import (
    ANONYMOUS_PREFIX,
    BATCH_FIELDS,
    MAX_BATCH_BYTES,
    MAX_CALL_BYTES,
    CallInvalid,
    check_types,
    read_call,
)
from services.ingest import metrics

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 256  # requests a worker holds at once before it answers 429
RETRY_AFTER_SECONDS = 1
ERROR_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 429: "rate_limited",
               503: "unavailable"}


class SegmentAnswer(BaseModel):
    success: bool


class SegmentError(BaseModel):
    """Segment's own error shape, which its libraries read."""

    success: bool
    code: str
    message: str


class KeyCheck:
    """The write keys (and the admin keys, refused here with a 403)."""

    def __init__(self, is_write: Callable[[str], bool], is_admin: Callable[[str], bool]) -> None:
        self.is_write = is_write
        self.is_admin = is_admin


def presented_key(authorization: str | None, body: Any) -> str:
    """The key of a request: Basic (the key as user name), Bearer, or `writeKey` in the body."""
    header = (authorization or "").strip()
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value.strip(), validate=True).decode("utf-8").split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return ""
        return user.strip()
    if scheme.lower() == "bearer":
        return value.strip()
    if isinstance(body, dict) and isinstance(body.get("writeKey"), str):
        return str(body["writeKey"]).strip()
    return ""


def _call_schema(kind: str | None) -> dict[str, Any]:
    """A Segment call as this API takes it (other fields of Segment's format are accepted and unused)."""
    # null is how the libraries send the id they do not have
    user_id = {"oneOf": [{"type": "string", "maxLength": 128, "pattern": IDENTIFIER_PATTERN}, {"type": "number"},
                         {"type": "null"}]}
    anonymous_id = {"oneOf": [{"type": "string", "maxLength": 128 - len(ANONYMOUS_PREFIX),
                               "pattern": IDENTIFIER_PATTERN}, {"type": "number"}, {"type": "null"}]}
    # null is taken as absent, as some libraries send what they do not have
    text, mapping = {"type": ["string", "null"]}, {"type": ["object", "null"]}
    properties: dict[str, Any] = {
        "userId": user_id, "anonymousId": anonymous_id,
        "messageId": {**text, "description": "the event id: a retry with the same one counts once"},
        "timestamp": {**text, "description": "ISO 8601; the time received when absent or unreadable"},
        "context": mapping, "integrations": mapping, "writeKey": text,
    }
    name = {"type": "string", "minLength": 1, "maxLength": 512, "pattern": TEXT_PATTERN}
    kinds = [kind] if kind else ["identify", "track", "page", "alias"]
    if "identify" in kinds:
        properties["traits"] = {**mapping, "description": "email, firstName, lastName, birthday, locale, timezone,"
                                                         " consent or email_consent"}
    if "track" in kinds:
        properties["event"] = name
    if "track" in kinds or "page" in kinds:
        properties["properties"] = mapping
    if "page" in kinds:
        properties["name"] = text
    if "alias" in kinds:
        properties["previousId"] = {**anonymous_id, "description": "alias: the id the userId was known by (an"
                                                                  " anonymousId, an old userId)"}
    given = {"type": ["string", "number"]}
    schema: dict[str, Any] = {"type": "object", "properties": properties,
                              "anyOf": [{"required": ["userId"], "properties": {"userId": given}},
                                        {"required": ["anonymousId"], "properties": {"anonymousId": given}}]}
    alias_needs = {"required": ["userId", "previousId"], "properties": {"userId": given, "previousId": given}}
    if kind == "track":
        schema["required"] = ["event"]
    if kind == "alias":
        del schema["anyOf"]
        schema["allOf"] = [alias_needs]
    if kind is None:
        properties["type"] = {"type": "string", "enum": ["identify", "track", "page", "alias"]}
        schema["required"] = ["type"]
        schema["allOf"] = [{"if": {"properties": {"type": {"const": "track"}}}, "then": {"required": ["event"]}},
                           {"if": {"properties": {"type": {"const": "alias"}}}, "then": alias_needs}]
    return schema


def _body_doc(kind: str | None) -> dict[str, Any]:
    schema = _call_schema(kind) if kind else {
        "type": "object", "required": ["batch"],
        "properties": {"batch": {"type": "array", "minItems": 1, "items": _call_schema(None)},
                       "context": {"type": ["object", "null"]}, "writeKey": {"type": ["string", "null"]},
                       "sentAt": {"type": ["string", "null"]}, "integrations": {"type": ["object", "null"]}}}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def segment_router(publish: Callable[..., Awaitable[None]], now: Callable[[], Awaitable[datetime]],
                   keys: KeyCheck, unavailable: type[Exception]) -> APIRouter:
    router = APIRouter(tags=["segment"])
    in_flight = 0

    def refuse(status: int, detail: str, retry_after: int | None = None) -> JSONResponse:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"success": False, "code": ERROR_CODES[status], "message": detail}, status_code=status,
                            headers=headers)

    async def handle(request: Request, kind: str | None) -> JSONResponse:
        nonlocal in_flight
        if in_flight >= MAX_IN_FLIGHT:
            metrics.SEGMENT_CALLS.labels(outcome="overloaded").inc()
            return refuse(429, "too many requests in flight; retry after Retry-After", RETRY_AFTER_SECONDS)
        in_flight += 1
        try:
            return await _handle(request, kind)
        finally:
            in_flight -= 1

    async def _handle(request: Request, kind: str | None) -> JSONResponse:
        limit = MAX_CALL_BYTES if kind else MAX_BATCH_BYTES
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                metrics.SEGMENT_CALLS.labels(outcome="invalid").inc()
                return refuse(400, f"the request is larger than {limit // 1024} KB (Segment's limit)")
        if request.headers.get("content-encoding", "").strip().lower() == "gzip":
            # Segment's libraries may compress (gzip=True): the limits hold for what it unpacks to
            try:
                unpacked = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bytes(body), limit + 1)
            except zlib.error:
                metrics.SEGMENT_CALLS.labels(outcome="invalid").inc()
                return refuse(400, "the body is not gzip")
            if len(unpacked) > limit:
                metrics.SEGMENT_CALLS.labels(outcome="invalid").inc()
                return refuse(400, f"the request is larger than {limit // 1024} KB (Segment's limit)")
            body = bytearray(unpacked)
        try:
            payload = json.loads(bytes(body).decode("utf-8-sig"), parse_float=Decimal)
        except (ValueError, RecursionError):
            metrics.SEGMENT_CALLS.labels(outcome="invalid").inc()
            return refuse(400, "the body is not JSON")
        key = presented_key(request.headers.get("authorization"), payload)
        if not key or not (keys.is_write(key) or keys.is_admin(key)):
            return refuse(401, "a write key is required: HTTP Basic with the key as user name, or writeKey in"
                               " the body")
        if not keys.is_write(key):
            return refuse(403, "this is an admin key; events are sent with a write key (LIFECYCLE_API_KEYS)")
        received_at = await now()
        try:
            events, dropped = _read(payload, kind, received_at)
        except CallInvalid as exc:
            metrics.SEGMENT_CALLS.labels(outcome="invalid").inc()
            return refuse(400, str(exc))
        try:
            await publish(events)
        except unavailable:
            metrics.SEGMENT_CALLS.labels(outcome="unavailable").inc()
            return refuse(503, "events could not be stored right now; retry later (a retry with the same"
                               " messageId counts once)", 5)
        metrics.SEGMENT_CALLS.labels(outcome="accepted").inc(len(events))
        for what in dropped:
            metrics.SEGMENT_LEFT_OUT.labels(what=what.split(" ")[0]).inc()
        if dropped:
            log.info("segment calls accepted with parts left out: %s", "; ".join(dropped[:10]))
        return JSONResponse({"success": True})

    for kind in ("identify", "track", "page", "alias"):
        _add(router, kind, handle)
    _add(router, None, handle)
    return router


def _read(payload: Any, kind: str | None, received_at: datetime) -> tuple[list[Event], list[str]]:
    """Every call of the request as events, and what was left out of them; CallInvalid for the first
    call that cannot be read (nothing of the request is published then)."""
    if kind is not None:
        read = read_call(payload, kind, received_at)
        return read.events, list(read.dropped)
    if not isinstance(payload, dict) or not isinstance(payload.get("batch"), list) or not payload["batch"]:
        raise CallInvalid('a batch is {"batch": [call, ...]} with at least one call')
    check_types(payload, BATCH_FIELDS)
    shared = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    events: list[Event] = []
    dropped: list[str] = []
    for index, call in enumerate(payload["batch"]):
        if isinstance(call, dict) and len(json.dumps(call, default=str)) > MAX_CALL_BYTES:
            raise CallInvalid(f"batch[{index}]: a call is at most {MAX_CALL_BYTES // 1024} KB (Segment's limit)")
        own = call.get("context") if isinstance(call, dict) else None
        if isinstance(call, dict) and shared and (own is None or isinstance(own, dict)):
            # a call's own context that is not an object is refused by its own check below
            call = {**call, "context": {**shared, **(own or {})}}
        try:
            read = read_call(call, None, received_at)
        except CallInvalid as exc:
            raise CallInvalid(f"batch[{index}]: {exc}") from None
        events.extend(read.events)
        dropped.extend(f"{what} (batch[{index}])" for what in read.dropped)
    return events, dropped


def _add(router: APIRouter, kind: str | None,
         handle: Callable[[Request, str | None], Awaitable[JSONResponse]]) -> None:
    path = f"/v1/{kind or 'batch'}"
    responses: dict[int | str, dict[str, Any]] = {
        200: {"model": SegmentAnswer, "description": "Stored in Kafka"},
        400: {"model": SegmentError, "description": "Not readable: not JSON, larger than Segment's limits (32 KB a"
                                                    " call, 500 KB a batch), no userId nor anonymousId, a track"
                                                    " without its event name; nothing of it was kept"},
        401: {"model": SegmentError, "description": "No write key, or an unknown one"},
        403: {"model": SegmentError, "description": "An admin key: events are sent with a write key"},
        429: {"model": SegmentError, "description": "Too many requests in flight; retry after Retry-After"},
        503: {"model": SegmentError, "description": "Kafka is unavailable; retry after Retry-After"},
    }

    async def endpoint(request: Request) -> JSONResponse:
        return await handle(request, kind)

    # the keys as Segment's libraries send them (Basic), or as /v1/events takes them (Bearer)
    extra = {**_body_doc(kind), "security": [{"WriteKey": []}, {"SegmentWriteKey": []}]}
    router.add_api_route(path, endpoint, methods=["POST"], responses=responses, openapi_extra=extra,
                         summary=f"Segment's {kind or 'batch'} call (HTTP Tracking API)",
                         name=f"segment_{kind or 'batch'}")


__all__: Sequence[str] = ("KeyCheck", "presented_key", "segment_router")
