"""The deployment tools the tests in this folder run (scripts/install-ops-tools.sh installs them).

A missing tool fails the test with the command that installs it: these tests never skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from lifecycle.settings import Settings

INSTALL_HINT = "run `bash scripts/install-ops-tools.sh` (scripts/setup.sh does)"


def find_tool(name: str, *candidates: Path) -> Path:
    """`name` from the given places first, then from PATH; fails the test when it is nowhere."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return Path(found)


@pytest.fixture(scope="session")
def promtool() -> Path:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def kustomize() -> Path:
    return find_tool("kustomize", Settings().cache_dir / "bin" / "kustomize")


@pytest.fixture(scope="session")
def hadolint() -> Path:
    return find_tool("hadolint", Path(sys.executable).parent / "hadolint")


# name as exposed on /metrics (counters with `_total`) -> (type, label names, help)
ExportedMetrics = dict[str, tuple[str, tuple[str, ...], str]]


@pytest.fixture(scope="session")
def exported_metrics() -> ExportedMetrics:
    """Every lifecycle_* metric the services register, read from prometheus_client's REGISTRY.

    The services' entry modules are imported too, so a metric declared anywhere they load counts.
    """
    from prometheus_client import REGISTRY
    from prometheus_client.metrics import MetricWrapperBase

    import services.bounces.main
    import services.bounces.metrics
    import services.dispatcher.main
    import services.dispatcher.metrics
    import services.ingest.app
    import services.ingest.metrics
    import services.stager.main
    import services.stager.metrics  # noqa: F401

    found: ExportedMetrics = {}
    # the registry keeps its collectors in a private mapping; label names live on the collectors
    for collector in list(REGISTRY._collector_to_names):
        if not isinstance(collector, MetricWrapperBase) or not collector._name.startswith("lifecycle_"):
            continue
        kind = str(collector._type)
        name = collector._name + {"counter": "_total", "info": "_info"}.get(kind, "")
        found[name] = (kind, tuple(collector._labelnames), collector._documentation)
    assert len(found) >= 20, f"only {len(found)} lifecycle metrics registered: {sorted(found)}"
    return found


def series_names(name: str, kind: str) -> set[str]:
    """The sample names a metric shows up as in PromQL."""
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    if kind == "summary":
        return {name, f"{name}_sum", f"{name}_count"}
    return {name}


@pytest.fixture(scope="session")
def exported_series(exported_metrics: ExportedMetrics) -> dict[str, str]:
    """Every series name the services expose -> the metric it belongs to."""
    return {series: name for name, (kind, _, _) in exported_metrics.items() for series in series_names(name, kind)}
