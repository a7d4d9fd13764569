"""Tiers and coupon codes."""

from __future__ import annotations

from lifecycle.core.offers import CODE_ALPHABET, TierThresholds, new_coupon_code, tier_of


def test_tiers_by_spend_or_orders() -> None:
    thresholds = TierThresholds(silver_spent=150, silver_orders=3, gold_spent=500, gold_orders=6)
    assert tier_of(0, 0, thresholds) == "bronze"
    assert tier_of(149.99, 2, thresholds) == "bronze"
    assert tier_of(150, 1, thresholds) == "silver"
    assert tier_of(20, 3, thresholds) == "silver"
    assert tier_of(500, 1, thresholds) == "gold"
    assert tier_of(10, 6, thresholds) == "gold"


def test_coupon_codes_are_unique_and_unambiguous() -> None:
    codes = {new_coupon_code("AC") for _ in range(5000)}
    assert len(codes) == 5000
    for code in list(codes)[:50]:
        prefix, first, second = code.split("-")
        assert prefix == "AC" and len(first) == 5 and len(second) == 5
        assert set(first + second) <= set(CODE_ALPHABET)
