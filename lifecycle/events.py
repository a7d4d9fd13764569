"""Event schemas: what the ingest API accepts and what travels on the events topic.

Pure code, no I/O. Design:

* `Event` is the one public, frozen envelope model. `event.type` (an `EventType`) says
  which per-type model `event.properties` holds; the pairing is enforced when the event
  is validated, so `event.properties` is always exactly `PROPERTIES_MODELS[event.type]`.
* `properties` is typed as the union `EventProperties`. To read a type's fields with mypy
  happy, either narrow with `isinstance` or ask for the model you expect::

      cart = event.properties_as(CartUpdatedProperties)   # TypeError if it is another type
      for item in cart.items: ...

* `traits` (a `Traits` or None) is only accepted on `customer_signed_up` and
  `customer_updated`. A trait that was not sent is "unchanged"; a trait sent as null is
  "cleared": `event.traits.provided()` returns exactly the traits the client sent.
* Datetimes are always UTC-aware. Money is `Decimal` (JSON numbers are parsed exactly by
  the API, and the wire format carries them as strings so nothing is rounded).
* `parse_event` / `parse_batch` turn client JSON into events, filling `event_id` (uuid4
  from `new_id`), `occurred_at` (receipt time) and `received_at` (server clock), and
  report every problem as `{"index", "field", "message"}`.
* `Event.to_message()` / `Event.from_message()` are the Kafka wire format:
  `{"schema_version": 1, "event": {...}}` in UTF-8 JSON.
* `Event.json_schema_by_type()` gives the JSON Schema of every event type as a client
  sends it, for the OpenAPI document.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Final, Literal, TypedDict, TypeVar, cast
from zoneinfo import available_timezones

import email_validator
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    create_model,
    field_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

SCHEMA_VERSION: Final = 1
_ENVELOPE_START: Final = b'{"schema_version":%d,"event":' % SCHEMA_VERSION
MAX_BATCH_EVENTS: Final = 500
# Clients' clocks drift a little; anything further in the future is a bug on their side.
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)


class EventType(StrEnum):
    CUSTOMER_SIGNED_UP = "customer_signed_up"
    CUSTOMER_UPDATED = "customer_updated"
    CONSENT_CONFIRMED = "consent_confirmed"
    UNSUBSCRIBED = "unsubscribed"
    PAGE_VIEWED = "page_viewed"
    PRODUCT_VIEWED = "product_viewed"
    CART_UPDATED = "cart_updated"
    CHECKOUT_STARTED = "checkout_started"
    ORDER_PLACED = "order_placed"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_REFUNDED = "order_refunded"
    EMAIL_OPENED = "email_opened"
    EMAIL_CLICKED = "email_clicked"
    EMAIL_BOUNCED = "email_bounced"
    EMAIL_COMPLAINED = "email_complained"


# Only these types describe the customer themselves, so only they carry traits.
CUSTOMER_TYPES: Final = frozenset({EventType.CUSTOMER_SIGNED_UP, EventType.CUSTOMER_UPDATED})


class Consent(StrEnum):
    OPTED_IN = "opted_in"
    PENDING = "pending"
    OPTED_OUT = "opted_out"


# The kinds of marketing email a customer can leave one by one on the preference page;
# every journey belongs to one of them (its `category`).
EmailCategory = Literal["cart_reminders", "offers", "news"]
EMAIL_CATEGORIES: Final[tuple[EmailCategory, ...]] = ("cart_reminders", "offers", "news")


# ---------------------------------------------------------------------------
# Field types


# What str.strip() strips (str.isspace()), spelled out so that the OpenAPI document's patterns mean
# exactly what the checks below accept, in any regular expression dialect.
_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_CONTROLS = "\\x00-\\x1f\\x7f"
# no control character, and no whitespace at either end
IDENTIFIER_PATTERN: Final = f"^[^{_SPACE}{_CONTROLS}](?:[^{_CONTROLS}]*[^{_SPACE}{_CONTROLS}])?$"
# Text: no control character but tab, line feed and carriage return (PostgreSQL keeps no NUL), and at
# least one character that is not whitespace
_TEXT_CONTROLS = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f"
TEXT_PATTERN: Final = f"^[^{_TEXT_CONTROLS}]*[^{_SPACE}{_TEXT_CONTROLS}][^{_TEXT_CONTROLS}]*$"
_TEXT = re.compile(TEXT_PATTERN.removeprefix("^").removesuffix("$"), re.DOTALL)
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN.removeprefix("^").removesuffix("$"))


def _check_identifier(value: str) -> str:
    # " 42" and "42" would silently become two customers; refuse rather than strip.
    if not _IDENTIFIER.fullmatch(value):
        raise PydanticCustomError("identifier", "must not start or end with whitespace or contain control characters")
    return value


def _check_text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    if not _TEXT.fullmatch(value):
        raise PydanticCustomError("control", "must not contain control characters (tab and line breaks aside)")
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _check_currency(value: str) -> str:
    if not re.fullmatch(r"[A-Z]{3}", value):
        raise PydanticCustomError("currency", "must be a 3-letter ISO 4217 currency code such as EUR")
    return value




# The everyday address, all ASCII: a dot-atom local part and letter-digit-hyphen labels under a
# letter TLD. Checked by this expression alone (a full check costs ~0.5 ms); anything else, or a
# punycode label, goes through email-validator. Every address it takes, email-validator takes too,
# with the same result (tests/unit/test_events.py holds it to that).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(rf"({_ATOM}(?:\.{_ATOM})*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})")


def _plain_email(value: str) -> str | None:
    """The normalized address when it is an everyday one; None when it needs the full check."""
    match = _PLAIN_EMAIL.fullmatch(value)
    if match is None or len(value) > 254 or len(match.group(1)) > 64:
        return None
    domain = match.group(2).lower()
    labels = domain.split(".")
    if any(label[2:4] == "--" for label in labels):
        return None  # xn-- (IDNA) and other reserved label forms
    special = email_validator.SPECIAL_USE_DOMAIN_NAMES
    if any(domain == name or domain.endswith("." + name) for name in special):
        return None
    return f"{match.group(1)}@{domain}"


def _check_email(value: str) -> str:
    # syntax only: whether the mailbox exists is the SMTP server's answer, not ours
    plain = _plain_email(value)
    if plain is not None:
        return plain
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError("email", "must be an email address like name@example.com: {reason}",
                                  {"reason": str(exc)}) from None
    return checked.normalized


_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def _check_locale(value: str) -> str:
    if not _LOCALE.fullmatch(value):
        raise PydanticCustomError("locale", "must be a language tag such as en, en-GB or pt_BR")
    return value


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    # The IANA names known to zoneinfo (tzdata is a dependency, so this is never empty).
    return frozenset(available_timezones())


def _check_timezone(value: str) -> str:
    if value not in _timezones():
        raise PydanticCustomError(
            "timezone", "{value} is not an IANA time zone name such as Europe/Paris", {"value": repr(value)}
        )
    return value


def _check_birthday(value: str) -> str:
    # Full date, or month and day only (RFC 6350 style) for people who keep their year.
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            date.fromisoformat(value)
            return value
        if re.fullmatch(r"--\d{2}-\d{2}", value):
            date.fromisoformat("2000" + value[1:])  # a leap year, so --02-29 is allowed
            return value
    except ValueError:
        pass
    raise PydanticCustomError("birthday", "must be a real date as YYYY-MM-DD or --MM-DD")


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")


def _check_datetime_input(value: object) -> object:
    # pydantic would also take Unix timestamps and bare dates; the contract is RFC 3339.
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match and match.group(1) is None:
            raise PydanticCustomError(
                "datetime_naive",
                "must include a UTC offset (Z or +hh:mm); date-times without one are ambiguous",
            )
        if match:
            return value
    raise PydanticCustomError(
        "datetime_format", "must be an RFC 3339 date-time with offset, such as 2024-05-01T12:00:00+02:00"
    )


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _sorted_unique(values: list[EmailCategory]) -> list[EmailCategory]:
    # One spelling per choice, so equal preferences compare and hash equal everywhere.
    return sorted(set(values))


STEP_PATTERN: Final = "^[1-9][0-9]{0,5}$"


def _whole_number(value: object) -> object:
    # 3.0 is the integer 3 in JSON (and in JSON Schema); true is not 1 (bool is neither type below)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _coerce_step(value: object) -> object:
    # The send step number, as a JSON number or as text; kept as text.
    value = _whole_number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_step(value: str) -> str:
    if not re.fullmatch(STEP_PATTERN.strip("^$"), value):
        raise PydanticCustomError("step", "must be the number of a send step of the journey: 1, 2, 3 ...")
    return value


Identifier = Annotated[
    str, Field(min_length=1, max_length=128, pattern=None, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
    AfterValidator(_check_identifier),
]
Text = Annotated[str, Field(min_length=1, max_length=512, json_schema_extra={"pattern": TEXT_PATTERN}),
                 AfterValidator(_check_text)]
Link = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
                 AfterValidator(_check_identifier)]
MONEY_LIMIT: Final = Decimal("100000000000000")  # 10^14: fourteen digits before the point


def _round_money(value: Decimal) -> Decimal:
    # 4 places: a client's float arithmetic (0.1 + 0.2 = 0.30000000000000004) is not an error
    if not value.is_finite() or not 0 <= value < MONEY_LIMIT:
        raise PydanticCustomError("money", "must be a positive amount below 10^14 (0 allowed)")
    exponent = value.as_tuple().exponent
    return value.quantize(Decimal("0.0001")) if isinstance(exponent, int) and exponent < -4 else value


Money = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    AfterValidator(_round_money),
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0, "exclusiveMaximum": 100_000_000_000_000},
        {"type": "string", "pattern": "^[0-9]{1,14}(?:\\.[0-9]+)?$"},
    ], "description": "An amount, rounded to 4 decimal places"}),
]
Currency = Annotated[
    str,
    BeforeValidator(_upper),
    Field(description="ISO 4217 code, e.g. EUR", json_schema_extra={"pattern": "^[A-Za-z]{3}$"}),
    AfterValidator(_check_currency),
]
Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000), BeforeValidator(_whole_number)]
Email = Annotated[str, Field(min_length=3, max_length=254, json_schema_extra={"format": "email"}),
                  AfterValidator(_check_email)]
Locale = Annotated[str, Field(min_length=2, max_length=35, json_schema_extra={"pattern": f"^{_LOCALE.pattern}$"}),
                   AfterValidator(_check_locale)]
TimeZoneName = Annotated[
    str,
    Field(description="IANA name, e.g. Europe/Paris",
          json_schema_extra=lambda schema: schema.update(enum=sorted(_timezones()))),
    AfterValidator(_check_timezone),
]
# a month and a day that exist in some year (29 February included)
_MONTH_DAY = "(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-9])|(?:0[13-9]|1[0-2])-30|(?:0[13578]|1[02])-31)"
Birthday = Annotated[
    str,
    Field(description="YYYY-MM-DD or --MM-DD", json_schema_extra=lambda schema: schema.update(anyOf=[
        {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        {"type": "string", "pattern": f"^--{_MONTH_DAY}$"},
    ])),
    AfterValidator(_check_birthday),
]
Code = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
                 AfterValidator(_check_identifier)]
UnsubscribedCategories = Annotated[
    list[EmailCategory],
    Field(description="Kinds of email the customer left; sorted, without duplicates; empty: receives everything"),
    AfterValidator(_sorted_unique),
]
Step = Annotated[
    str, BeforeValidator(_coerce_step),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999_999},
                              {"type": "string", "pattern": STEP_PATTERN}],
                    "description": "The send step number (from 1), as a number or as text"}),
    AfterValidator(_check_step),
]
UtcDatetime = Annotated[
    AwareDatetime,
    BeforeValidator(_check_datetime_input),
    AfterValidator(_to_utc),
    # Explicit "+00:00" rather than "Z" so any ISO 8601 reader sees the offset.
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str, when_used="json"),
]


# ---------------------------------------------------------------------------
# Per-type models


class _Strict(BaseModel):
    # Unknown fields are refused so that a typo ("quantiy") is an error, not lost data.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Traits(_Strict):
    """Customer attributes. Absent = unchanged; null = cleared."""

    email: Email | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    locale: Locale | None = None
    timezone: TimeZoneName | None = None
    birthday: Birthday | None = None
    consent: Consent | None = None
    unsubscribed_categories: UnsubscribedCategories | None = None

    def provided(self) -> dict[str, object]:
        """The traits the sender actually gave (including explicit nulls)."""
        given = self.model_fields_set
        return {name: getattr(self, name) for name in type(self).model_fields if name in given}


class LineItem(_Strict):
    product_id: Identifier
    name: Text
    quantity: Quantity
    price: Money = Field(description="Unit price")


class Properties(_Strict):
    """Base of every per-type properties model."""


class NoProperties(Properties):
    """For types whose meaning is entirely in the envelope (properties must be empty)."""


class ConsentConfirmedProperties(Properties):
    email: Email | None = Field(
        default=None, description="The address confirmed: the one the confirmation link was sent to"
    )


class UnsubscribedProperties(Properties):
    message_id: Identifier | None = Field(default=None, description="The email the link came from")


class PageViewedProperties(Properties):
    url: Link


class ProductViewedProperties(Properties):
    product_id: Identifier
    name: Text | None = None
    price: Money | None = None
    currency: Currency | None = None


class CartUpdatedProperties(Properties):
    cart_id: Identifier
    currency: Currency
    value: Money
    items: tuple[LineItem, ...] = Field(
        max_length=MAX_BATCH_EVENTS, description="The whole cart now; an empty list empties it"
    )


class CheckoutStartedProperties(Properties):
    cart_id: Identifier | None = None


class OrderPlacedProperties(Properties):
    order_id: Identifier
    currency: Currency
    value: Money
    # Not min_length: that would also fire when the only item is invalid, which misleads.
    items: tuple[LineItem, ...] = Field(max_length=MAX_BATCH_EVENTS, json_schema_extra={"minItems": 1})
    coupon_code: Code | None = None

    @field_validator("items")
    @classmethod
    def _not_empty(cls, items: tuple[LineItem, ...]) -> tuple[LineItem, ...]:
        if not items:
            raise PydanticCustomError("no_items", "an order needs at least one item")
        return items


class OrderCancelledProperties(Properties):
    order_id: Identifier


class OrderRefundedProperties(Properties):
    order_id: Identifier


class EmailOpenedProperties(Properties):
    journey: Identifier | None = None
    step: Step | None = None
    message_id: Identifier | None = None


class EmailClickedProperties(Properties):
    journey: Identifier
    step: Step
    link: Link
    message_id: Identifier | None = None


class EmailBouncedProperties(Properties):
    message_id: Identifier | None = None
    reason: Annotated[str, Field(min_length=1, max_length=1024, json_schema_extra={"pattern": TEXT_PATTERN}),
                      AfterValidator(_check_text)] | None = None


class EmailComplainedProperties(Properties):
    message_id: Identifier | None = None


EventProperties = (
    NoProperties
    | ConsentConfirmedProperties
    | UnsubscribedProperties
    | PageViewedProperties
    | ProductViewedProperties
    | CartUpdatedProperties
    | CheckoutStartedProperties
    | OrderPlacedProperties
    | OrderCancelledProperties
    | OrderRefundedProperties
    | EmailOpenedProperties
    | EmailClickedProperties
    | EmailBouncedProperties
    | EmailComplainedProperties
)

PROPERTIES_MODELS: Final[Mapping[EventType, type[Properties]]] = {
    EventType.CUSTOMER_SIGNED_UP: NoProperties,
    EventType.CUSTOMER_UPDATED: NoProperties,
    EventType.CONSENT_CONFIRMED: ConsentConfirmedProperties,
    EventType.UNSUBSCRIBED: UnsubscribedProperties,
    EventType.PAGE_VIEWED: PageViewedProperties,
    EventType.PRODUCT_VIEWED: ProductViewedProperties,
    EventType.CART_UPDATED: CartUpdatedProperties,
    EventType.CHECKOUT_STARTED: CheckoutStartedProperties,
    EventType.ORDER_PLACED: OrderPlacedProperties,
    EventType.ORDER_CANCELLED: OrderCancelledProperties,
    EventType.ORDER_REFUNDED: OrderRefundedProperties,
    EventType.EMAIL_OPENED: EmailOpenedProperties,
    EventType.EMAIL_CLICKED: EmailClickedProperties,
    EventType.EMAIL_BOUNCED: EmailBouncedProperties,
    EventType.EMAIL_COMPLAINED: EmailComplainedProperties,
}

P = TypeVar("P", bound=Properties)


# ---------------------------------------------------------------------------
# Errors


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


# ---------------------------------------------------------------------------
# The event


@dataclass(frozen=True)
class EventSchemas:
    """JSON Schemas of the client-side form of every event type."""

    by_type: dict[str, dict[str, Any]]  # event type -> {"$ref": ...}
    definitions: dict[str, dict[str, Any]]  # every model referenced, by name

    def one_of(self) -> dict[str, Any]:
        """A schema for "any one event", discriminated by `type`."""
        return {
            "oneOf": list(self.by_type.values()),
            "discriminator": {
                "propertyName": "type",
                "mapping": {kind: ref["$ref"] for kind, ref in self.by_type.items()},
            },
        }


class Event(BaseModel):
    """A validated event. See the module docstring for how to read `properties`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier = Field(description="Idempotency key")
    type: EventType
    customer_id: Identifier
    # Declared before occurred_at so the future check below can see it.
    received_at: UtcDatetime = Field(description="Set by the ingest API from its clock")
    occurred_at: UtcDatetime
    traits: Traits | None = None
    properties: EventProperties = Field(default_factory=NoProperties, validate_default=True)

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        if isinstance(value, str) and value in EventType._value2member_map_:
            return value
        raise PydanticCustomError(
            "unknown_event_type",
            "unknown event type {value}; expected one of: {expected}",
            {"value": repr(value), "expected": ", ".join(EventType)},
        )

    @field_validator("occurred_at")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        received = info.data.get("received_at")
        if isinstance(received, datetime) and value > received + MAX_FUTURE_SKEW:
            raise PydanticCustomError(
                "occurred_at_in_future",
                "occurred_at {occurred} is more than 5 minutes after the server received the event "
                "({received}); check the sender's clock",
                {"occurred": value.isoformat(), "received": received.isoformat()},
            )
        return value

    @field_validator("traits", mode="before")
    @classmethod
    def _traits_for_type(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("type")
        if kind is None or kind in CUSTOMER_TYPES:
            return value  # an unknown type is reported on `type` already
        if value is None or value == {}:
            return None
        raise PydanticCustomError(
            "traits_not_allowed",
            "traits are only accepted on customer_signed_up and customer_updated events",
        )

    @field_validator("properties", mode="before")
    @classmethod
    def _properties_for_type(cls, value: object, info: ValidationInfo) -> object:
        kind = info.data.get("type")
        if kind is None:
            return NoProperties()  # unknown type: its own error says it all
        if value is None or type(value) is NoProperties:
            value = {}  # absent (the default is a NoProperties) or null: "no properties"
        # Nested errors keep their location, e.g. properties.items.0.price.
        return PROPERTIES_MODELS[kind].model_validate(value)

    # `builtins.type`: inside this class `type` is the event type field.
    def properties_as(self, model: builtins.type[P]) -> P:
        """`properties` as the model you expect for this type (TypeError otherwise)."""
        if not isinstance(self.properties, model):
            raise TypeError(f"{self.type} event carries {type(self.properties).__name__}, not {model.__name__}")
        return self.properties

    def opt_outs(self) -> list[str]:
        """What this event opts the customer out of: "*" for every marketing email (an unsubscribe, a
        `consent: opted_out` trait), or the categories it lists as left. The ingest API fences these
        before it answers, so no email goes out while the stager has not applied them yet."""
        if self.type is EventType.UNSUBSCRIBED:
            return ["*"]
        if self.traits is None:
            return []
        left: list[str] = []
        if self.traits.consent is Consent.OPTED_OUT:
            left.append("*")
        left.extend(self.traits.unsubscribed_categories or [])
        return left

    def to_message(self) -> bytes:
        """The Kafka value: UTF-8 JSON `{"schema_version": 1, "event": {...}}`."""
        # exclude_unset keeps "trait absent" apart from "trait cleared" across the wire. pydantic writes
        # the event's JSON itself (compact, UTF-8): the bytes json.dumps gave, at half the cost.
        return _ENVELOPE_START + self.model_dump_json(exclude_unset=True).encode("utf-8") + b"}"

    @classmethod
    def from_message(cls, data: bytes) -> Event:
        """Read a Kafka value written by `to_message`; MessageInvalid if it is not one."""
        try:
            body = json.loads(data, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            raise MessageInvalid(f"event message is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(body, dict) or "schema_version" not in body or "event" not in body:
            raise MessageInvalid('event message must be {"schema_version": ..., "event": {...}}')
        version = body["schema_version"]
        if type(version) is not int or version != SCHEMA_VERSION:
            raise MessageInvalid(
                f"unsupported event schema_version {version!r}; this build reads version {SCHEMA_VERSION}"
            )
        raw = body["event"]
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            kind = raw.get("type") if isinstance(raw, dict) else None
            problems = "; ".join(f"{e['field']}: {e['message']}" for e in _field_errors(exc, kind))
            raise MessageInvalid(f"event message does not hold a valid event: {problems}") from None

    @classmethod
    def json_schema_by_type(cls, ref_template: str = "#/$defs/{model}") -> EventSchemas:
        """JSON Schemas of each type's client form, refs built with `ref_template`."""
        keyed, top = models_json_schema(
            [(_CLIENT_MODELS[kind], "validation") for kind in EventType], ref_template=ref_template
        )
        by_type = {kind.value: dict(keyed[(_CLIENT_MODELS[kind], "validation")]) for kind in EventType}
        return EventSchemas(by_type=by_type, definitions=dict(top.get("$defs", {})))


def _client_model(kind: EventType) -> type[BaseModel]:
    # Documentation only: the envelope as a client writes it for one type.
    props = PROPERTIES_MODELS[kind]
    props_required = any(field.is_required() for field in props.model_fields.values())
    fields: dict[str, Any] = {
        "event_id": (Identifier | None, Field(
            default=None, description="Idempotency key, per customer; derived from the event's content if omitted")),
        "type": (cast(Any, Literal)[kind.value], ...),
        "customer_id": (Identifier, ...),
        "occurred_at": (
            AwareDatetime | None,
            Field(default=None, description="RFC 3339 with offset; receipt time if omitted"),
        ),
        "properties": (props, ...) if props_required else (props | None, None),
    }
    if kind in CUSTOMER_TYPES:
        fields["traits"] = (Traits | None, None)
    name = "".join(part.capitalize() for part in kind.value.split("_")) + "Event"
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
    return model


_CLIENT_MODELS: Final[dict[EventType, type[BaseModel]]] = {kind: _client_model(kind) for kind in EventType}


# ---------------------------------------------------------------------------
# Parsing client input


def derived_event_id(obj: Mapping[str, object]) -> str:
    """The id of an event sent without one: a digest of exactly what was sent, so that a retried
    request is recognised (and identical events sent without id or occurred_at count once)."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "d-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


def parse_event(obj: object, received_at: datetime, new_id: Callable[[], str]) -> Event:
    """Validate one client event; EventInvalid lists every problem with it."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")  # a bug in the caller, not bad input
    if not isinstance(obj, dict):
        raise EventInvalid([{"field": "", "message": "an event must be a JSON object"}])
    data: dict[str, object] = dict(obj)
    early: list[FieldError] = []
    if "received_at" in data:
        del data["received_at"]
        early.append({"field": "received_at", "message": "received_at is set by the server; do not send it"})
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
