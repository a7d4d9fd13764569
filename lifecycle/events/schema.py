"""JSON Schemas of events as clients send them, for the OpenAPI document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, create_model

from lifecycle.events.fields import Identifier, Text
from lifecycle.events.kinds import CUSTOMER_TYPES, EventType
from lifecycle.events.models import PROPERTIES_MODELS, IpAddress, Traits


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


class ClientOrigin(BaseModel):
    """`origin` as a client gives it (`link` and `page` are the server's own pages)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["api", "import"] = Field(description="api: sent as it happened; import: a list brought in")
    ip: IpAddress | None = Field(default=None, description="The customer's address where they gave consent")
    user_agent: Text | None = Field(default=None, description="The customer's browser where they gave consent")


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
    fields["origin"] = (ClientOrigin | None, Field(
        default=None, description="Where the customer acted: kept with the consent changes the event makes"))
    name = "".join(part.capitalize() for part in kind.value.split("_")) + "Event"
    model: type[BaseModel] = create_model(name, __config__=ConfigDict(extra="forbid"), **fields)
    return model


_CLIENT_MODELS: Final[dict[EventType, type[BaseModel]]] = {kind: _client_model(kind) for kind in EventType}
