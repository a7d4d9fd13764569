"""The Prometheus config and alert rules of deploy/monitoring, checked and unit-tested by promtool.

Every alert has its own promtool test file with a case where it fires and one where it does not;
the PrometheusRule shipped to Kubernetes holds exactly the same groups.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
RULE_TESTS = MONITORING / "tests"
PROMETHEUS_RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
SEVERITIES = {"critical", "warning", "info"}


def _run(*command: str | Path, cwd: Path = MONITORING) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True, check=False,
                            timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, command))} exited {result.returncode}:\n{output}"
    return output


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


ALERT_NAMES = [rule["alert"] for rule in _alerts()]
TEST_FILES = sorted(RULE_TESTS.glob("*.yml"))


def test_the_scrape_config_is_valid(promtool: Path) -> None:
    output = _run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in output
    jobs = [job["job_name"] for job in yaml.safe_load((MONITORING / "prometheus.yml").read_text())["scrape_configs"]]
    assert jobs == ["ingest", "stager", "dispatcher"]


def test_the_alert_rules_are_valid(promtool: Path) -> None:
    output = _run(promtool, "check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in output


def test_the_required_alerts_are_there() -> None:
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)), "duplicate alert names"
    exprs = {rule["alert"]: rule["expr"] for rule in _alerts()}
    wanted = {
        "LifecycleServiceDown": "up{",
        "LifecycleIngestServerErrors": "lifecycle_ingest_requests_total",
        "LifecycleConsumerLagGrowing": "lifecycle_stager_consumer_lag_messages",
        "LifecycleDueStepsLate": "lifecycle_dispatcher_oldest_due_step_age_seconds",
        "LifecycleSmtpFailures": "lifecycle_dispatcher_sends_total",
        "LifecycleOutboxBacklog": "lifecycle_stager_outbox_",
    }
    for name, needle in wanted.items():
        assert name in exprs, f"missing alert {name}"
        assert needle in exprs[name], f"{name} does not look at {needle}"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook_entry(alert: str) -> None:
    rule = next(r for r in _alerts() if r["alert"] == alert)
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule["annotations"]["summary"].strip()
    assert len(rule["annotations"]["description"]) > 60
    assert re.search(rf"^#+ .*`?{alert}`?", OPERATIONS.read_text(), flags=re.MULTILINE), \
        f"docs/operations.md has no heading for {alert} (what to do when it fires)"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_every_alert_has_a_unit_test_file_where_it_fires_and_where_it_does_not(alert: str) -> None:
    path = RULE_TESTS / f"{alert}.yml"
    assert path.is_file(), f"no promtool unit test for {alert}: write {path.relative_to(ROOT)}"
    spec = yaml.safe_load(path.read_text())
    assert [str((path.parent / f).resolve()) for f in spec["rule_files"]] == [str(ALERTS)]
    checks = [check for test in spec["tests"] for check in test.get("alert_rule_test", [])
              if check["alertname"] == alert]
    assert any(check.get("exp_alerts") for check in checks), f"{path.name}: no case where {alert} fires"
    assert any(not check.get("exp_alerts") for check in checks), f"{path.name}: no case where {alert} stays quiet"
    for check in checks:
        for expected in check.get("exp_alerts") or []:
            # promtool compares the whole alert: the annotations are tested as rendered
            assert set(expected["exp_annotations"]) == {"summary", "description"}


def test_no_unit_test_file_without_its_alert() -> None:
    assert sorted(p.stem for p in TEST_FILES) == sorted(ALERT_NAMES)


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.stem)
def test_the_alert_unit_tests_pass(promtool: Path, path: Path) -> None:
    output = _run(promtool, "test", "rules", path.relative_to(MONITORING))
    assert "SUCCESS" in output and "FAILED" not in output, output


def test_the_prometheus_rule_for_the_operator_holds_the_same_groups() -> None:
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"], (
        "deploy/kubernetes/base/prometheusrule.yaml differs from deploy/monitoring/alerts.yml: "
        "run python deploy/monitoring/sync_prometheusrule.py")
    _run(sys.executable, MONITORING / "sync_prometheusrule.py", "--check", cwd=ROOT)
