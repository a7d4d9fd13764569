"""How a service process runs: on uvloop, with what it loaded at start frozen and young collections rarer."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from lifecycle.runtime import YOUNG_GENERATION_THRESHOLD, run_service, settle_heap


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


def test_services_run_on_uvloop() -> None:
    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_service(loop_module()).startswith("uvloop")
