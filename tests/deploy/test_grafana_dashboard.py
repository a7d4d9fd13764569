"""The Grafana dashboard: well formed, every query valid PromQL, every exported metric on a panel.

That every query returns data against the running services is checked in
tests/integration/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "monitoring" / "grafana" / "lifecycle.json"
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"
# Grafana's variables, as a test (and Prometheus) must see them
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
METRIC = re.compile(r"\b(lifecycle_[a-z0-9_]+)")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _queries() -> list[tuple[str, str]]:
    """(panel title and refId, PromQL with Grafana's variables replaced) of every panel target."""
    queries = []
    for panel in _panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


def test_the_dashboard_is_well_formed() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "lifecycle-overview" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in _panels():
        assert panel["title"] and panel["description"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and "legendFormat" in target, panel["title"]
    for title, expr in _queries():
        assert "$" not in expr, f"{title}: a Grafana variable the tests do not know: {expr}"


def test_every_query_is_valid_promql(promtool: Path, tmp_path: Path) -> None:
    """promtool has no offline query parser of its own: each query becomes a recording rule it checks."""
    rules = [{"record": f"dashboard:query_{n}", "expr": expr} for n, (_, expr) in enumerate(_queries())]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_exported_metric_is_on_a_panel(exported_metrics: dict[str, tuple[str, tuple[str, ...], str]],
                                             exported_series: dict[str, str]) -> None:
    shown = {exported_series[m] for _, expr in _queries() for m in METRIC.findall(expr) if m in exported_series}
    missing = sorted(set(exported_metrics) - shown)
    assert missing == [], f"metrics on no panel of {DASHBOARD.relative_to(ROOT)}: {missing}"


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_name_only_metrics_that_exist(source: str, exported_series: dict[str, str]) -> None:
    if source == "dashboard":
        exprs = [expr for _, expr in _queries()]
    else:
        groups = yaml.safe_load(ALERTS.read_text())["groups"]
        exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    unknown = sorted({m for expr in exprs for m in METRIC.findall(expr)} - set(exported_series))
    assert unknown == [], f"{source} names metrics no service exports: {unknown}"


def test_labelled_counters_and_gauges_still_return_a_series_before_their_first_event(
        exported_metrics: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    """A labelled metric has no series until a label value is first used (no refusal yet, no failed send):
    a query over one ends in `or on() vector(0)` unless the metric always has a series on a healthy system."""
    # set for every instance as soon as the service runs (partitions assigned, the scrape itself)
    always_there = {"lifecycle_stager_consumer_lag_messages", "lifecycle_dispatcher_consumer_lag_messages",
                    "lifecycle_ingest_requests_total",
                    "lifecycle_ingest_request_duration_seconds"}
    for title, expr in _queries():
        for name in set(METRIC.findall(expr)):
            metric = re.sub(r"_(bucket|sum|count)$", "", name) if name not in exported_metrics else name
            _, labels, _ = exported_metrics[metric]
            if labels and metric not in always_there:
                assert expr.rstrip().endswith("or on() vector(0)") or " or on() vector(0))" in expr, \
                    f"{title}: {metric} has labels; the query returns nothing until one is used"
