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

Modules:

    kinds    EventType, CUSTOMER_TYPES, Consent, EmailCategory: the vocabulary
    fields   the field types (Identifier, Money, Email, UtcDatetime ...) and their checks
    models   Traits, LineItem, the per-type properties models, PROPERTIES_MODELS, `Event`
             and its wire format (SCHEMA_VERSION)
    errors   EventInvalid, BatchInvalid, MessageInvalid; pydantic errors as field errors
    parsing  parse_event, parse_batch, derived_event_id: client input
    schema   EventSchemas and the client-side models behind `Event.json_schema_by_type()`
"""

from __future__ import annotations

from lifecycle.events.errors import BatchError, BatchInvalid, EventInvalid, FieldError, MessageInvalid
from lifecycle.events.fields import _PLAIN_EMAIL as _PLAIN_EMAIL  # private; tests/unit/test_events.py reads it here
from lifecycle.events.fields import (
    IDENTIFIER_PATTERN,
    MONEY_LIMIT,
    STEP_PATTERN,
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
)
from lifecycle.events.fields import _plain_email as _plain_email  # private; tests/unit/test_events.py calls it here
from lifecycle.events.kinds import CUSTOMER_TYPES, EMAIL_CATEGORIES, Consent, EmailCategory, EventType
from lifecycle.events.models import (
    CLIENT_CONSENT_SOURCES,
    MAX_BATCH_EVENTS,
    MAX_FUTURE_SKEW,
    PROPERTIES_MODELS,
    SCHEMA_VERSION,
    CartUpdatedProperties,
    CheckoutStartedProperties,
    ConsentConfirmedProperties,
    CustomerMergedProperties,
    EmailBouncedProperties,
    EmailClickedProperties,
    EmailComplainedProperties,
    EmailOpenedProperties,
    Event,
    EventProperties,
    LineItem,
    NoProperties,
    OrderCancelledProperties,
    OrderPlacedProperties,
    OrderRefundedProperties,
    Origin,
    PageViewedProperties,
    ProductViewedProperties,
    Properties,
    Traits,
    UnsubscribedProperties,
)
from lifecycle.events.parsing import derived_event_id, parse_batch, parse_event
from lifecycle.events.schema import EventSchemas

__all__ = [
    "CLIENT_CONSENT_SOURCES",
    "CUSTOMER_TYPES",
    "EMAIL_CATEGORIES",
    "IDENTIFIER_PATTERN",
    "MAX_BATCH_EVENTS",
    "MAX_FUTURE_SKEW",
    "MONEY_LIMIT",
    "PROPERTIES_MODELS",
    "SCHEMA_VERSION",
    "STEP_PATTERN",
    "TEXT_PATTERN",
    "BatchError",
    "BatchInvalid",
    "Birthday",
    "CartUpdatedProperties",
    "CheckoutStartedProperties",
    "Code",
    "Consent",
    "ConsentConfirmedProperties",
    "Currency",
    "CustomerMergedProperties",
    "Email",
    "EmailBouncedProperties",
    "EmailCategory",
    "EmailClickedProperties",
    "EmailComplainedProperties",
    "EmailOpenedProperties",
    "Event",
    "EventInvalid",
    "EventProperties",
    "EventSchemas",
    "EventType",
    "FieldError",
    "Identifier",
    "LineItem",
    "Link",
    "Locale",
    "MessageInvalid",
    "Money",
    "NoProperties",
    "OrderCancelledProperties",
    "OrderPlacedProperties",
    "OrderRefundedProperties",
    "Origin",
    "PageViewedProperties",
    "ProductViewedProperties",
    "Properties",
    "Quantity",
    "Step",
    "Text",
    "TimeZoneName",
    "Traits",
    "UnsubscribedCategories",
    "UnsubscribedProperties",
    "UtcDatetime",
    "derived_event_id",
    "parse_batch",
    "parse_event",
]
