"""Helpers of the integration stories told through the real pipeline (ScenarioRunner)."""

from __future__ import annotations

from typing import Any

from lifecycle.scenario import ScenarioRunner


async def post(runner: ScenarioRunner, event: dict[str, Any]) -> None:
    """POST one event (at the virtual clock's reading unless it says when) and require a 202."""
    event.setdefault("occurred_at", (await runner.watch.clock.now()).isoformat())
    response = await runner.http.post("/v1/events", json=event)
    assert response.status_code == 202, response.text
