"""Customer value tiers and coupon codes (pure)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

# no 0/O, 1/I/L: codes are typed by hand at checkout
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


@dataclass(frozen=True)
class TierThresholds:
    silver_spent: float = 150.0
    silver_orders: int = 3
    gold_spent: float = 500.0
    gold_orders: int = 6


def tier_of(total_spent: float, orders_count: int, thresholds: TierThresholds) -> str:
    """bronze, silver or gold: either the money spent or the number of orders reaches the tier."""
    if total_spent >= thresholds.gold_spent or orders_count >= thresholds.gold_orders:
        return "gold"
    if total_spent >= thresholds.silver_spent or orders_count >= thresholds.silver_orders:
        return "silver"
    return "bronze"


def new_coupon_code(prefix: str) -> str:
    """A unique, unguessable code: 10 random characters (about 50 bits) after a readable prefix."""
    body = "".join(secrets.choice(CODE_ALPHABET) for _ in range(10))
    return f"{prefix}-{body[:5]}-{body[5:]}"
