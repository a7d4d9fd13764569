"""Token-bucket rate limits per key (a client address, a link token), in bounded memory.

Each key has a bucket of `per_minute` tokens that refills at `per_minute` a minute: a
burst of up to `per_minute` requests, then one every `60 / per_minute` seconds. At
most `max_keys` buckets are kept; the least recently used is forgotten first, and a
forgotten key starts again with a full bucket. A bucket untouched for a minute is full
anyway, so forgetting only matters when more than `max_keys` keys are active within
a minute: then it errs on the side of letting a request through.

Time is a monotonic clock in seconds, injected (`time.monotonic` by default) so tests
can move it; nothing here reads the wall clock.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float  # seconds until this key may make a request again; 0 when allowed


ALLOWED: Final = Verdict(True, 0.0)


class RateLimiter:
    """`per_minute` requests a minute per key (0: no limit), remembering at most `max_keys` keys."""

    def __init__(self, per_minute: int, *, max_keys: int, now: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 0 or max_keys < 1:
            raise ValueError("per_minute must be 0 or more and max_keys 1 or more")
        self.per_minute = per_minute
        self._capacity = float(per_minute)
        self._refill_per_second = per_minute / 60.0
        self._max_keys = max_keys
        self._now = now
        # key -> (tokens left, when they were counted); the most recently used last
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def check(self, key: Hashable) -> Verdict:
        """Takes one request from `key`'s bucket if it has one; otherwise says how long to wait."""
        if self.per_minute == 0:
            return ALLOWED
        now = self._now()
        tokens, counted_at = self._buckets.pop(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + max(0.0, now - counted_at) * self._refill_per_second)
        if tokens >= 1.0:
            verdict = ALLOWED
            tokens -= 1.0
        else:
            verdict = Verdict(False, (1.0 - tokens) / self._refill_per_second)
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return verdict

    def __len__(self) -> int:
        """How many keys are remembered (at most `max_keys`)."""
        return len(self._buckets)


def token_key(token: str) -> bytes:
    """A short fixed-size key for a link token (tokens run to a few hundred characters)."""
    return hashlib.blake2b(token.encode("utf-8"), digest_size=16).digest()


def client_address(request: Request) -> str:
    """The client's address as uvicorn saw it: the proxy's X-Forwarded-For only from a trusted proxy
    (LIFECYCLE_FORWARDED_ALLOW_IPS), else the peer."""
    return request.client.host if request.client is not None else "unknown"
