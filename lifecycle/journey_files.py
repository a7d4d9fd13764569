"""Loading and validating journey YAML files, with errors that name file, line and field."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import time, timedelta
from pathlib import Path
from typing import Any, TypeGuard

import yaml

from lifecycle.core.durations import DURATION_PATTERN, parse_duration
from lifecycle.core.journeys import (
    MAX_WEIGHT,
    NAME_PATTERN,
    WEEKDAYS,
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
from lifecycle.events.kinds import EMAIL_CATEGORIES
from lifecycle.templates import Templates
from lifecycle.yamlio import PlainLoader, load_plain

BUILTIN_DIR = Path(__file__).parent / "journeys"
REENTRY_RULES: tuple[Reentry, ...] = ("while_inactive", "restart", "once", "once_per_key")
CONSENTS = ("opted_in", "pending", "opted_out")
MAX_STEPS = 999  # send step numbers a click condition may name
MAX_AMOUNT = {"percent": 100, "fixed": 1_000_000_000}
JOURNEY_NAME = NAME_PATTERN


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
        return load_plain(yaml.serialize(node))

    def text(self, node: yaml.Node, field: str) -> str | None:
        """A scalar that is text (`5`, `true` or `null` are not)."""
        value = self.plain(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(value, str):
            self.fail(node, field, "expected text")
            return None
        return value


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


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _click(reader: _Reader, node: yaml.Node, field: str) -> ClickCondition | None:
    raw = reader.plain(node)
    if not isinstance(raw, dict) or set(raw) != {"step", "link"} or not _integer(raw["step"]) \
            or not 1 <= raw["step"] <= MAX_STEPS or not isinstance(raw["link"], str):
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
            wait = _duration(reader, mapping["wait"], f"{field}.wait")
            if wait is not None:
                steps.append(WaitStep(wait))
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
        if isinstance(parsed, SendStep) and parsed.id:
            if parsed.id in seen:
                reader.fail(node.value[i], f"steps[{i}].send.id",
                            f"another send step has the id {parsed.id!r}; give each send step its own `id`")
            seen.add(parsed.id)
    # A step without an id is known by its template, or by template@number when that is taken.
    for i, parsed in enumerate(steps):
        if isinstance(parsed, SendStep) and not parsed.id:
            default = parsed.template if parsed.template not in seen else f"{parsed.template}@{parsed.number}"
            steps[i] = replace(parsed, id=default)
            seen.add(default)
    return steps


SEND_FIELDS = {"id", "template", "if_clicked", "unless_clicked", "branches", "coupon", "offer", "recommendations",
               "variants", "at", "on"}
_AT = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
_STEP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TIERS = ("bronze", "silver", "gold")
CATEGORIES = EMAIL_CATEGORIES


def _duration(reader: _Reader, node: yaml.Node, field: str) -> timedelta | None:
    text = reader.text(node, field)
    if text is None:
        return None
    if not text or not re.fullmatch(DURATION_PATTERN.strip("^$"), text):
        reader.fail(node, field, f"invalid duration {text!r}: numbers of up to 5 digits with units d, h, m, s in"
                                 " that order, like 1d2h5m")
        return None
    return parse_duration(text)


def _template(reader: _Reader, node: yaml.Node, field: str, templates: Templates | None) -> str | None:
    name = reader.text(node, field)
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
    valid_text = raw.get("valid", "3d")
    if not isinstance(valid_text, str) or not valid_text \
            or not re.fullmatch(DURATION_PATTERN.strip("^$"), valid_text):
        reader.fail(node, f"{field}.valid", f"invalid duration {valid_text!r}: use numbers with units d, h, m, s")
        return None
    valid = parse_duration(valid_text)
    if tiered:
        amounts = {t: raw.get(t) for t in TIERS}
        if not all(_number(v) and 0 < v <= 100 for v in amounts.values()):
            reader.fail(node, field, "an offer gives a percent (over 0, at most 100) for each tier: bronze, silver,"
                                     " gold")
            return None
        by_tier = tuple((t, float(v)) for t, v in amounts.items() if v is not None)
        return CouponSpec(kind="percent", amount=float(amounts["bronze"] or 0), valid=valid, by_tier=by_tier)
    if "reuse_step" in raw:
        if not _integer(raw["reuse_step"]) or {"kind", "amount"} & set(raw):
            reader.fail(node, f"{field}.reuse_step", "expected {reuse_step: <an earlier send step>, valid?}")
            return None
        return CouponSpec(reuse_step=raw["reuse_step"], valid=valid)
    kind, amount = raw.get("kind", "percent"), raw.get("amount")
    if kind not in ("percent", "fixed") or not _number(amount) or not 0 < amount <= MAX_AMOUNT[kind]:
        reader.fail(node, field, "expected {kind: percent|fixed, amount: over 0 (a percent at most 100, a fixed"
                                 f" amount at most {MAX_AMOUNT['fixed']:g}), valid: <duration>}}")
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
                for key in sorted(set(branch) - {"template", "if_clicked", "unless_clicked"}):
                    reader.fail(branch[key], f"{field}.branches[{i}].{key}", "unknown field")
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
        if not _integer(raw) or not 0 < raw <= 12:
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
                    _integer(raw.get("weight", 1)) and 0 < raw.get("weight", 1) <= MAX_WEIGHT and \
                    isinstance(raw.get("template", ""), str) and isinstance(raw.get("subject", ""), str) and \
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
    step_id = ""  # none given: _steps picks the default once every explicit id is known
    if "id" in send:
        given = reader.text(send["id"], f"{field}.id")
        if given is None or not _STEP_ID.fullmatch(given):
            reader.fail(send["id"], f"{field}.id", "a step id is 1 to 64 letters, digits or _ . : - (e.g. reminder)")
        else:
            step_id = given
    at, on = _window(reader, send, field)
    return SendStep(template, number, if_clicked, unless_clicked, tuple(branches), coupon, recommendations,
                    tuple(variants), step_id, at, on)


def _window(reader: _Reader, send: dict[str, yaml.Node], field: str) -> tuple[time | None, tuple[int, ...]]:
    """A send step's local time of day (`at: "10:00"`) and local weekdays (`on: [mon, tue]`)."""
    at: time | None = None
    if "at" in send:
        text = reader.plain(send["at"])
        if not isinstance(text, str) or not _AT.fullmatch(text):
            reader.fail(send["at"], f"{field}.at", f"a local time of day from 00:00 to 23:59, such as \"10:00\" (got"
                                                   f" {text!r}; quote it: YAML reads 10:00 unquoted as a number)")
        else:
            at = time.fromisoformat(text)
    on: tuple[int, ...] = ()
    if "on" in send:
        days = reader.plain(send["on"])
        if not isinstance(days, list) or not days:
            reader.fail(send["on"], f"{field}.on", f"a non-empty list of weekdays among {', '.join(WEEKDAYS)}: a step"
                                                   " with no day to go out on would never be sent")
        elif any(day not in WEEKDAYS for day in days):
            wrong = [day for day in days if day not in WEEKDAYS]
            reader.fail(send["on"], f"{field}.on", f"unknown weekday(s) {wrong}; use {', '.join(WEEKDAYS)}")
        elif len(set(days)) != len(days):
            reader.fail(send["on"], f"{field}.on", "a weekday is given twice")
        else:
            on = tuple(sorted(WEEKDAYS.index(day) for day in days))
    return at, on


def parse_journey(path: Path, text: str, templates: Templates | None = None) -> tuple[Journey | None, list[Problem]]:
    reader = _Reader(path)
    try:
        root = yaml.compose(text, Loader=PlainLoader)  # `NO` is Norway, not false
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
               "category", "reentry_cooldown", "unless_active"}
    for key in sorted(set(top) - allowed):
        reader.fail(top[key], key, "unknown field")
    for required in ("name", "entry", "steps"):
        if required not in top:
            reader.fail(root, required, "required")
    if reader.problems:
        return None, reader.problems
    given_name = reader.text(top["name"], "name")
    name = given_name or ""
    if given_name is not None and not re.fullmatch(JOURNEY_NAME.strip("^$"), name):
        reader.fail(top["name"], "name", "1 to 128 letters, digits, _ . or -, starting with a letter or digit")
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
    reentry_key = reader.text(top["reentry_key"], "reentry_key") if "reentry_key" in top else None
    if reentry_key == "":
        reader.fail(top["reentry_key"], "reentry_key", "the name of a trigger data field, not empty")
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
    description = (reader.text(top["description"], "description") or "") if "description" in top else ""
    category = "news"
    if "category" in top:
        value = reader.scalar(top["category"], "category")
        if value not in CATEGORIES:
            reader.fail(top["category"], "category", f"one of {', '.join(CATEGORIES)}")
        else:
            category = value
    cooldown = _duration(reader, top["reentry_cooldown"], "reentry_cooldown") if "reentry_cooldown" in top else None
    unless_active: tuple[str, ...] = ()
    if "unless_active" in top:
        raw_names = reader.plain(top["unless_active"])
        if not isinstance(raw_names, list) or not raw_names or not all(
                isinstance(n, str) and re.fullmatch(JOURNEY_NAME.strip("^$"), n) for n in raw_names):
            reader.fail(top["unless_active"], "unless_active", "a non-empty list of journey names")
        else:
            unless_active = tuple(raw_names)
    if reader.problems or entry is None:
        return None, reader.problems
    journey = Journey(name, entry, tuple(steps), tuple(exits), reentry, reentry_key, consent, marketing, description,
                      category, cooldown, unless_active)
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


def journey_json_schema(template_names: list[str]) -> dict[str, Any]:
    """The JSON Schema of one journey, as `parse_journey` accepts it, for the OpenAPI document.

    Three rules cannot be said in JSON Schema and are checked on top of it (a 422 names them): the ids
    given to send steps differ, variant names differ, and `reuse_step` names an earlier send step.
    """
    template = {"type": "string", "enum": template_names}
    duration = {"type": "string", "minLength": 2, "pattern": DURATION_PATTERN}
    click = {"type": "object", "additionalProperties": False, "required": ["step", "link"],
             "properties": {"step": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS},
                            "link": {"type": "string"}}}
    trigger = {"type": "object", "additionalProperties": False, "required": ["trigger"], "properties": {
        "trigger": {"type": "string", "enum": [t.value for t in TriggerType]},
        "where": {"type": "object", "description": "trigger data field: a value or a list of accepted values"},
    }}
    percent = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT["percent"]}
    coupon = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["amount"], "properties": {
            "kind": {"const": "percent"}, "amount": percent, "valid": duration}},
        {"type": "object", "additionalProperties": False, "required": ["kind", "amount"], "properties": {
            "kind": {"const": "fixed"}, "valid": duration,
            "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_AMOUNT["fixed"]}}},
        {"type": "object", "additionalProperties": False, "required": ["reuse_step"], "properties": {
            "reuse_step": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS}, "valid": duration}},
    ]}
    offer = {"type": "object", "additionalProperties": False, "required": list(TIERS),
             "properties": {**{tier: percent for tier in TIERS}, "valid": duration}}
    # a send step names its template (or gives branches); the parser also takes neither when the template
    # <journey>_<send number> exists, which this schema cannot say
    send = {"type": "object", "additionalProperties": False, "not": {"required": ["coupon", "offer"]},
            "anyOf": [{"required": ["template"]}, {"required": ["branches"]}], "properties": {
        "id": {"type": "string", "pattern": "^" + _STEP_ID.pattern + "$"},
        "template": template, "if_clicked": click, "unless_clicked": click,
        "branches": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "required": ["template"],
            "properties": {"template": template, "if_clicked": click, "unless_clicked": click}}},
        "coupon": coupon, "offer": offer,
        "recommendations": {"type": "integer", "minimum": 1, "maximum": 12},
        "at": {"type": "string", "pattern": "^" + _AT.pattern + "$"},
        "on": {"type": "array", "minItems": 1, "uniqueItems": True,
               "items": {"type": "string", "enum": list(WEEKDAYS)}},
        "variants": {"type": "array", "minItems": 2, "uniqueItems": True, "items": {
            "type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                "name": {"type": "string"}, "weight": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT},
                "template": template, "subject": {"type": "string"}}}},
    }}
    send_step = {"type": "object", "additionalProperties": False, "required": ["send"], "properties": {"send": send}}
    wait_step = {"type": "object", "additionalProperties": False, "required": ["wait"],
                 "properties": {"wait": duration}}
    consent = {"type": "string", "enum": list(CONSENTS)}
    return {
        "type": "object", "additionalProperties": False, "required": ["name", "entry", "steps"],
        "properties": {
            "name": {"type": "string", "pattern": JOURNEY_NAME},
            "description": {"type": "string"},
            "entry": trigger,
            "exit": {"type": "array", "items": trigger},
            "steps": {"type": "array", "minItems": 1, "items": {"oneOf": [wait_step, send_step]},
                      "contains": send_step},
            "reentry": {"type": "string", "enum": list(REENTRY_RULES)},
            "reentry_key": {"type": "string", "minLength": 1},
            "reentry_cooldown": duration,
            "unless_active": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": JOURNEY_NAME}},
            "consent": {"oneOf": [consent, {"type": "array", "minItems": 1, "items": consent}]},
            "marketing": {"type": "boolean"},
            "category": {"type": "string", "enum": list(CATEGORIES)},
        },
        "if": {"required": ["reentry"], "properties": {"reentry": {"const": "once_per_key"}}},
        "then": {"required": ["reentry_key"]},
    }
