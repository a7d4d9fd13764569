"""Parsing client input: JSON from the ingest API into events, every problem reported."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import datetime

from pydantic import ValidationError

from lifecycle.events.errors import BatchError, BatchInvalid, EventInvalid, FieldError, _field_errors
from lifecycle.events.models import CLIENT_CONSENT_SOURCES, MAX_BATCH_EVENTS, Event, Origin


def derived_event_id(obj: Mapping[str, object]) -> str:
    """The id of an event sent without one: a digest of exactly what was sent, so that a retried
    request is recognised (and identical events sent without id or occurred_at count once)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "d-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def parse_event(obj: object, received_at: datetime, new_id: Callable[[], str], origin: Origin | None = None) -> Event:
    """Validate one client event; EventInvalid lists every problem with it. `origin`: where the server
    saw it happen (its own link or page), in place of anything the client said."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")  # a bug in the caller, not bad input
    if not isinstance(obj, dict):
        raise EventInvalid([{"field": "", "message": "an event must be a JSON object"}])
    data: dict[str, object] = dict(obj)
    early: list[FieldError] = []
    if "received_at" in data:
        del data["received_at"]
        early.append({"field": "received_at", "message": "received_at is set by the server; do not send it"})
    if origin is not None:
        data["origin"] = origin
    else:
        claimed = data.get("origin")
        if isinstance(claimed, dict) and claimed.get("source") not in (None, *CLIENT_CONSENT_SOURCES):
            del data["origin"]
            early.append({"field": "origin.source", "message": f"a client says {' or '.join(CLIENT_CONSENT_SOURCES)};"
                                                                 " link and page are set by the server's own pages"})
    if data.get("event_id") is None:
        data["event_id"] = new_id()
    if data.get("occurred_at") is None:
        data["occurred_at"] = received_at
    data["received_at"] = received_at
    try:
        event = Event.model_validate(data)
    except ValidationError as exc:
        raise EventInvalid(early + _field_errors(exc, data.get("type"))) from None
    if early:
        raise EventInvalid(early)
    return event


def parse_batch(payload: object, received_at: datetime, new_id: Callable[[], str]) -> list[Event]:
    """Validate one event or `{"events": [...]}`; BatchInvalid lists every bad event."""
    if isinstance(payload, dict) and "events" in payload:
        extra = sorted(str(key) for key in payload if key != "events")
        if extra:
            raise BatchInvalid(
                [
                    {"index": None, "field": key, "message": 'unknown field; a batch is {"events": [...]}'}
                    for key in extra
                ],
                0,
            )
        items = payload["events"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH_EVENTS:
            raise BatchInvalid(
                [
                    {
                        "index": None,
                        "field": "events",
                        "message": f"must be a list of 1 to {MAX_BATCH_EVENTS} events",
                    }
                ],
                0,
            )
    elif isinstance(payload, dict):
        items = [payload]
    else:
        raise BatchInvalid(
            [
                {
                    "index": None,
                    "field": "",
                    "message": 'the body must be one event object or {"events": [...]}',
                }
            ],
            0,
        )
    events: list[Event] = []
    errors: list[BatchError] = []
    for index, item in enumerate(items):
        try:
            events.append(parse_event(item, received_at, new_id))
        except EventInvalid as exc:
            errors.extend({"index": index, "field": err["field"], "message": err["message"]} for err in exc.errors)
    if errors:
        raise BatchInvalid(errors, len(items))
    return events
