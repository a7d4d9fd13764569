"""Two-proportion test against values computed by hand (and by R's prop.test without correction)."""

from __future__ import annotations

import math

from lifecycle.core.stats import rate, two_proportion_test


def test_known_values() -> None:
    # 200/1000 against 250/1000: pooled 0.225, z = 2.677, p = 0.0074
    result = two_proportion_test(200, 1000, 250, 1000)
    assert result.lift is not None and math.isclose(result.lift, 0.25)
    assert result.p_value is not None and math.isclose(result.p_value, 0.0074, abs_tol=0.0001)
    assert result.significant


def test_small_samples_are_not_significant_yet() -> None:
    result = two_proportion_test(1, 10, 2, 10)
    assert result.p_value is not None and result.p_value > 0.05 and not result.significant


def test_degenerate_cases() -> None:
    assert two_proportion_test(0, 0, 1, 10).p_value is None
    same = two_proportion_test(0, 10, 0, 10)
    assert same.p_value == 1.0 and same.lift is None and not same.significant
    assert rate(1, 4) == 0.25 and rate(0, 0) is None
