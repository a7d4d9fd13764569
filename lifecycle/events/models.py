"""The per-type properties models and `Event`, the envelope, with its Kafka wire format."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Final, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticCustomError

from lifecycle.events.errors import MessageInvalid, _field_errors
from lifecycle.events.fields import (
    IP_PATTERN,
    TEXT_PATTERN,
    Birthday,
    Code,
    Currency,
    Email,
    Identifier,
    Link,
    Locale,
    Money,
    Quantity,
    Step,
    Text,
    TimeZoneName,
    UnsubscribedCategories,
    UtcDatetime,
    WebLink,
    _check_ip,
    _check_text,
)
from lifecycle.events.kinds import CUSTOMER_TYPES, Consent, EventType

if TYPE_CHECKING:
    from lifecycle.events.schema import EventSchemas

SCHEMA_VERSION: Final = 1
_ENVELOPE_START: Final = b'{"schema_version":%d,"event":' % SCHEMA_VERSION
MAX_BATCH_EVENTS: Final = 500
# Clients' clocks drift a little; anything further in the future is a bug on their side.
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)


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


ConsentSource = Literal["api", "link", "page", "import"]
# what a client may say itself; `link` and `page` are the server's own pages, which set them
CLIENT_CONSENT_SOURCES: Final = ("api", "import")
IpAddress = Annotated[str, Field(min_length=2, max_length=45, json_schema_extra={"pattern": IP_PATTERN}),
                      AfterValidator(_check_ip)]


class Origin(_Strict):
    """Where an event came from: kept with every consent change it makes, as its proof."""

    source: ConsentSource = Field(description="api: the API; import: a bulk import through the API; link: a link"
                                              " in an email; page: a page of ours (preferences, confirmation)")
    ip: IpAddress | None = Field(default=None, description="The customer's address, where they acted")
    user_agent: Text | None = Field(default=None, description="The customer's browser, where they acted")


class LineItem(_Strict):
    product_id: Identifier
    name: Text
    quantity: Quantity
    price: Money = Field(description="Unit price")


class Properties(_Strict):
    """Base of every per-type properties model."""


class NoProperties(Properties):
    """For types whose meaning is entirely in the envelope (properties must be empty)."""


class CustomerMergedProperties(Properties):
    previous_id: Identifier = Field(
        description="The id the customer was known by before: an anonymous visitor (`anonymous:<id>` from the"
                    " Segment routes) or an old id. Its profile joins this one; its later events apply here")


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
    checkout_url: WebLink | None = Field(
        default=None, description="Where the customer takes this cart up again (a shop's own checkout page, such as"
                                  " Shopify's abandoned checkout URL): the cart emails' button goes there")


MAX_TRACK_ATTRIBUTES: Final = 50
AttributeName = Annotated[str, Field(min_length=1, max_length=128, json_schema_extra={"pattern": TEXT_PATTERN}),
                          AfterValidator(_check_text)]
# said by hand: pydantic would put the names' pattern in patternProperties, which leaves other names free
_ATTRIBUTES_SCHEMA: Final = {"anyOf": [
    {"type": "object", "maxProperties": MAX_TRACK_ATTRIBUTES,
     "propertyNames": {"minLength": 1, "maxLength": 128, "pattern": TEXT_PATTERN},
     "additionalProperties": {"type": "string", "minLength": 1, "maxLength": 512, "pattern": TEXT_PATTERN}},
    {"type": "null"}]}


class TrackProperties(Properties):
    event: Text = Field(description="What the customer did, by name: `Wishlist Added`, `Newsletter Read`...")
    attributes: Annotated[dict[AttributeName, Text] | None, WithJsonSchema(_ATTRIBUTES_SCHEMA)] = Field(
        default=None, max_length=MAX_TRACK_ATTRIBUTES,
        description="What it carried, as texts by name (a journey's `where` can test them)")


class CartLineChangedProperties(Properties):
    """One line of a cart changed; the rest of the cart is as the earlier events left it."""

    cart_id: Identifier
    change: Literal["added", "removed"]
    product_id: Identifier
    name: Text | None = None
    price: Money | None = Field(default=None, description="Unit price (an added line without one counts 0)")
    quantity: Quantity | None = Field(
        default=None, description="Added: how many more (default 1); removed: how many fewer (default: the line)")
    currency: Currency | None = None


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
    kind: Literal["hard", "soft"] | None = Field(
        default=None, description="hard (the default): the address does not take mail, suppressed at once; soft: "
        "a temporary failure, suppressed after LIFECYCLE_SOFT_BOUNCE_LIMIT in a row without an open or click")


class EmailComplainedProperties(Properties):
    message_id: Identifier | None = None


EventProperties = (
    NoProperties
    | CustomerMergedProperties
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
    | TrackProperties
    | CartLineChangedProperties
)

PROPERTIES_MODELS: Final[Mapping[EventType, type[Properties]]] = {
    EventType.CUSTOMER_SIGNED_UP: NoProperties,
    EventType.CUSTOMER_UPDATED: NoProperties,
    EventType.CUSTOMER_IDENTIFIED: NoProperties,
    EventType.CUSTOMER_MERGED: CustomerMergedProperties,
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
    EventType.TRACK: TrackProperties,
    EventType.CART_LINE_CHANGED: CartLineChangedProperties,
}

P = TypeVar("P", bound=Properties)


def _json_form(value: object) -> object:
    """What orjson does not write itself, as pydantic's JSON mode writes it: a model as its fields set,
    in declaration order, and a Decimal as its text."""
    if type(value) is Decimal:
        return str(value)
    if isinstance(value, BaseModel):
        given = value.__pydantic_fields_set__
        values = value.__dict__
        return {name: values[name] for name in type(value).__pydantic_fields__ if name in given}
    raise TypeError(f"{type(value).__name__} is not part of an event")


class Event(BaseModel):
    """A validated event. See the module docstring for how to read `properties`."""
    # Kept word for word, as it is also the JSON Schema's description: "the module" is lifecycle.events.

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Identifier = Field(description="Idempotency key")
    type: EventType
    customer_id: Identifier
    # Declared before occurred_at so the future check below can see it.
    received_at: UtcDatetime = Field(description="Set by the ingest API from its clock")
    occurred_at: UtcDatetime
    traits: Traits | None = None
    properties: Annotated[EventProperties, SkipValidation] = Field(default_factory=NoProperties, validate_default=True)
    origin: Origin | None = Field(default=None, description="Where it came from; absent: the API")

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
            "traits are only accepted on customer_signed_up, customer_updated and customer_identified events",
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
        # Only the fields set: "trait absent" stays apart from "trait cleared" across the wire. These are
        # the bytes of pydantic's model_dump_json(exclude_unset=True) (a property test holds them to it)
        # at half its cost, which went mostly to calling the datetime serializer and trying the
        # properties union's members one by one.
        return _ENVELOPE_START + orjson.dumps(self, default=_json_form) + b"}"

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
        # Imported here: the client models are built from the models of this module.
        from lifecycle.events.schema import _CLIENT_MODELS, EventSchemas

        keyed, top = models_json_schema(
            [(_CLIENT_MODELS[kind], "validation") for kind in EventType], ref_template=ref_template
        )
        by_type = {kind.value: dict(keyed[(_CLIENT_MODELS[kind], "validation")]) for kind in EventType}
        return EventSchemas(by_type=by_type, definitions=dict(top.get("$defs", {})))
