"""The stager's trusted reading of the events topic builds exactly the event full validation builds,
and hands anything it does not recognise to full validation."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

import pytest
from hypothesis import given
from pydantic import BaseModel, Field

from lifecycle.events import PROPERTIES_MODELS, Event, MessageInvalid, Traits, parse_event
from lifecycle.trusted import builder, converter, decode_sealed_event, decode_trusted_event, plain_builder
from tests.unit.test_events import NOW, VALID, _moments, body, ids, raw_events


def _same(fast: BaseModel, full: BaseModel) -> None:
    """Equal values, equal types, and the same fields counted as given, all the way down."""
    assert type(fast) is type(full)
    assert fast == full
    assert fast.model_fields_set == full.model_fields_set
    for name in type(full).model_fields:
        mine, theirs = getattr(fast, name), getattr(full, name)
        assert type(mine) is type(theirs), name
        if isinstance(theirs, BaseModel):
            _same(mine, theirs)
        elif isinstance(theirs, tuple | list):
            for a, b in zip(mine, theirs, strict=True):
                _same(a, b) if isinstance(b, BaseModel) else None
        elif isinstance(theirs, datetime):
            assert mine.tzinfo == theirs.tzinfo


def _both(message: bytes) -> tuple[Event, Event]:
    return decode_trusted_event(message), Event.from_message(message)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_type_reads_as_full_validation_reads_it(kind: str) -> None:
    event = parse_event(body(kind, occurred_at="2026-03-02T10:00:00+01:00"), NOW, ids())
    fast, full = _both(event.to_message())
    _same(fast, full)
    assert fast.to_message() == event.to_message()


def test_absent_and_cleared_traits_stay_apart() -> None:
    event = parse_event({"type": "customer_updated", "customer_id": "c1",
                         "traits": {"first_name": None, "consent": "opted_out", "unsubscribed_categories": ["offers"]}},
                        NOW, ids())
    fast, full = _both(event.to_message())
    _same(fast, full)
    assert fast.traits is not None and fast.traits.provided() == {
        "first_name": None, "consent": "opted_out", "unsubscribed_categories": ["offers"]}


@given(raw_events(), _moments)
def test_any_valid_event_reads_alike(raw: dict[str, Any], received: datetime) -> None:
    received = max(received, datetime.fromisoformat(raw["occurred_at"]))
    message = parse_event(raw, received, lambda: str(uuid.uuid4())).to_message()
    fast, full = _both(message)
    _same(fast, full)
    assert fast.to_message() == message


@given(raw_events(), _moments)
def test_a_sealed_event_reads_as_full_validation_reads_it(raw: dict[str, Any], received: datetime) -> None:
    received = max(received, datetime.fromisoformat(raw["occurred_at"]))
    message = parse_event(raw, received, lambda: str(uuid.uuid4())).to_message()
    sealed = decode_sealed_event(message)
    _same(sealed, Event.from_message(message))
    assert sealed.to_message() == message


@pytest.mark.parametrize("kind", sorted(VALID))
def test_every_type_reads_alike_sealed(kind: str) -> None:
    event = parse_event(body(kind, occurred_at="2026-03-02T10:00:00+01:00"), NOW, ids())
    _same(decode_sealed_event(event.to_message()), Event.from_message(event.to_message()))


@pytest.mark.parametrize("data", [
    b'{"schema_version":1,"event":{"type":"no_such_type"}}',
    b'{"schema_version":2,"event":{}}',
    b"not json",
])
def test_a_sealed_message_that_is_not_what_the_api_writes_is_validated_in_full(data: bytes) -> None:
    with pytest.raises(MessageInvalid):
        decode_sealed_event(data)


@pytest.mark.parametrize("model", [Traits, *dict.fromkeys(PROPERTIES_MODELS.values())])
def test_every_model_the_topic_carries_has_a_plain_reading(model: type[BaseModel]) -> None:
    assert callable(plain_builder(model))


def _message(**event: Any) -> bytes:
    return json.dumps({"schema_version": 1, "event": event}).encode()


_BASE = {"event_id": "e1", "type": "product_viewed", "customer_id": "c1", "received_at": "2026-03-02T09:00:00+00:00",
         "occurred_at": "2026-03-02T09:00:00+00:00", "properties": {"product_id": "p1", "price": "9.50"}}


@pytest.mark.parametrize("change", [
    {"occurred_at": "2026-03-02T10:00:00+01:00"},  # not in the API's form: validated, and normalised
    {"properties": {"product_id": "p1", "price": 9.5}},  # money as a number
    {"properties": {"product_id": "p1", "currency": "eur"}},  # upper-cased by validation
])
def test_a_value_not_in_the_api_form_is_validated_in_full(change: dict[str, Any]) -> None:
    fast, full = _both(_message(**{**_BASE, **change}))
    _same(fast, full)


@pytest.mark.parametrize(("data", "match"), [
    (b"not json", "not valid UTF-8 JSON"),
    (b'{"schema_version": 2, "event": {}}', "unsupported event schema_version 2"),
    (b'{"schema_version": true, "event": {}}', "unsupported"),
    (_message(**{**_BASE, "type": "nope"}), "unknown event type"),
    (_message(**{**_BASE, "colour": "red"}), "colour"),
    (_message(**{**_BASE, "properties": {"product_id": 7}}), "product_id"),
    (_message(**{**_BASE, "properties": {"name": "x"}}), "product_id"),
    (_message(**{**_BASE, "properties": {"product_id": "p1", "size": "L"}}), "size"),
    (_message(**{**_BASE, "occurred_at": "2026-03-02T09:00:00"}), "occurred_at"),
    (_message(**{**_BASE, "customer_id": None}), "customer_id"),
    (_message(**{**_BASE, "customer_id": " c1"}), "customer_id"),  # the API's own checks still run
    (_message(**{**_BASE, "properties": {"product_id": "p1", "price": "-1"}}), "price"),
    (_message(**{**_BASE, "occurred_at": "2026-03-02T10:00:00+00:00"}), "after the server received"),
    (_message(**{**_BASE, "type": "customer_updated", "properties": None, "traits": {"email": "nope"}}), "email"),
    (_message(**{**_BASE, "type": "customer_updated", "properties": None, "traits": {"consent": "maybe"}}),
     "consent"),
])
def test_what_full_validation_refuses_is_refused_alike(data: bytes, match: str) -> None:
    with pytest.raises(MessageInvalid, match=match):
        decode_trusted_event(data)


@pytest.mark.parametrize("model", [Traits, *dict.fromkeys(PROPERTIES_MODELS.values())])
def test_every_model_the_topic_carries_has_a_trusted_reading(model: type[BaseModel]) -> None:
    assert callable(builder(model))


def test_a_constraint_without_a_trusted_reading_is_found_at_once_not_skipped() -> None:
    with pytest.raises(TypeError, match="pattern"):
        converter(Annotated[str, Field(pattern="^x$")])
