"""Triggers: what the stager tells the dispatcher (lifecycle facts worth a journey)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

TRIGGER_SCHEMA_VERSION = 1


class TriggerType(StrEnum):
    SIGNED_UP = "signed_up"
    CONSENT_CHANGED = "consent_changed"
    STAGE_CHANGED = "stage_changed"
    CART_ABANDONED = "cart_abandoned"
    CART_EMPTIED = "cart_emptied"
    ORDER_PLACED = "order_placed"
    ORDER_VOIDED = "order_voided"  # cancelled or refunded
    BIRTHDAY = "birthday"
    ENGAGEMENT = "engagement"
    BROWSE_ABANDONED = "browse_abandoned"
    CART_UPDATED = "cart_updated"  # a cart gets items within a week of a browse_abandoned (its journey's exit)
    TRACK = "track"  # a `track` event: {event: its name, properties: what it carried}


@dataclass(frozen=True)
class Trigger:
    trigger_id: str
    type: TriggerType
    customer_id: str
    occurred_at: datetime  # the cause's occurred_at, or the due time of a time-driven change
    backfill: bool = False  # history: updates nothing in journeys but exits
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": TRIGGER_SCHEMA_VERSION,
            "trigger_id": self.trigger_id,
            "type": self.type.value,
            "customer_id": self.customer_id,
            "occurred_at": self.occurred_at.isoformat(),
            "backfill": self.backfill,
            "data": self.data,
        }

    def to_message(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trigger:
        if data.get("schema_version") != TRIGGER_SCHEMA_VERSION:
            raise ValueError(f"unsupported trigger schema_version {data.get('schema_version')!r}")
        return cls(
            trigger_id=data["trigger_id"],
            type=TriggerType(data["type"]),
            customer_id=data["customer_id"],
            occurred_at=datetime.fromisoformat(data["occurred_at"]),
            backfill=bool(data.get("backfill", False)),
            data=dict(data.get("data", {})),
        )

    @classmethod
    def from_message(cls, raw: bytes) -> Trigger:
        return cls.from_json(json.loads(raw))
