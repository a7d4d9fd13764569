"""Session-wide real infrastructure (Kafka, PostgreSQL, SMTP sink) for integration tests.

Ports differ from the dev stack's defaults so a running `lifecycle up` is left alone. A
missing component makes the `infra` fixture fail (an error, never a skip).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack import StackError, down, private_settings, start_infrastructure, up
from lifecycle.idle import PipelineWatch
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings


def integration_settings(run_dir: Path) -> Settings:
    # LIFECYCLE_TEST_PORT_OFFSET moves them again: two checkouts can run their tests side by side
    return private_settings(run_dir, int(os.environ.get("LIFECYCLE_TEST_PORT_OFFSET", "100")))


@pytest.fixture(scope="session")
def infra() -> Iterator[Settings]:
    # Not pytest's tmp_path: its directories are private (0700), and as root the
    # PostgreSQL server runs as user `postgres`, which must be able to enter the run dir.
    run_dir = Path(tempfile.mkdtemp(prefix="lifecycle-it-"))
    os.chmod(run_dir, 0o755)
    settings = integration_settings(run_dir)
    try:
        try:
            start_infrastructure(settings)
        except StackError as exc:
            pytest.fail(f"integration infrastructure did not start:\n{exc}", pytrace=False)
        yield settings
    finally:
        try:
            down(settings)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pipeline(infra: Settings) -> Settings:
    """The whole pipeline on the virtual clock: migrations and the three services on top of `infra`."""
    settings = infra.model_copy(update={"clock": "virtual"})
    try:
        up(settings)
    except StackError as exc:
        pytest.fail(f"the pipeline did not start:\n{exc}", pytrace=False)
    return settings


@pytest.fixture(scope="session")
async def runner(pipeline: Settings) -> AsyncIterator[ScenarioRunner]:
    """The scenario runner on the pipeline: also the tests' way to reset state and wait until idle."""
    engine = create_async_engine(pipeline.database_url)
    watch = PipelineWatch(pipeline, engine)
    await watch.start()
    scenario_runner = ScenarioRunner(pipeline, engine, watch)
    yield scenario_runner
    await scenario_runner.close()
    await watch.stop()
    await engine.dispose()
