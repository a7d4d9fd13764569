"""Schemathesis, with every check, against the running ingest API's /openapi.json: no server error, no
answer the document does not describe, nothing schema-valid refused or schema-invalid taken; and what
it got accepted never poisons the pipeline behind it. The budgets per phase and operation are in
tests/fuzz/schemathesis.toml (the two operations taking a segment definition skip the coverage phase,
whose cases for that recursive schema took most of the run, and get more fuzzing cases instead).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import create_async_engine

from devstack._util import absolute
from devstack.processes import log_file
from lifecycle.clock import SystemClock
from lifecycle.idle import PipelineWatch
from lifecycle.scenario import ScenarioRunner, first_plain_key
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration
HERE = Path(__file__)
ROOT = HERE.resolve().parents[2]
MIN_CASES = 2000


@pytest.fixture
async def on_the_system_clock(runner: ScenarioRunner) -> AsyncIterator[Settings]:
    # generated events carry real dates: the API must judge them against real time
    await runner.configure(HERE, {"clock": "system"})
    yield runner.settings.model_copy(update={"clock": "system"})
    await runner.configure(HERE, {})


async def _counter(port: int, name: str, **labels: str) -> float:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return sum(sample.value for family in text_string_to_metric_families(body) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def _server_errors(settings: Settings) -> str:
    """The errors the API logged (a 500's traceback is there, not in the fuzzer's report)."""
    log = log_file(absolute(settings.run_dir), "ingest")
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line[-3000:] for line in lines if '"level": "error"' in line]
    return "\n\nthe API's errors:\n" + "\n".join(errors[-3:]) if errors else ""


async def test_the_fuzzer_finds_nothing_against_the_openapi_document(on_the_system_clock: Settings) -> None:
    settings = on_the_system_clock
    schemathesis = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": str(ROOT),
           "LIFECYCLE_FUZZ_WRITE_KEY": first_plain_key(settings.api_keys, "LIFECYCLE_API_KEYS"),
           "LIFECYCLE_FUZZ_ADMIN_KEY": first_plain_key(settings.admin_keys, "LIFECYCLE_ADMIN_KEYS")}
    command = [schemathesis, "--config-file", str(ROOT / "tests" / "fuzz" / "schemathesis.toml"), "run",
               f"http://127.0.0.1:{settings.ingest_port}/openapi.json", "--checks", "all",
               "--seed", "20261129", "--no-color", "--output-truncate", "true", "--workers", "1"]
    result = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, env=env, cwd=ROOT,
                                     timeout=900, check=False)
    report = result.stdout[-6000:] + result.stderr[-2000:]
    assert result.returncode == 0, report + _server_errors(settings)
    generated = re.search(r"(\d+) generated", result.stdout)
    assert generated is not None and int(generated.group(1)) >= MIN_CASES, report
    # everything it got accepted is handled downstream: no dead letter, no failing loop
    engine = create_async_engine(settings.database_url)
    watch = PipelineWatch(settings, engine, SystemClock())
    await watch.start()
    try:
        await watch.wait_idle(timeout=180)
    finally:
        await watch.stop()
        await engine.dispose()
    assert await _counter(settings.stager_port, "lifecycle_stager_events_dead_lettered_total") == 0
    assert await _counter(settings.dispatcher_port, "lifecycle_dispatcher_triggers_dead_lettered_total") == 0
    assert await _counter(settings.stager_port, "lifecycle_stager_loop_errors_total", kind="error") == 0
    assert await _counter(settings.dispatcher_port, "lifecycle_dispatcher_loop_errors_total", kind="error") == 0
