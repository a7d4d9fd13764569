"""Reading other systems' payloads (Segment's calls, Shopify's webhooks) into our events: the small
readings both need, kept once (pure: no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from lifecycle.events.models import MAX_FUTURE_SKEW


def id_text(value: Any) -> str | None:
    """An id as others send it: a string, or a number (its text); None when absent or blank."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | Decimal | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    return text or None


def number(value: Any) -> Decimal | None:
    """A finite number, given as a number or as its text (Shopify's amounts are texts)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        found = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return found if found.is_finite() else None


def moment(value: Any, received_at: datetime) -> datetime | None:
    """An ISO 8601 time with its offset, not more than our skew ahead of `received_at`; None otherwise."""
    if not isinstance(value, str):
        return None
    try:
        found = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if found.tzinfo is None or found > received_at + MAX_FUTURE_SKEW:
        return None
    return found


def mapping(value: Any) -> Mapping[str, Any]:
    """`value` when it is an object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def without_traits(event: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The event without these traits (those the models refused)."""
    traits = {k: v for k, v in (event.get("traits") or {}).items() if k not in names}
    return {**event, "traits": traits}
