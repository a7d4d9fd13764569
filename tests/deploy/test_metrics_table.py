"""docs/operations.md lists every metric the services register, with its type and labels, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"
ROW = re.compile(r"^\| `(lifecycle_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \| ([^|]+) \|$", flags=re.MULTILINE)


def _documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name, kind, labels, meaning in ROW.findall(OPERATIONS.read_text()):
        assert name not in rows, f"{name} is listed twice"
        assert meaning.strip(), f"{name}: no meaning"
        rows[name] = (kind, tuple(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def test_every_registered_metric_is_in_the_table_with_its_type_and_labels(
        exported_metrics: dict[str, tuple[str, tuple[str, ...], str]]) -> None:
    documented = _documented()
    assert sorted(set(exported_metrics) - set(documented)) == [], "metrics missing from docs/operations.md"
    assert sorted(set(documented) - set(exported_metrics)) == [], "docs/operations.md lists metrics that do not exist"
    for name, (kind, labels, _) in exported_metrics.items():
        assert documented[name] == (kind, labels), \
            f"{name}: the table says {documented[name]}, the code {(kind, labels)}"
