"""Durations written like `1d2h5m` or `90s` (units: d h m s)."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)([dhms])")
# days, hours, minutes, seconds, each at most once and in that order, up to 5 digits each (a few
# centuries at most, so that due times always stay dates): how journeys and segments write durations
DURATION_PATTERN = "^(?:[0-9]{1,5}d)?(?:[0-9]{1,5}h)?(?:[0-9]{1,5}m)?(?:[0-9]{1,5}s)?$"
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    value = str(text).strip()
    if not value or _PART.sub("", value) != "":
        raise ValueError(f"invalid duration {text!r}: use numbers with units d, h, m, s, like 1d2h5m")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(value))
    return timedelta(seconds=seconds)
