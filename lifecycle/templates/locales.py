"""Locales: how tags and locale folders compare, which folders exist, which one a customer gets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def normalize_locale(tag: str) -> str:
    """`en_GB`, `EN-gb` -> `en-gb`: how locale tags and locale folders are compared."""
    return tag.strip().replace("_", "-").lower()


def locale_folders(roots: Iterable[Path]) -> dict[str, str]:
    """normalized tag -> folder name, over every root."""
    found: dict[str, str] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.name.startswith(("_", ".")) and any(child.glob("*.mjml")):
                found.setdefault(normalize_locale(child.name), child.name)
    return found


def pick_locale(folders: Iterable[str], wanted: str | None, default: str) -> str | None:
    """Among `folders`, the wanted locale (en-GB, then en), else the default locale, else any; None if none."""
    available = {normalize_locale(loc): loc for loc in folders}
    candidates: list[str] = []
    if wanted:
        tag = normalize_locale(wanted)
        candidates += [tag, tag.split("-")[0]]
    candidates.append(normalize_locale(default))
    for candidate in candidates:
        if candidate in available:
            return available[candidate]
    return sorted(available.values())[0] if available else None
