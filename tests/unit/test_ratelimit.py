"""The token-bucket limiter: bursts, refill over (injected) time, no limit at 0, bounded memory."""

from __future__ import annotations

import pytest

from services.ingest.ratelimit import RateLimiter, token_key


class Clock:
    def __init__(self) -> None:
        self.seconds = 1000.0

    def __call__(self) -> float:
        return self.seconds


def test_a_burst_of_the_limit_then_one_per_share_of_a_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(3, max_keys=10, now=clock)
    assert [limiter.check("a").allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.check("a")
    assert not refused.allowed and refused.retry_after == pytest.approx(20.0)
    clock.seconds += 19.9
    assert not limiter.check("a").allowed
    clock.seconds += 0.2
    assert limiter.check("a").allowed  # 20 s: one more request
    assert not limiter.check("a").allowed


def test_one_a_minute_means_at_most_one_in_any_minute() -> None:
    clock = Clock()
    limiter = RateLimiter(1, max_keys=10, now=clock)
    assert limiter.check("t").allowed
    clock.seconds += 59.0
    verdict = limiter.check("t")
    assert not verdict.allowed and verdict.retry_after == pytest.approx(1.0)
    clock.seconds += 1.0
    assert limiter.check("t").allowed


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(1, max_keys=10, now=Clock())
    assert limiter.check("a").allowed and limiter.check("b").allowed
    assert not limiter.check("a").allowed and not limiter.check("b").allowed


def test_a_bucket_never_holds_more_than_the_limit() -> None:
    clock = Clock()
    limiter = RateLimiter(2, max_keys=10, now=clock)
    limiter.check("a")
    clock.seconds += 3600.0  # an hour idle refills to 2, not 120
    assert [limiter.check("a").allowed for _ in range(3)] == [True, True, False]


def test_zero_is_no_limit_and_remembers_nothing() -> None:
    limiter = RateLimiter(0, max_keys=1, now=Clock())
    assert all(limiter.check(str(n)).allowed for n in range(100))
    assert len(limiter) == 0


def test_memory_is_bounded_and_the_least_recently_used_key_goes_first() -> None:
    limiter = RateLimiter(1, max_keys=3, now=Clock())
    for key in ("a", "b", "c"):
        limiter.check(key)
    assert not limiter.check("a").allowed  # "a" is now the most recently used
    limiter.check("d")  # forgets "b", the least recently used
    assert len(limiter) == 3
    assert limiter.check("b").allowed  # forgotten: a full bucket again
    assert not limiter.check("a").allowed  # remembered: still empty
    for n in range(1000):
        limiter.check(f"flood-{n}")
    assert len(limiter) == 3


def test_a_clock_going_backwards_refills_nothing() -> None:
    clock = Clock()
    limiter = RateLimiter(1, max_keys=3, now=clock)
    limiter.check("a")
    clock.seconds -= 500.0
    assert not limiter.check("a").allowed


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1, max_keys=3)
    with pytest.raises(ValueError):
        RateLimiter(1, max_keys=0)


def test_token_keys_are_short_and_distinct() -> None:
    long_token = "x" * 400
    assert len(token_key(long_token)) == 16
    assert token_key(long_token) != token_key(long_token + "y")
