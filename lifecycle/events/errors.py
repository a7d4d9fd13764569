"""Validation errors, and how pydantic's are reported: `{"field", "message"}` per problem."""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel, ValidationError

from lifecycle.events.kinds import EventType


class FieldError(TypedDict):
    field: str
    message: str


class BatchError(TypedDict):
    index: int | None  # None: the problem is with the payload itself, not one event
    field: str
    message: str


class EventInvalid(ValueError):
    """One event failed validation; `errors` lists every problem found."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field'] or 'event'}: {e['message']}" for e in errors))


class BatchInvalid(ValueError):
    """Some events of a payload are invalid; `errors` covers every bad event."""

    def __init__(self, errors: list[BatchError], total: int) -> None:
        self.errors = errors
        self.total = total  # events in the payload (0 when the payload itself is unusable)
        bad = len({e["index"] for e in errors})
        super().__init__(f"{bad} of {total} events are invalid" if total else "the payload is invalid")


class MessageInvalid(ValueError):
    """A message on the events topic cannot be read as an event."""


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _allowed_fields(loc: tuple[int | str, ...], kind: object) -> list[str] | None:
    # Name the accepted fields next to an unknown one: it makes typos obvious.
    # Imported here: models reports its own errors with this module (Event.from_message).
    from lifecycle.events.models import PROPERTIES_MODELS, Event, LineItem, Traits

    model: type[BaseModel] | None = None
    if len(loc) == 1:
        model = Event
    elif len(loc) == 2 and loc[0] == "traits":
        model = Traits
    elif len(loc) == 2 and loc[0] == "properties" and kind in PROPERTIES_MODELS:
        model = PROPERTIES_MODELS[EventType(str(kind))]
    elif len(loc) == 4 and loc[0] == "properties" and loc[1] == "items":
        model = LineItem
    if model is None:
        return None
    return [name for name in model.model_fields if name != "received_at"]


def _field_errors(exc: ValidationError, kind: object) -> list[FieldError]:
    out: list[FieldError] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_fields(loc, kind)
            if allowed is not None:
                message = "unknown field; allowed here: " + (", ".join(allowed) or "none")
            else:
                message = "unknown field"
        elif err["type"] == "missing":
            message = "field required"
        out.append({"field": _loc_to_field(loc), "message": message})
    return out
