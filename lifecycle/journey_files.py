"""Loading and validating journey YAML files, with errors that name file, line and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lifecycle.core.durations import parse_duration
from lifecycle.core.journeys import (
    ClickCondition,
    Journey,
    Reentry,
    SendStep,
    Step,
    TriggerMatch,
    WaitStep,
)
from lifecycle.core.triggers import TriggerType
from lifecycle.templates import TemplateError, Templates

BUILTIN_DIR = Path(__file__).parent / "journeys"
REENTRY_RULES: tuple[Reentry, ...] = ("while_inactive", "restart", "once", "once_per_key")
CONSENTS = ("opted_in", "pending", "opted_out")


@dataclass(frozen=True)
class Problem:
    file: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class JourneyError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class _Reader:
    """Walks a composed YAML node tree, keeping line numbers for messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[Problem] = []

    def fail(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(Problem(self.path, line, field, message))

    def mapping(self, node: yaml.Node, field: str) -> dict[str, yaml.Node] | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, field, "expected a mapping")
            return None
        return {str(k.value): v for k, v in node.value}

    def scalar(self, node: yaml.Node, field: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, field, "expected a single value")
            return None
        return str(node.value)

    def plain(self, node: yaml.Node) -> Any:
        return yaml.safe_load(yaml.serialize(node))


def _trigger_match(reader: _Reader, node: yaml.Node, field: str) -> TriggerMatch | None:
    mapping = reader.mapping(node, field)
    if mapping is None:
        return None
    unknown = set(mapping) - {"trigger", "where"}
    for key in sorted(unknown):
        reader.fail(mapping[key], f"{field}.{key}", "unknown field")
    if "trigger" not in mapping:
        reader.fail(node, f"{field}.trigger", "required")
        return None
    name = reader.scalar(mapping["trigger"], f"{field}.trigger")
    valid = [t.value for t in TriggerType]
    if name not in valid:
        reader.fail(mapping["trigger"], f"{field}.trigger", f"unknown trigger {name!r}; one of {', '.join(valid)}")
        return None
    where: dict[str, list[Any]] = {}
    if "where" in mapping:
        raw = reader.plain(mapping["where"])
        if not isinstance(raw, dict):
            reader.fail(mapping["where"], f"{field}.where", "expected a mapping of data field to value(s)")
        else:
            where = {str(k): (v if isinstance(v, list) else [v]) for k, v in raw.items()}
    return TriggerMatch(TriggerType(name), where)


def _click(reader: _Reader, node: yaml.Node, field: str) -> ClickCondition | None:
    raw = reader.plain(node)
    if not isinstance(raw, dict) or not isinstance(raw.get("step"), int) or not isinstance(raw.get("link"), str):
        reader.fail(node, field, "expected {step: <send step number>, link: <link name>}")
        return None
    return ClickCondition(raw["step"], raw["link"])


def _steps(reader: _Reader, node: yaml.Node, name: str, templates: Templates | None) -> list[Step]:
    steps: list[Step] = []
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        reader.fail(node, "steps", "expected a non-empty list of wait and send steps")
        return steps
    sends = 0
    for i, item in enumerate(node.value):
        field = f"steps[{i}]"
        mapping = reader.mapping(item, field)
        if mapping is None:
            continue
        if set(mapping) == {"wait"}:
            text = reader.scalar(mapping["wait"], f"{field}.wait")
            try:
                steps.append(WaitStep(parse_duration(text or "")))
            except ValueError as exc:
                reader.fail(mapping["wait"], f"{field}.wait", str(exc))
            continue
        if "send" not in mapping or len(mapping) != 1:
            reader.fail(item, field, "a step is either {wait: DURATION} or {send: {...}}")
            continue
        send = reader.mapping(mapping["send"], f"{field}.send")
        if send is None:
            continue
        for key in sorted(set(send) - {"template", "if_clicked", "unless_clicked"}):
            reader.fail(send[key], f"{field}.send.{key}", "unknown field")
        sends += 1
        template = f"{name}_{sends}"
        if "template" in send:
            template = reader.scalar(send["template"], f"{field}.send.template") or template
        if templates is not None and not templates.exists(template):
            reader.fail(mapping["send"], f"{field}.send.template", f"no template named {template!r}")
        if_clicked = _click(reader, send["if_clicked"], f"{field}.send.if_clicked") if "if_clicked" in send else None
        unless_clicked = (
            _click(reader, send["unless_clicked"], f"{field}.send.unless_clicked")
            if "unless_clicked" in send
            else None
        )
        steps.append(SendStep(template, sends, if_clicked, unless_clicked))
    if sends == 0:
        reader.fail(node, "steps", "a journey needs at least one send step")
    return steps


def parse_journey(path: Path, text: str, templates: Templates | None = None) -> tuple[Journey | None, list[Problem]]:
    reader = _Reader(path)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        return None, [Problem(path, line, "(file)", f"invalid YAML: {exc}")]
    if root is None:
        return None, [Problem(path, 1, "(file)", "empty file")]
    top = reader.mapping(root, "(file)")
    if top is None:
        return None, reader.problems
    allowed = {"name", "description", "entry", "steps", "exit", "reentry", "reentry_key", "consent", "marketing"}
    for key in sorted(set(top) - allowed):
        reader.fail(top[key], key, "unknown field")
    for required in ("name", "entry", "steps"):
        if required not in top:
            reader.fail(root, required, "required")
    if reader.problems:
        return None, reader.problems
    name = reader.scalar(top["name"], "name") or ""
    entry = _trigger_match(reader, top["entry"], "entry")
    steps = _steps(reader, top["steps"], name, templates)
    exits: list[TriggerMatch] = []
    if "exit" in top:
        exit_node = top["exit"]
        if not isinstance(exit_node, yaml.SequenceNode):
            reader.fail(exit_node, "exit", "expected a list of {trigger, where}")
        else:
            for i, item in enumerate(exit_node.value):
                match = _trigger_match(reader, item, f"exit[{i}]")
                if match is not None:
                    exits.append(match)
    reentry: Reentry = "while_inactive"
    if "reentry" in top:
        value = reader.scalar(top["reentry"], "reentry")
        if value not in REENTRY_RULES:
            reader.fail(top["reentry"], "reentry", f"one of {', '.join(REENTRY_RULES)}")
        else:
            reentry = value
    reentry_key = reader.scalar(top["reentry_key"], "reentry_key") if "reentry_key" in top else None
    if reentry == "once_per_key" and not reentry_key:
        reader.fail(top.get("reentry", root), "reentry_key", "required with reentry: once_per_key")
    consent: tuple[str, ...] = ("opted_in",)
    if "consent" in top:
        raw = reader.plain(top["consent"])
        values = raw if isinstance(raw, list) else [raw]
        if not values or any(v not in CONSENTS for v in values):
            reader.fail(top["consent"], "consent", f"values among {', '.join(CONSENTS)}")
        else:
            consent = tuple(str(v) for v in values)
    marketing = True
    if "marketing" in top:
        raw_marketing = reader.plain(top["marketing"])
        if not isinstance(raw_marketing, bool):
            reader.fail(top["marketing"], "marketing", "expected true or false")
        else:
            marketing = raw_marketing
    description = str(reader.plain(top["description"])) if "description" in top else ""
    if reader.problems or entry is None:
        return None, reader.problems
    journey = Journey(name, entry, tuple(steps), tuple(exits), reentry, reentry_key, consent, marketing, description)
    return journey, []


def load_journeys(extra_dir: Path | None = None, templates: Templates | None = None) -> list[Journey]:
    """Built-in journeys, then those of `extra_dir`, which add or replace by name."""
    templates = templates or Templates(extra_dir)
    by_name: dict[str, Journey] = {}
    problems: list[Problem] = []
    dirs = [BUILTIN_DIR] + ([extra_dir] if extra_dir is not None else [])
    for directory in dirs:
        if not directory.is_dir():
            problems.append(Problem(directory, 1, "(dir)", "journeys directory not found"))
            continue
        for path in sorted(directory.glob("*.yaml")):
            journey, found = parse_journey(path, path.read_text(encoding="utf-8"), templates)
            problems.extend(found)
            if journey is not None:
                by_name[journey.name] = journey
    for journey in by_name.values():
        for step in journey.steps:
            if isinstance(step, SendStep):
                try:
                    templates.check(step.template)
                except TemplateError as exc:
                    problems.append(Problem(exc.path, exc.line, step.template, exc.message))
    if problems:
        raise JourneyError(problems)
    return list(by_name.values())
