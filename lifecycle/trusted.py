"""Reading the events topic fast: the API's checks, without pydantic's machinery.

Every message on the events topic was written by `Event.to_message()`, so every value is
already in its exact JSON type and final form. `decode_trusted_event` builds the same `Event`
as `Event.from_message` directly (no `model_validate`, no `model_construct`), in plain Python:

* every value must have the JSON type the API writes (a string for money and datetimes, an
  int for a quantity, an object with no unknown key for a model): no coercion at all;
* datetimes and money must be exactly as the API writes them (`isoformat()` with "+00:00",
  `str(Decimal)`), so nothing is parsed differently from the full validation;
* the checks and normalisers the models declare (`BeforeValidator`, `AfterValidator`, length
  and range constraints, field validators) run as they are, in pydantic's order.

Anything that is not exactly so (a message of a foreign writer, a value in another form, a
check that fails) is read again by `Event.from_message`, which accepts it or says why not,
with its usual messages. Tests hold both readings equal, down to the fields counted as given.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    PlainSerializer,
    Strict,
    WithJsonSchema,
)
from pydantic._internal._fields import PydanticMetadata
from pydantic.fields import FieldInfo

from lifecycle.events import (
    CUSTOMER_TYPES,
    MAX_FUTURE_SKEW,
    PROPERTIES_MODELS,
    SCHEMA_VERSION,
    Event,
    EventType,
    Origin,
    Traits,
)

Convert = Callable[[Any], Any]


class NotTrusted(Exception):
    """Not exactly what the API writes: the full validation decides."""


def decode_trusted_event(data: bytes) -> Event:
    """The event in a message written by `Event.to_message()`; for anything else, what
    `Event.from_message` gives (the event, or MessageInvalid saying why not)."""
    try:
        return _read_event(data)
    except Exception:  # any surprise at all: the full validation has the last word
        return Event.from_message(data)


def decode_sealed_event(data: bytes) -> Event:
    """The event in a message the ingest API sealed (`lifecycle.seal`): it validated the event and
    wrote it with `Event.to_message()`, so each value is read back in its type without the checks.
    Anything unexpected all the same is read by `decode_trusted_event`."""
    try:
        return _read_sealed(data)
    except Exception:
        return decode_trusted_event(data)


def _read_sealed(data: bytes) -> Event:
    body = orjson.loads(data)
    if body["schema_version"] != SCHEMA_VERSION:
        raise NotTrusted
    raw = body["event"]
    kind = EventType(raw["type"])
    traits = raw.get("traits")
    properties = raw.get("properties")
    values = {
        "event_id": raw["event_id"],
        "type": kind,
        "customer_id": raw["customer_id"],
        "received_at": datetime.fromisoformat(raw["received_at"]),
        "occurred_at": datetime.fromisoformat(raw["occurred_at"]),
        "traits": None if traits is None else plain_builder(Traits)(traits),
        "properties": plain_builder(PROPERTIES_MODELS[kind])({} if properties is None else properties),
        "origin": None if (origin := raw.get("origin")) is None else plain_builder(Origin)(origin),
    }
    event: Event = _instance(Event, values, set(raw))
    return event


@cache
def plain_builder(model: type[BaseModel]) -> Convert:
    """From the model's JSON form, as `to_message()` writes it, to the model: each value converted
    to its type, nothing checked."""
    fields = model.model_fields
    spec = tuple((name, _plain_converter(info.annotation)) for name, info in fields.items())
    defaults = {name: info.default for name, info in fields.items() if not info.is_required()}
    if any(info.default_factory is not None for info in fields.values()):
        raise TypeError(f"no plain reading for {model.__name__}: a default factory")

    def build(raw: Any) -> Any:
        values = {}
        for name, convert in spec:
            if name in raw:
                value = raw[name]
                values[name] = value if convert is None or value is None else convert(value)
            else:
                values[name] = defaults[name]
        return _instance(model, values, set(raw))

    return build


def _plain_converter(annotation: Any) -> Convert | None:
    """How a JSON value the API wrote becomes a value of this type; None: it is that value already."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _plain_converter(args[0])
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"no plain reading for {annotation!r}")
        return _plain_converter(options[0])  # None is read as None by the builder
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _plain_converter(args[0])
        return tuple if item is None else (lambda value: tuple(item(v) for v in value))
    if origin is list and len(args) == 1:
        element = _plain_converter(args[0])
        return None if element is None else (lambda value: [element(v) for v in value])
    if origin is dict and len(args) == 2:
        key, entry = _plain_converter(args[0]), _plain_converter(args[1])
        if key is None and entry is None:
            return None
        read_key, read_entry = key or (lambda k: k), entry or (lambda v: v)
        return lambda value: {read_key(k): read_entry(v) for k, v in value.items()}
    if origin is Literal:
        return None
    if annotation is AwareDatetime or annotation is datetime:
        return datetime.fromisoformat
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return lambda value: plain_builder(annotation)(value)
        if issubclass(annotation, Enum):
            return annotation
        if annotation is str or annotation is int:
            return None
        if annotation is Decimal:
            return Decimal
        if annotation is date:
            return date.fromisoformat
    raise TypeError(f"no plain reading for {annotation!r}")


_ENVELOPE = frozenset(("event_id", "type", "customer_id", "received_at", "occurred_at", "traits", "properties",
                       "origin"))
# both readings build the event from exactly these fields: a field added to Event must be read here too
if Event.model_fields.keys() != _ENVELOPE:
    raise TypeError(f"the event's fields are {sorted(Event.model_fields)}; trusted.py reads {sorted(_ENVELOPE)}")


def _read_event(data: bytes) -> Event:
    # orjson reads a float as a float, where the full validation reads a Decimal: the API writes
    # money as strings and no float, and a float anywhere fails the exact types below
    body = orjson.loads(data)
    if type(body) is not dict or type(body.get("schema_version")) is not int \
            or body["schema_version"] != SCHEMA_VERSION:
        raise NotTrusted
    raw = body["event"]
    if type(raw) is not dict or not raw.keys() <= _ENVELOPE:
        raise NotTrusted
    kind = EventType(_string(raw["type"]))
    received_at, occurred_at = _utc(raw["received_at"]), _utc(raw["occurred_at"])
    if occurred_at > received_at + MAX_FUTURE_SKEW:
        raise NotTrusted
    traits = raw.get("traits")
    if traits is not None and kind not in CUSTOMER_TYPES:
        raise NotTrusted  # refused by validation, unless empty: let it decide
    properties = raw.get("properties")
    values = {
        "event_id": _field_converter(Event, "event_id")(raw["event_id"]),
        "type": kind,
        "customer_id": _field_converter(Event, "customer_id")(raw["customer_id"]),
        "received_at": received_at,
        "occurred_at": occurred_at,
        "traits": None if traits is None else builder(Traits)(traits),
        "properties": builder(PROPERTIES_MODELS[kind])({} if properties is None else properties),
        "origin": None if (origin := raw.get("origin")) is None else builder(Origin)(origin),
    }
    event: Event = _instance(Event, values, set(raw))
    return event


@cache
def _field_converter(model: type[BaseModel], name: str) -> Convert:
    info = model.model_fields[name]
    return _checked(converter(info.annotation), info.metadata)


@cache
def builder(model: type[BaseModel]) -> Convert:
    """From the model's JSON form to the model, with its checks (NotTrusted when anything differs)."""
    fields = model.model_fields
    convert = {name: _with_field_validators(model, name, _field_converter(model, name)) for name in fields}
    required = frozenset(name for name, info in fields.items() if info.is_required())
    defaults = {name: info.default for name, info in fields.items() if not info.is_required()}
    if any(info.default_factory is not None for info in fields.values()):
        raise TypeError(f"no trusted reading for {model.__name__}: a default factory")
    names = tuple(fields)

    def build(raw: Any) -> Any:
        if type(raw) is not dict or not required <= raw.keys() or not raw.keys() <= convert.keys():
            raise NotTrusted
        values = {name: convert[name](raw[name]) if name in raw else defaults[name] for name in names}
        return _instance(model, values, set(raw))

    return build


def _instance(model: type[BaseModel], values: dict[str, Any], given: set[str]) -> Any:
    # what model_construct leaves behind for these models (no extra, no private attributes, no
    # post-init), without its per-call search for aliases and defaults
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", given)
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _with_field_validators(model: type[BaseModel], name: str, convert: Convert) -> Convert:
    checks = []
    for decorator in model.__pydantic_decorators__.field_validators.values():
        if name not in decorator.info.fields:
            continue
        method = getattr(model, decorator.cls_var_name)
        if decorator.info.mode != "after" or len(inspect.signature(method).parameters) != 1:
            raise TypeError(f"no trusted reading for {model.__name__}.{name}: validator {decorator.cls_var_name}")
        checks.append(method)
    return _chain(convert, checks) if checks else convert


def converter(annotation: Any) -> Convert:
    """How a JSON value becomes a value of this type; a type not known here fails at first use, and
    a test builds every model the topic carries."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Annotated:
        return _checked(converter(args[0]), args[1:])
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"no trusted reading for {annotation!r}")
        inner = converter(options[0])
        if len(options) == len(args):
            return inner
        return lambda value: None if value is None else inner(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = converter(args[0])
        return lambda value: tuple(item(v) for v in _list(value))
    if origin is list and len(args) == 1:
        element = converter(args[0])
        return lambda value: [element(v) for v in _list(value)]
    if origin is dict and len(args) == 2:
        key, entry = converter(args[0]), converter(args[1])
        return lambda value: {key(k): entry(v) for k, v in _dict(value).items()}
    if origin is Literal:
        allowed = frozenset(args)
        return lambda value: value if type(value) is str and value in allowed else _refuse()
    if annotation is AwareDatetime:
        return _utc
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return lambda value: builder(annotation)(value)
        if issubclass(annotation, Enum):
            return lambda value: annotation(_string(value))
        if annotation is str:
            return _string
        if annotation is int:
            return lambda value: value if type(value) is int else _refuse()
        if annotation is Decimal:
            return _decimal
        if annotation is datetime:
            return _utc
        if annotation is date:
            return lambda value: date.fromisoformat(_string(value))
    raise TypeError(f"no trusted reading for {annotation!r}")


def _checked(convert: Convert, metadata: Iterable[Any]) -> Convert:
    """`convert` inside the model's own checks: before-validators (last declared first), then the
    conversion and the constraints, then after-validators (in order), as pydantic runs them."""
    before: list[Convert] = []
    constraints: list[Convert] = []
    after: list[Convert] = []
    for item in _flat(metadata):
        if isinstance(item, BeforeValidator):
            before.insert(0, item.func)  # type: ignore[arg-type]
        elif isinstance(item, AfterValidator):
            after.append(item.func)  # type: ignore[arg-type]
        elif isinstance(item, annotated_types.MinLen | annotated_types.MaxLen | annotated_types.Ge
                        | annotated_types.Le):
            constraints.append(_constraint(item))
        elif (isinstance(item, PydanticMetadata) and vars(item).keys() <= {"strict", "allow_inf_nan"}) \
                or isinstance(item, Strict | WithJsonSchema | PlainSerializer):
            continue  # documentation, serialisation, or strict / allow_inf_nan (nothing is coerced here)
        else:
            raise TypeError(f"no trusted reading for the annotation {item!r}")
    return _chain(convert, [*constraints, *after], before) if before or constraints or after else convert


def _flat(metadata: Iterable[Any]) -> Iterable[Any]:
    for item in metadata:
        if isinstance(item, FieldInfo):
            yield from item.metadata
        else:
            yield item


def _chain(convert: Convert, then: list[Convert], before: list[Convert] | None = None) -> Convert:
    first = before or []

    def run(value: Any) -> Any:
        for step in first:
            value = step(value)
        value = convert(value)
        for step in then:
            value = step(value)
        return value

    return run


def _constraint(item: Any) -> Convert:
    if isinstance(item, annotated_types.MinLen):
        least = item.min_length
        return lambda value: value if len(value) >= least else _refuse()
    if isinstance(item, annotated_types.MaxLen):
        most = item.max_length
        return lambda value: value if len(value) <= most else _refuse()
    if isinstance(item, annotated_types.Ge):
        low = item.ge
        return lambda value: value if value >= low else _refuse()
    high = item.le
    return lambda value: value if value <= high else _refuse()


def _refuse() -> Any:
    raise NotTrusted


def _string(value: Any) -> str:
    if type(value) is not str:
        raise NotTrusted
    return value


def _dict(value: Any) -> dict[Any, Any]:
    if type(value) is not dict:
        raise NotTrusted
    return value


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise NotTrusted
    return value


def _decimal(value: Any) -> Decimal:
    # written by the API as str(Decimal): read back only in exactly that form
    result = Decimal(_string(value))
    if not result.is_finite() or str(result) != value:
        raise NotTrusted
    return result


_ZERO = timedelta(0)


def _utc(value: Any) -> datetime:
    # written by the API as isoformat() in UTC ("+00:00"): read back only in exactly that form
    moment = datetime.fromisoformat(_string(value))
    if moment.utcoffset() != _ZERO or moment.isoformat() != value:
        raise NotTrusted
    return moment
