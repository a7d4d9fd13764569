"""Which ingest worker lets the others take the next connection first (services/ingest/balancing.py)."""

from __future__ import annotations

from services.ingest.balancing import ABSENT, ahead


def test_a_worker_holding_more_than_another_lets_it_go_first() -> None:
    assert ahead([3, 1], 0) == 2
    assert ahead([3, 1], 1) == 0
    assert ahead([2, 2], 0) == ahead([2, 2], 1) == 0  # even: both take connections
    assert (ahead([2, 2, 1], 0), ahead([2, 2, 1], 1), ahead([2, 2, 1], 2)) == (1, 1, 0)


def test_a_lone_worker_and_absent_workers_make_nobody_wait() -> None:
    assert ahead([5], 0) == 0
    assert ahead([5, ABSENT], 0) == 0  # a worker not running (being replaced) is never the least loaded
    assert ahead([5, ABSENT, 4], 0) == 1
