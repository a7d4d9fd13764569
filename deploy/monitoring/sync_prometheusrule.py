"""Write deploy/kubernetes/base/prometheusrule.yaml from deploy/monitoring/alerts.yml.

    python deploy/monitoring/sync_prometheusrule.py          # rewrite the PrometheusRule
    python deploy/monitoring/sync_prometheusrule.py --check  # exit 1 if it differs from alerts.yml

alerts.yml is the one source of the alert rules (promtool checks and unit-tests it); the
Prometheus operator gets the same groups in a PrometheusRule. tests/deploy checks the two agree.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "monitoring" / "alerts.yml"
RULE = ROOT / "deploy" / "kubernetes" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/monitoring/alerts.yml by deploy/monitoring/sync_prometheusrule.py: edit
# alerts.yml and run the script (tests/deploy fails while the two differ).
# Your Prometheus' ruleSelector must select this object (with kube-prometheus-stack, e.g. add the
# label `release: <helm release>` in an overlay).
"""


def prometheus_rule(groups: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "lifecycle", "labels": {"app.kubernetes.io/name": "lifecycle"}},
        "spec": {"groups": groups},
    }


def render() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    body = yaml.safe_dump(prometheus_rule(groups), sort_keys=False, width=100, allow_unicode=True)
    return HEADER + body


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not RULE.exists() or RULE.read_text() != text:
            print(f"{RULE.relative_to(ROOT)} differs from {ALERTS.relative_to(ROOT)}; "
                  f"run python {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
            return 1
        return 0
    RULE.write_text(text)
    print(f"wrote {RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
