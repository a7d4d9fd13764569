"""Waiting in a test for something that happens in another process or task, with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(condition: Callable[[], bool], what: str, seconds: float = 30, interval: float = 0.05) -> None:
    """Return once `condition()` holds; fail saying `what` did not happen within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        await asyncio.sleep(interval)
