"""Segment files: the built-in ones (lifecycle/segments/), then those of LIFECYCLE_SEGMENTS_DIR, which
add or replace by name. Each file holds one segment named as the file (docs/segments.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lifecycle.core.segments import SEGMENT_NAME, Segment, SegmentError, SegmentProblem, parse_segment
from lifecycle.yamlio import load_plain

BUILTIN_DIR = Path(__file__).parent / "segments"


class SegmentFileError(ValueError):
    """Problems of segment files, each `file: field: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def read_yaml(path: Path) -> Any:
    """A YAML file's value, or SegmentFileError saying where it is not YAML."""
    try:
        return load_plain(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SegmentFileError([f"{path}: cannot be read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise SegmentFileError([f"{path}: is not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise SegmentFileError([f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None


def load_segment_file(path: Path) -> Segment:
    try:
        return parse_segment(read_yaml(path), default_name=path.stem)
    except SegmentError as exc:
        raise SegmentFileError([f"{path}: {problem}" for problem in exc.problems]) from None


def load_segments(extra_dir: Path | None = None) -> dict[str, Segment]:
    """Every segment by name; SegmentFileError lists the problems of every file."""
    found: dict[str, Segment] = {}
    problems: list[str] = []
    for directory in [BUILTIN_DIR] + ([extra_dir] if extra_dir is not None else []):
        if not directory.is_dir():
            problems.append(f"{directory}: segments directory not found")
            continue
        for path in sorted(directory.glob("*.yaml")):
            try:
                segment = load_segment_file(path)
            except SegmentFileError as exc:
                problems.extend(exc.problems)
            else:
                found[segment.name] = segment
    if problems:
        raise SegmentFileError(problems)
    return found


def segment_names(extra_dir: Path | None = None) -> list[str] | None:
    """The names of the segments there are now, sorted; None when a file has a problem (each is then
    read when asked for, by `named_segment`)."""
    try:
        return sorted(load_segments(extra_dir))
    except SegmentFileError:
        return None


def named_segment(name: str, extra_dir: Path | None = None) -> Segment | None:
    """The segment called `name` (LIFECYCLE_SEGMENTS_DIR first, then the built-in ones), or None.
    Only its own file is read: another broken file does not hide it."""
    for directory in ([extra_dir] if extra_dir is not None else []) + [BUILTIN_DIR]:
        path = directory / f"{name}.yaml"
        if SEGMENT_NAME.match(name) and path.is_file():
            return load_segment_file(path)
    return None


def find_segment(reference: str, extra_dir: Path | None = None) -> Segment:
    """A segment file's path (ending in .yaml or .yml, or an existing file), else a segment's name."""
    path = Path(reference)
    if reference.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise SegmentFileError([f"{reference}: no such file"])
        return load_segment_file(path)
    found = named_segment(reference, extra_dir)
    if found is None:
        known = ", ".join(sorted(load_segments(extra_dir))) or "none"
        raise SegmentFileError([f"no segment named {reference!r} (segments: {known})"])
    return found


__all__ = ["BUILTIN_DIR", "SegmentFileError", "SegmentProblem", "find_segment", "load_segment_file",
           "load_segments", "named_segment", "read_yaml"]
