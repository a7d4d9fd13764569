"""Every scenario file, shared and our own, played through the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifecycle.scenario import ScenarioRunner

ROOT = Path(__file__).resolve().parents[2]
SHARED = sorted((ROOT.parent / "shared" / "scenarios").glob("*.yaml"))
OWN = sorted((ROOT / "tests" / "scenarios").glob("*.yaml"))


def test_the_shared_scenarios_are_there() -> None:
    # a missing ../shared must fail the run, not shrink it
    assert len(SHARED) >= 6, f"expected the shared scenarios in {ROOT.parent / 'shared' / 'scenarios'}"


@pytest.mark.parametrize("path", SHARED + OWN, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_scenario(runner: ScenarioRunner, path: Path) -> None:
    outcome = await runner.run(path)
    assert outcome.passed, f"{path.name} failed:\n" + "\n".join(outcome.failures)
