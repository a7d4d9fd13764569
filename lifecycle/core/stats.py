"""The statistics of A/B tests: lift and a two-proportion z-test (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Comparison:
    lift: float | None  # relative change of the rate against the control; None without a control rate
    p_value: float | None  # two-sided; None when a side has no sample
    significant: bool


def rate(successes: int, trials: int) -> float | None:
    return successes / trials if trials else None


def two_proportion_test(control_successes: int, control_trials: int, successes: int, trials: int,
                        alpha: float = 0.05) -> Comparison:
    """Is the variant's rate different from the control's? Pooled two-proportion z-test, two-sided."""
    if control_trials == 0 or trials == 0:
        return Comparison(None, None, False)
    p_control = control_successes / control_trials
    p_variant = successes / trials
    lift = (p_variant - p_control) / p_control if p_control else None
    pooled = (control_successes + successes) / (control_trials + trials)
    variance = pooled * (1 - pooled) * (1 / control_trials + 1 / trials)
    if variance == 0:
        return Comparison(lift, 1.0, False)
    z = (p_variant - p_control) / math.sqrt(variance)
    p_value = math.erfc(abs(z) / math.sqrt(2))  # = 2 * (1 - Phi(|z|))
    return Comparison(lift, p_value, p_value < alpha)
