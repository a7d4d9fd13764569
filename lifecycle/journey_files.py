"""Loading and validating journey YAML files, with errors that name file, line and field."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lifecycle.core.durations import parse_duration
from lifecycle.core.journeys import (
    Branch,
    ClickCondition,
    CouponSpec,
    Journey,
    Reentry,
    SendStep,
    Step,
    TriggerMatch,
    Variant,
    WaitStep,
)
from lifecycle.core.triggers import TriggerType
from lifecycle.templates import Templates

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
        sends += 1
        step = _send_step(reader, send, mapping["send"], f"{field}.send", f"{name}_{sends}", sends, templates)
        if step is not None:
            steps.append(step)
    if sends == 0:
        reader.fail(node, "steps", "a journey needs at least one send step")
    seen: set[str] = set()
    for i, parsed in enumerate(steps):
        if isinstance(parsed, SendStep):
            if parsed.id in seen:
                reader.fail(node.value[i], f"steps[{i}].send.id",
                            f"another send step has the id {parsed.id!r}; give each send step its own `id`")
            seen.add(parsed.id)
    return steps


SEND_FIELDS = {"id", "template", "if_clicked", "unless_clicked", "branches", "coupon", "offer", "recommendations",
               "variants"}
_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TIERS = ("bronze", "silver", "gold")
CATEGORIES = ("cart_reminders", "offers", "news")


def _template(reader: _Reader, node: yaml.Node, field: str, templates: Templates | None) -> str | None:
    name = reader.scalar(node, field)
    if name and templates is not None and not templates.exists(name):
        reader.fail(node, field, f"no template named {name!r}")
    return name


def _conditions(reader: _Reader, spec: dict[str, yaml.Node],
                field: str) -> tuple[ClickCondition | None, ClickCondition | None]:
    if_clicked = _click(reader, spec["if_clicked"], f"{field}.if_clicked") if "if_clicked" in spec else None
    unless = _click(reader, spec["unless_clicked"], f"{field}.unless_clicked") if "unless_clicked" in spec else None
    return if_clicked, unless


def _coupon(reader: _Reader, node: yaml.Node, field: str, tiered: bool) -> CouponSpec | None:
    raw = reader.plain(node)
    if not isinstance(raw, dict):
        reader.fail(node, field, "expected a mapping")
        return None
    allowed = {"valid"} | (set(TIERS) if tiered else {"kind", "amount", "reuse_step"})
    for key in sorted(set(raw) - allowed):
        reader.fail(node, f"{field}.{key}", f"unknown field; one of {', '.join(sorted(allowed))}")
    try:
        valid = parse_duration(str(raw.get("valid", "3d")))
    except ValueError as exc:
        reader.fail(node, f"{field}.valid", str(exc))
        return None
    if tiered:
        amounts = {t: raw.get(t) for t in TIERS}
        if not all(isinstance(v, int | float) and v > 0 for v in amounts.values()):
            reader.fail(node, field, "an offer gives a positive percent for each tier: bronze, silver, gold")
            return None
        by_tier = tuple((t, float(v)) for t, v in amounts.items() if v is not None)
        return CouponSpec(kind="percent", amount=float(amounts["bronze"] or 0), valid=valid, by_tier=by_tier)
    if "reuse_step" in raw:
        if not isinstance(raw["reuse_step"], int):
            reader.fail(node, f"{field}.reuse_step", "expected the number of an earlier send step")
            return None
        return CouponSpec(reuse_step=raw["reuse_step"], valid=valid)
    kind, amount = raw.get("kind", "percent"), raw.get("amount")
    if kind not in ("percent", "fixed") or not isinstance(amount, int | float) or amount <= 0:
        reader.fail(node, field, "expected {kind: percent|fixed, amount: <positive number>, valid: <duration>}")
        return None
    return CouponSpec(kind=str(kind), amount=float(amount), valid=valid)


def _send_step(reader: _Reader, send: dict[str, yaml.Node], node: yaml.Node, field: str, default_template: str,
               number: int, templates: Templates | None) -> SendStep | None:
    for key in sorted(set(send) - SEND_FIELDS):
        reader.fail(send[key], f"{field}.{key}", "unknown field")
    template = default_template
    if "template" in send:
        template = _template(reader, send["template"], f"{field}.template", templates) or template
    elif "branches" not in send and templates is not None and not templates.exists(template):
        reader.fail(node, f"{field}.template", f"no template named {template!r}")
    if_clicked, unless_clicked = _conditions(reader, send, field)
    branches: list[Branch] = []
    if "branches" in send:
        items = send["branches"]
        if not isinstance(items, yaml.SequenceNode) or not items.value:
            reader.fail(items, f"{field}.branches", "expected a list of {template, if_clicked|unless_clicked}")
        else:
            for i, item in enumerate(items.value):
                branch = reader.mapping(item, f"{field}.branches[{i}]")
                if branch is None or "template" not in branch:
                    reader.fail(item, f"{field}.branches[{i}].template", "required")
                    continue
                name = _template(reader, branch["template"], f"{field}.branches[{i}].template", templates)
                cond_if, cond_unless = _conditions(reader, branch, f"{field}.branches[{i}]")
                if name:
                    branches.append(Branch(name, cond_if, cond_unless))
            if branches and "template" not in send:
                template = branches[0].template
    coupon = None
    if "coupon" in send and "offer" in send:
        reader.fail(send["offer"], f"{field}.offer", "a step has a coupon or an offer, not both")
    elif "coupon" in send:
        coupon = _coupon(reader, send["coupon"], f"{field}.coupon", tiered=False)
        if coupon is not None and coupon.reuse_step is not None and not 0 < coupon.reuse_step < number:
            reader.fail(send["coupon"], f"{field}.coupon.reuse_step", "must name an earlier send step")
    elif "offer" in send:
        coupon = _coupon(reader, send["offer"], f"{field}.offer", tiered=True)
    recommendations = 0
    if "recommendations" in send:
        raw = reader.plain(send["recommendations"])
        if not isinstance(raw, int) or not 0 < raw <= 12:
            reader.fail(send["recommendations"], f"{field}.recommendations", "how many products: 1 to 12")
        else:
            recommendations = raw
    variants: list[Variant] = []
    if "variants" in send:
        raw_variants = reader.plain(send["variants"])
        if not isinstance(raw_variants, list) or len(raw_variants) < 2:
            reader.fail(send["variants"], f"{field}.variants", "expected two or more variants")
        else:
            for i, raw in enumerate(raw_variants):
                ok = isinstance(raw, dict) and isinstance(raw.get("name"), str) and \
                    isinstance(raw.get("weight", 1), int) and raw.get("weight", 1) > 0 and \
                    set(raw) <= {"name", "weight", "template", "subject"}
                if not ok:
                    reader.fail(send["variants"], f"{field}.variants[{i}]",
                                "expected {name, weight: positive integer, template?, subject?}")
                    continue
                variant_template = str(raw.get("template", template))
                if templates is not None and not templates.exists(variant_template):
                    reader.fail(send["variants"], f"{field}.variants[{i}].template",
                                f"no template named {variant_template!r}")
                variants.append(Variant(raw["name"], int(raw.get("weight", 1)), variant_template, raw.get("subject")))
            if len({v.name for v in variants}) != len(variants):
                reader.fail(send["variants"], f"{field}.variants", "variant names must differ")
    step_id = template
    if "id" in send:
        given = reader.scalar(send["id"], f"{field}.id")
        if given is None or not _STEP_ID.fullmatch(given):
            reader.fail(send["id"], f"{field}.id", "a step id is 1 to 64 letters, digits or _ . : - (e.g. reminder)")
        else:
            step_id = given
    return SendStep(template, number, if_clicked, unless_clicked, tuple(branches), coupon, recommendations,
                    tuple(variants), step_id)


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
    allowed = {"name", "description", "entry", "steps", "exit", "reentry", "reentry_key", "consent", "marketing",
               "category"}
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
    category = "news"
    if "category" in top:
        value = reader.scalar(top["category"], "category")
        if value not in CATEGORIES:
            reader.fail(top["category"], "category", f"one of {', '.join(CATEGORIES)}")
        else:
            category = value
    if reader.problems or entry is None:
        return None, reader.problems
    journey = Journey(name, entry, tuple(steps), tuple(exits), reentry, reentry_key, consent, marketing, description,
                      category)
    return journey, []


@dataclass(frozen=True)
class JourneyFile:
    journey: Journey
    path: Path
    text: str  # the definition as written: what a version stores


def load_journeys(extra_dir: Path | None = None, templates: Templates | None = None,
                  render_templates: bool = True) -> list[Journey]:
    """Built-in journeys, then those of `extra_dir`, which add or replace by name.

    With `render_templates`, every template of every locale is rendered with sample data and each
    problem is reported; without it, only their existence is checked (for readers of runs).
    """
    return [found.journey for found in load_journey_files(extra_dir, templates, render_templates)]


def load_journey_files(extra_dir: Path | None = None, templates: Templates | None = None,
                       render_templates: bool = True) -> list[JourneyFile]:
    """`load_journeys`, keeping each journey's file and text."""
    templates = templates or Templates(extra_dir)
    by_name: dict[str, JourneyFile] = {}
    problems: list[Problem] = []
    dirs = [BUILTIN_DIR] + ([extra_dir] if extra_dir is not None else [])
    for directory in dirs:
        if not directory.is_dir():
            problems.append(Problem(directory, 1, "(dir)", "journeys directory not found"))
            continue
        for path in sorted(directory.glob("*.yaml")):
            text = path.read_text(encoding="utf-8")
            journey, found = parse_journey(path, text, templates)
            problems.extend(found)
            if journey is not None:
                by_name[journey.name] = JourneyFile(journey, path, text)
    for journey in [found.journey for found in by_name.values()] if render_templates else ():
        for step in journey.steps:
            if not isinstance(step, SendStep):
                continue
            for template in step.templates():
                problems.extend(Problem(exc.path, exc.line, template, exc.message)
                                for exc in templates.problems(template))
    if problems:
        raise JourneyError(problems)
    return list(by_name.values())
