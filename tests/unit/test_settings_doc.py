"""Every setting is documented in docs/settings.md, and nothing documented is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lifecycle.settings import Settings, load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_every_setting_is_in_the_table() -> None:
    documented = set(re.findall(r"^\| `LIFECYCLE_([A-Z0-9_]+)`", DOC.read_text(), flags=re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert sorted(fields - documented) == [], "undocumented settings"
    assert sorted(documented - fields) == [], "documented settings that do not exist"


def test_secrets_come_from_files_in_the_secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "lifecycle_signing_secret").write_text("from-a-file")
    monkeypatch.setenv("LIFECYCLE_SECRETS_DIR", str(tmp_path))
    monkeypatch.delenv("LIFECYCLE_SIGNING_SECRET", raising=False)
    assert load_settings().signing_secret == "from-a-file"
    monkeypatch.setenv("LIFECYCLE_SIGNING_SECRET", "from-the-environment")
    assert load_settings().signing_secret == "from-the-environment"
