"""settle_heap: what a service holds after start-up is frozen, and the young generation is collected less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from lifecycle.runtime import YOUNG_GENERATION_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_objects_loaded_at_start_are_frozen_and_young_collections_are_rarer(restored_collector: None) -> None:
    gc.unfreeze()
    loaded_at_start = [{"template": n} for n in range(1000)]
    settle_heap()
    assert gc.get_freeze_count() >= len(loaded_at_start)
    young, middle, _ = gc.get_threshold()
    assert young == YOUNG_GENERATION_THRESHOLD > 700
    assert middle >= 20


def test_cycles_made_after_start_are_still_collected(restored_collector: None) -> None:
    settle_heap()

    class Node:
        other: object = None

    first, second = Node(), Node()
    first.other, second.other = second, first
    del first, second
    assert gc.collect() >= 2
