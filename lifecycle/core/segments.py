"""Segments: filters over customers, declared in YAML, checked, and compiled to one SQL condition.

A segment is `{name, description?, filter}`. A filter is a mapping of one or more conditions (several
keys: all of them must hold), or a combination: `all: [...]`, `any: [...]`, `not: {...}`. The
conditions (docs/segments.md):

    stage: [prospect, active]          consent: opted_in          locale: fr
    orders_count / total_spent / average_order_value: {gte: N, lte: N}
    last_order_within: 90d             last_order_before: 180d
    engaged_within: 30d                signed_up_within: 7d
    bought_product: [P1, P2]           viewed_product: {products: [P1], within: 30d}
    trait: {first_name: Ada}

Checking reports every problem with the path of its field (`filter.all[1].orders_count.gte`), never a
stack trace. lifecycle/db/segments.py compiles a checked filter to SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from lifecycle.core.durations import DURATION_PATTERN, parse_duration
from lifecycle.core.journeys import NAME_PATTERN
from lifecycle.core.rules import STAGES
from lifecycle.events.fields import WHITESPACE

# The traits a customer's profile keeps (lifecycle/core/rules.py PROFILE_TRAITS): the only ones a
# `trait` condition can match.
# texts in filters: PostgreSQL's text cannot hold NUL
NO_NUL_PATTERN = "^[^\\u0000]*$"
# and not blank: the whitespace str.strip() strips, spelled out as the events' patterns do (so that any
# regular expression dialect reads the pattern as the checks do)
TEXT_PATTERN = f"^[^\\u0000]*[^{WHITESPACE}\\u0000][^\\u0000]*$"
_TEXT = re.compile(TEXT_PATTERN)
SEGMENT_TRAITS = ("email", "first_name", "last_name", "locale", "timezone", "birthday")
CONSENTS = ("opted_in", "pending", "opted_out", "unknown")
RANGES = ("orders_count", "total_spent", "average_order_value")
DURATIONS = ("last_order_within", "last_order_before", "engaged_within", "signed_up_within")
PRODUCTS = ("bought_product", "viewed_product")
COMBINATIONS = ("all", "any", "not")
CONDITIONS = ("stage", "consent", "locale", *RANGES, *DURATIONS, *PRODUCTS, "trait")
MAX_DEPTH = 20  # combinations nested in one another
SEGMENT_NAME = re.compile(NAME_PATTERN)
_LOCALE = re.compile(r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")


@dataclass(frozen=True)
class SegmentProblem:
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class SegmentError(ValueError):
    """Every problem found in a segment; nothing of it is used."""

    def __init__(self, problems: list[SegmentProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# --- the filter as data ------------------------------------------------------------------------


@dataclass(frozen=True)
class All:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class AnyOf:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    part: Filter


@dataclass(frozen=True)
class OneOf:
    """`stage`, `consent` or `locale` among the values."""

    what: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Range:
    what: str  # orders_count | total_spent | average_order_value
    gte: float | None
    lte: float | None


@dataclass(frozen=True)
class Recency:
    what: str  # last_order_within | last_order_before | engaged_within | signed_up_within
    span: timedelta


@dataclass(frozen=True)
class Products:
    what: str  # bought_product | viewed_product
    ids: tuple[str, ...]
    within: timedelta | None


@dataclass(frozen=True)
class TraitIs:
    name: str
    value: str | None  # None: the customer has no such trait


Filter = All | AnyOf | Not | OneOf | Range | Recency | Products | TraitIs


# no condition: every customer (a preview without a segment)
EVERYONE: Filter = All(())


@dataclass(frozen=True)
class Segment:
    name: str
    filter: Filter
    description: str = ""


# --- checking ----------------------------------------------------------------------------------


@dataclass
class _Checker:
    problems: list[SegmentProblem] = field(default_factory=list)

    def fail(self, path: str, message: str) -> None:
        self.problems.append(SegmentProblem(path, message))

    def filter(self, value: Any, path: str, depth: int = 0) -> Filter | None:
        if depth > MAX_DEPTH:
            self.fail(path, f"combinations are nested more than {MAX_DEPTH} deep")
            return None
        if not isinstance(value, Mapping) or not value:
            self.fail(path, "must be a mapping of one or more conditions, e.g. {stage: [active]}"
                      f" (conditions: {', '.join(CONDITIONS)}; combinations: {', '.join(COMBINATIONS)})")
            return None
        parts: list[Filter] = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in CONDITIONS and key not in COMBINATIONS:
                self.fail(where, f"unknown condition; use one of {', '.join(CONDITIONS + COMBINATIONS)}")
                continue
            found = self.condition(str(key), item, where, depth)
            if found is not None:
                parts.append(found)
        if len(parts) != len(value):
            return None
        return parts[0] if len(parts) == 1 else All(tuple(parts))

    def condition(self, key: str, value: Any, path: str, depth: int) -> Filter | None:
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                self.fail(path, "must be a non-empty list of filters")
                return None
            parts = [self.filter(item, f"{path}[{n}]", depth + 1) for n, item in enumerate(value)]
            if any(p is None for p in parts):
                return None
            kept = tuple(p for p in parts if p is not None)
            return All(kept) if key == "all" else AnyOf(kept)
        if key == "not":
            inner = self.filter(value, path, depth + 1)
            return None if inner is None else Not(inner)
        if key in ("stage", "consent", "locale"):
            return self.one_of(key, value, path)
        if key in RANGES:
            return self.range(key, value, path)
        if key in DURATIONS:
            span = self.duration(value, path)
            return None if span is None else Recency(key, span)
        if key in PRODUCTS:
            return self.products(key, value, path)
        return self.trait(value, path)

    def strings(self, value: Any, path: str) -> tuple[str, ...] | None:
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            self.fail(path, "must be a non-empty text or a non-empty list of texts")
            return None
        if any("\x00" in v for v in values):
            self.fail(path, "a text cannot hold the NUL character")
            return None
        # the schema's own pattern (filter_json_schema), so that what it accepts is accepted here
        if not all(_TEXT.match(v) for v in values):
            self.fail(path, "must be a non-empty text or a non-empty list of texts")
            return None
        return tuple(v.strip() for v in values)

    def one_of(self, key: str, value: Any, path: str) -> Filter | None:
        values = self.strings(value, path)
        if values is None:
            return None
        if key == "stage":
            wrong = [v for v in values if v not in STAGES]
            if wrong:
                self.fail(path, f"{', '.join(map(repr, wrong))}: a stage is one of {', '.join(STAGES)}")
                return None
        if key == "consent":
            wrong = [v for v in values if v not in CONSENTS]
            if wrong:
                self.fail(path, f"{', '.join(map(repr, wrong))}: consent is one of {', '.join(CONSENTS)}")
                return None
        if key == "locale":
            wrong = [v for v in values if not _LOCALE.match(v)]
            if wrong:
                self.fail(path, f"{', '.join(map(repr, wrong))}: a locale is a language tag such as fr, en or fr-CA")
                return None
            values = tuple(normal_locale(v) for v in values)
        return OneOf(key, values)

    def range(self, key: str, value: Any, path: str) -> Filter | None:
        if not isinstance(value, Mapping) or not value:
            self.fail(path, "must be a mapping with gte, lte or both, e.g. {gte: 3}")
            return None
        bounds: dict[str, float] = {}
        for bound, number in value.items():
            if bound not in ("gte", "lte"):
                self.fail(f"{path}.{bound}", "unknown bound; use gte (at least) or lte (at most)")
            elif isinstance(number, bool) or not isinstance(number, int | float) or number != number:
                self.fail(f"{path}.{bound}", "must be a number")
            elif number < 0:
                self.fail(f"{path}.{bound}", "must not be negative")
            else:
                bounds[bound] = float(number)
        if len(bounds) != len(value):
            return None
        return Range(key, bounds.get("gte"), bounds.get("lte"))

    def duration(self, value: Any, path: str) -> timedelta | None:
        if not isinstance(value, str):
            self.fail(path, "must be a duration such as 90d, 12h or 1d12h")
            return None
        if not value.strip() or not re.match(DURATION_PATTERN, value.strip()):
            self.fail(path, f"{value!r} is not a duration: numbers of at most five digits with units d, h, m, s in"
                            " this order, such as 90d or 1d12h")
            return None
        return parse_duration(value)

    def products(self, key: str, value: Any, path: str) -> Filter | None:
        within: timedelta | None = None
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in ("products", "within")]
            for name in unknown:
                self.fail(f"{path}.{name}", "unknown field; use products and within")
            if "products" not in value:
                self.fail(f"{path}.products", "is required: the product ids")
                return None
            ids = self.strings(value["products"], f"{path}.products")
            if "within" in value:
                within = self.duration(value["within"], f"{path}.within")
                if within is None:
                    return None
            if unknown:
                return None
        else:
            ids = self.strings(value, path)
        return None if ids is None else Products(key, ids, within)

    def trait(self, value: Any, path: str) -> Filter | None:
        if not isinstance(value, Mapping) or not value:
            self.fail(path, "must be a mapping of trait names to values, e.g. {first_name: Ada}")
            return None
        parts: list[Filter] = []
        for name, expected in value.items():
            where = f"{path}.{name}"
            if name not in SEGMENT_TRAITS:
                self.fail(where, f"not a trait customers have; use one of {', '.join(SEGMENT_TRAITS)}")
            elif expected is not None and not isinstance(expected, str | int | float | bool):
                self.fail(where, "must be a text, a number, true, false or null (no such trait)")
            elif isinstance(expected, str) and "\x00" in expected:
                self.fail(where, "a text cannot hold the NUL character")
            else:
                parts.append(TraitIs(str(name), _trait_text(expected)))
        if len(parts) != len(value):
            return None
        return parts[0] if len(parts) == 1 else All(tuple(parts))


def _trait_text(value: str | int | float | bool | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def normal_locale(value: str) -> str:
    """`fr_CA`, `FR-ca` -> `fr-ca`: the form locales are compared in."""
    return value.strip().replace("_", "-").lower()


def parse_filter(value: Any, path: str = "filter") -> Filter:
    """A filter from its YAML/JSON value, or SegmentError with every problem."""
    checker = _Checker()
    found = checker.filter(value, path)
    if checker.problems or found is None:
        raise SegmentError(checker.problems or [SegmentProblem(path, "is not a filter")])
    return found


def parse_segment(value: Any, default_name: str | None = None) -> Segment:
    """A segment `{name, description?, filter}`; `default_name` (a file's stem) when it has no name."""
    checker = _Checker()
    if not isinstance(value, Mapping):
        raise SegmentError([SegmentProblem("", "a segment is a mapping with name, description and filter")])
    for key in value:
        if key not in ("name", "description", "filter"):
            checker.fail(str(key), "unknown field; a segment has name, description and filter")
    name = value.get("name", default_name)
    if not isinstance(name, str) or not SEGMENT_NAME.match(name):
        checker.fail("name", "is required: letters, digits, _ . - (at most 128), starting with a letter or digit")
    elif default_name is not None and name != default_name:
        checker.fail("name", f"{name!r} differs from the file's name {default_name!r}")
    description = value.get("description", "")
    if not isinstance(description, str):
        checker.fail("description", "must be text")
    found: Filter | None = None
    if "filter" not in value:
        checker.fail("filter", "is required")
    else:
        found = checker.filter(value["filter"], "filter")
    if checker.problems or found is None:
        raise SegmentError(checker.problems)
    return Segment(str(name), found, str(description))




def filter_json_schema(ref: str = "#/components/schemas/SegmentFilter") -> dict[str, Any]:
    """The JSON Schema of a filter as `parse_filter` takes it (`ref`: where this schema itself is, for
    the combinations). One rule cannot be said in it: combinations nest at most MAX_DEPTH deep. (A
    range whose gte is above its lte is valid: it matches nobody.)"""

    def one_or_many(item: dict[str, Any]) -> dict[str, Any]:
        return {"oneOf": [item, {"type": "array", "minItems": 1, "items": item}]}

    text = {"type": "string", "pattern": TEXT_PATTERN}
    duration = {"type": "string", "minLength": 2, "pattern": DURATION_PATTERN}
    bound = {"type": "number", "minimum": 0}
    range_ = {"type": "object", "additionalProperties": False, "minProperties": 1,
              "properties": {"gte": bound, "lte": bound}}
    ids = one_or_many(text)
    products = {"oneOf": [ids["oneOf"][0], ids["oneOf"][1], {
        "type": "object", "additionalProperties": False, "required": ["products"],
        "properties": {"products": ids, "within": duration}}]}
    properties: dict[str, Any] = {
        "stage": one_or_many({"type": "string", "enum": list(STAGES)}),
        "consent": one_or_many({"type": "string", "enum": list(CONSENTS)}),
        "locale": one_or_many({"type": "string", "pattern": _LOCALE.pattern}),
        **{name: range_ for name in RANGES},
        **{name: duration for name in DURATIONS},
        **{name: products for name in PRODUCTS},
        "trait": {"type": "object", "additionalProperties": False, "minProperties": 1,
                  "properties": {name: {"anyOf": [{"type": "string", "pattern": NO_NUL_PATTERN},
                                                  {"type": ["number", "boolean", "null"]}]}
                                 for name in SEGMENT_TRAITS}},
        "all": {"type": "array", "minItems": 1, "items": {"$ref": ref}},
        "any": {"type": "array", "minItems": 1, "items": {"$ref": ref}},
        "not": {"$ref": ref},
    }
    return {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": properties,
            "description": "A segment's filter (docs/segments.md). Checked on top of this schema: a range's gte is"
                           f" at most its lte, and combinations nest at most {MAX_DEPTH} deep."}
