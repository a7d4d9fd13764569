"""Every setting is documented in docs/settings.md, and nothing documented is gone."""

from __future__ import annotations

import re
from pathlib import Path

from lifecycle.settings import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_is_in_the_table() -> None:
    documented = set(re.findall(r"^\| `LIFECYCLE_([A-Z0-9_]+)`", DOC.read_text(), flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - documented) == [], "undocumented settings"
    assert sorted(documented - fields) == [], "documented settings that do not exist"
