"""Campaigns: one email to a segment at a chosen moment (pure: the definition, its checks, its times).

A campaign is `{name, category, segment, template, variants?, send_at, max_per_minute?, if_passed?,
coupon?, recommendations?, description?}`. `segment` is a filter written inline (lifecycle/core/segments.py)
or a segment's name.
`send_at` is an instant with an offset (`2027-01-07T09:00:00Z`: everyone then) or a local date-time
without one (`2027-01-07T10:00:00`: 10:00 in each customer's own zone, else the shop's), DST-correct as
journeys' `at` is. When the campaign starts, a local moment already past in some zones is sent at
once there (`if_passed: send`, the default) or not at all (`if_passed: skip`).

Checking reports every problem with its field, as segments do.

Once started, a campaign runs as a journey of one send step named `campaign:<name>` (a colon no
journey name can have), so the dispatcher's claim path sends it like any journey step: frequency cap,
quiet hours, the check before SMTP, once per customer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from lifecycle.core.durations import DURATION_PATTERN, parse_duration
from lifecycle.core.journeys import (
    MAX_WEIGHT,
    NAME_PATTERN,
    CouponSpec,
    Journey,
    SendStep,
    Variant,
    local_moment,
)
from lifecycle.core.segments import (
    NO_NUL_PATTERN,
    SEGMENT_NAME,
    Filter,
    SegmentError,
    SegmentProblem,
    parse_filter,
)
from lifecycle.events.kinds import EMAIL_CATEGORIES

CAMPAIGN_NAME = re.compile(NAME_PATTERN)
IF_PASSED = ("send", "skip")
FIELDS = ("name", "description", "category", "segment", "template", "variants", "send_at", "max_per_minute",
          "if_passed", "coupon", "recommendations")
CAMPAIGN_PREFIX = "campaign:"  # a campaign's journey is `campaign:<name>`
CAMPAIGN_STEP = "campaign"  # the id of its one send step
MAX_COUPON = {"percent": 100, "fixed": 1_000_000_000}
MAX_RECOMMENDATIONS = 12
# The earliest wall clock on Earth is UTC+14 (Kiribati): a local send_at is nowhere earlier than this
# before the same reading in UTC.
EARLIEST_OFFSET = timedelta(hours=14)
IfPassed = Literal["send", "skip"]


@dataclass(frozen=True)
class SendAt:
    """An instant (`instant`), or a wall-clock date-time each customer's zone reads (`local`, naive)."""

    instant: datetime | None = None
    local: datetime | None = None

    def moment_in(self, zone: ZoneInfo) -> datetime:
        """When this is, for a customer in `zone` (an aware instant)."""
        if self.instant is not None:
            return self.instant
        assert self.local is not None
        return local_moment(self.local.date(), self.local.time(), zone)

    def earliest(self) -> datetime:
        """The first moment any customer's send can fall due: when the campaign starts."""
        if self.instant is not None:
            return self.instant
        assert self.local is not None
        return local_moment(self.local.date(), self.local.time(), ZoneInfo("UTC")) - EARLIEST_OFFSET


@dataclass(frozen=True)
class Campaign:
    name: str
    category: str
    segment: Filter | str  # a filter, or the name of a segment
    template: str
    send_at: SendAt
    variants: tuple[Variant, ...] = ()
    max_per_minute: int | None = None
    if_passed: IfPassed = "send"
    description: str = ""
    coupon: CouponSpec | None = None
    recommendations: int = 0

    @property
    def journey_name(self) -> str:
        return CAMPAIGN_PREFIX + self.name

    def journey(self) -> Journey:
        """The journey the campaign runs as: one marketing send step, started by the campaign only."""
        step = SendStep(self.template, 1, coupon=self.coupon, recommendations=self.recommendations,
                        variants=self.variants, id=CAMPAIGN_STEP)
        return Journey(self.journey_name, None, (step,), reentry="once", consent=("opted_in",), marketing=True,
                       description=self.description, category=self.category)


def campaign_of(journey: str) -> str | None:
    """The campaign a journey name is the run of, or None for a journey."""
    return journey[len(CAMPAIGN_PREFIX):] if journey.startswith(CAMPAIGN_PREFIX) else None


def due_for(send_at: SendAt, zone: ZoneInfo, started_at: datetime, if_passed: IfPassed) -> datetime | None:
    """A customer's due time for a campaign started at `started_at`, or None (their moment passed and
    the campaign skips them)."""
    moment = send_at.moment_in(zone)
    if moment >= started_at:
        return moment
    return started_at if if_passed == "send" else None


def throttled(dues: list[datetime], max_per_minute: int | None) -> list[datetime]:
    """The send times of sends due at `dues` (sorted), at most `max_per_minute`: each at its due time, or
    one interval after the previous send if that is later. The database computes the same in one pass
    (lifecycle/campaign_store.py): t_i = i * interval + max over j <= i of (due_j - j * interval)."""
    if not max_per_minute:
        return list(dues)
    interval = timedelta(minutes=1) / max_per_minute
    times: list[datetime] = []
    for due in dues:
        times.append(due if not times else max(due, times[-1] + interval))
    return times


class CampaignError(ValueError):
    """Every problem found in a campaign; nothing of it is used."""

    def __init__(self, problems: list[SegmentProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# a date-time as send_at takes it: a day the calendar has, from 1970 to 2999, to the minute at least,
# with an offset or none (the pattern says it all, so that what it accepts is a date-time)
_LEAP_YEAR = r"(19(7[26]|8[048]|9[26])|2[0-9](0[48]|[2468][048]|[13579][26])|2[048]00)"
_DAY = (r"((19[7-9][0-9]|2[0-9]{3})-((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
        r"|02-(0[1-9]|1[0-9]|2[0-8]))|" + _LEAP_YEAR + r"-02-29)")
SEND_AT_PATTERN = ("^" + _DAY + r"[T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
                   r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?$")


def campaign_json_schema(template_names: list[str], segment_names: list[str] | None = None,
                         filter_ref: str = "#/components/schemas/SegmentFilter") -> dict[str, Any]:
    """The JSON Schema of one campaign as `parse_campaign` takes it, for the OpenAPI document; a named
    segment is one of `segment_names` (those there are when the API starts) when given. Checked on top
    of it (a 422 names them): variant names differ, the date exists, a segment added since exists."""
    template = {"type": "string", "enum": template_names}
    duration = {"type": "string", "minLength": 2, "pattern": DURATION_PATTERN}
    named: dict[str, Any] = {"type": "string", "enum": segment_names} if segment_names is not None else \
        {"type": "string", "pattern": SEGMENT_NAME.pattern}
    return {
        "type": "object", "additionalProperties": False,
        "required": ["name", "category", "segment", "template", "send_at"],
        "properties": {
            "name": {"type": "string", "pattern": NAME_PATTERN},
            "description": {"type": "string", "pattern": NO_NUL_PATTERN},
            "category": {"type": "string", "enum": list(EMAIL_CATEGORIES)},
            "segment": {"oneOf": [named, {"$ref": filter_ref}]},
            "template": template,
            "variants": {"type": "array", "minItems": 2, "uniqueItems": True, "items": {
                "type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                    "name": {"type": "string", "minLength": 1, "pattern": NO_NUL_PATTERN},
                    "weight": {"type": "integer", "minimum": 1, "maximum": MAX_WEIGHT},
                    "template": template, "subject": {"type": "string", "pattern": NO_NUL_PATTERN}}}},
            "send_at": {"type": "string", "pattern": SEND_AT_PATTERN,
                        "description": "without an offset: that wall-clock time in each customer's zone"},
            "max_per_minute": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
            "if_passed": {"type": "string", "enum": list(IF_PASSED)},
            "coupon": {"oneOf": [
                {"type": "object", "additionalProperties": False, "required": ["amount"], "properties": {
                    "kind": {"const": "percent"}, "valid": duration,
                    "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_COUPON["percent"]}}},
                {"type": "object", "additionalProperties": False, "required": ["kind", "amount"], "properties": {
                    "kind": {"const": "fixed"}, "valid": duration,
                    "amount": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_COUPON["fixed"]}}},
            ]},
            "recommendations": {"type": "integer", "minimum": 0, "maximum": MAX_RECOMMENDATIONS},
        },
    }


def parse_send_at(value: Any) -> SendAt | str:
    """A SendAt, or the problem with `value`."""
    if isinstance(value, datetime):  # a YAML loader that reads timestamps
        value = value.isoformat()
    if not isinstance(value, str):
        return "a date-time such as 2027-01-07T10:00:00 (local to each customer) or 2027-01-07T09:00:00Z"
    text = value
    if not re.match(SEND_AT_PATTERN, text):
        return f"{value!r} is not a date-time: write 2027-01-07T10:00:00 (each customer's local time) or" \
               " 2027-01-07T09:00:00Z (one instant for all)"
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        return f"{value!r} is not a valid date-time"
    if moment.tzinfo is None:
        return SendAt(local=moment)
    return SendAt(instant=moment)


def parse_campaign(value: Any, template_names: set[str] | None = None) -> Campaign:
    """A campaign from its YAML/JSON value, or CampaignError with every problem. `template_names`: the
    templates there are (None: not checked here)."""
    problems: list[SegmentProblem] = []

    def fail(where: str, message: str) -> None:
        problems.append(SegmentProblem(where, message))

    if not isinstance(value, Mapping):
        raise CampaignError([SegmentProblem("", "a campaign is a mapping: name, category, segment, template,"
                                                " send_at and the options")])
    for key in value:
        if key not in FIELDS:
            fail(str(key), f"unknown field; a campaign has {', '.join(FIELDS)}")
    for required in ("name", "category", "segment", "template", "send_at"):
        if required not in value:
            fail(required, "is required")
    name = value.get("name")
    if "name" in value and (not isinstance(name, str) or not CAMPAIGN_NAME.match(name)):
        fail("name", "letters, digits, _ . - (at most 128), starting with a letter or digit")
    category = value.get("category")
    if "category" in value and category not in EMAIL_CATEGORIES:
        fail("category", f"one of {', '.join(EMAIL_CATEGORIES)}: what a customer can leave on the preference page")
    segment: Filter | str | None = None
    raw_segment = value.get("segment")
    if isinstance(raw_segment, str):
        if SEGMENT_NAME.match(raw_segment):
            segment = raw_segment
        else:
            fail("segment", "a segment's name, or a filter written inline")
    elif "segment" in value:
        try:
            segment = parse_filter(raw_segment, "segment")
        except SegmentError as exc:
            problems.extend(exc.problems)
    template = value.get("template")
    if "template" in value and not _known(template, template_names):
        fail("template", f"no template named {template!r}" if isinstance(template, str) else "a template's name")
    variants = _variants(value.get("variants"), template_names, fail, template if isinstance(template, str) else "") \
        if "variants" in value else ()
    send_at: SendAt | None = None
    if "send_at" in value:
        found = parse_send_at(value["send_at"])
        if isinstance(found, str):
            fail("send_at", found)
        else:
            send_at = found
    max_per_minute = value.get("max_per_minute")
    if "max_per_minute" in value and (isinstance(max_per_minute, bool) or not isinstance(max_per_minute, int)
                                      or not 1 <= max_per_minute <= 1_000_000):
        fail("max_per_minute", "a whole number of emails a minute, from 1 to 1000000")
    if_passed = value.get("if_passed", "send")
    if if_passed not in IF_PASSED:
        fail("if_passed", "send (at once, where the local moment has passed when the campaign starts) or skip")
    description = value.get("description", "")
    if not isinstance(description, str) or "\x00" in description:
        fail("description", "must be text (without the NUL character)")
    coupon = _coupon(value["coupon"], fail) if "coupon" in value else None
    recommendations = value.get("recommendations", 0)
    if isinstance(recommendations, bool) or not isinstance(recommendations, int) \
            or not 0 <= recommendations <= MAX_RECOMMENDATIONS:
        fail("recommendations", f"how many products to recommend: 0 to {MAX_RECOMMENDATIONS}")
    if problems:
        raise CampaignError(problems)
    assert isinstance(name, str) and isinstance(category, str) and isinstance(template, str)
    assert segment is not None and send_at is not None
    return Campaign(name, category, segment, template, send_at, variants, max_per_minute,
                    "skip" if if_passed == "skip" else "send", description, coupon, recommendations)


def _coupon(raw: Any, fail: Callable[[str, str], None]) -> CouponSpec | None:
    """A unique code per customer, as a journey step's coupon: {kind, amount, valid}."""
    if not isinstance(raw, Mapping):
        fail("coupon", "{kind: percent|fixed, amount, valid: <duration>}")
        return None
    for key in raw:
        if key not in ("kind", "amount", "valid"):
            fail(f"coupon.{key}", "unknown field; a coupon has kind, amount and valid")
    kind, amount, valid = raw.get("kind", "percent"), raw.get("amount"), raw.get("valid", "3d")
    if not isinstance(kind, str) or kind not in MAX_COUPON:
        fail("coupon.kind", "percent or fixed")
        return None
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 < amount <= MAX_COUPON[kind]:
        fail("coupon.amount", f"over 0 and at most {MAX_COUPON[kind]:g} for a {kind} coupon")
        return None
    if not isinstance(valid, str) or len(valid) < 2 or not re.fullmatch(DURATION_PATTERN.strip("^$"), valid):
        fail("coupon.valid", f"a duration such as 7d or 36h, not {valid!r}")
        return None
    return CouponSpec(kind=str(kind), amount=float(amount), valid=parse_duration(valid))


def _known(template: Any, names: set[str] | None) -> bool:
    return isinstance(template, str) and bool(template) and (names is None or template in names)


def _variants(raw: Any, names: set[str] | None, fail: Callable[[str, str], None],
              default_template: str) -> tuple[Variant, ...]:
    """The A/B variants; one without a template uses the campaign's."""
    if not isinstance(raw, list) or len(raw) < 2:
        fail("variants", "two or more {name, weight?, template?, subject?}")
        return ()
    found: list[Variant] = []
    for index, item in enumerate(raw):
        where = f"variants[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"] \
                or "\x00" in item["name"]:
            fail(where, "a mapping with a name, and a weight, a template or a subject")
            continue
        unknown = [k for k in item if k not in ("name", "weight", "template", "subject")]
        for key in unknown:
            fail(f"{where}.{key}", "unknown field; a variant has name, weight, template and subject")
        weight = item.get("weight", 1)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            fail(f"{where}.weight", f"a whole number from 1 to {MAX_WEIGHT}")
            continue
        template = item.get("template")
        if "template" in item and not _known(template, names):
            fail(f"{where}.template", f"no template named {template!r}")
            continue
        subject = item.get("subject")
        if "subject" in item and (not isinstance(subject, str) or "\x00" in subject):
            fail(f"{where}.subject", "must be text (without the NUL character)")
            continue
        if not unknown:
            found.append(Variant(item["name"], weight, template or default_template, subject))
    if len({v.name for v in found}) != len(found):
        fail("variants", "variant names must differ")
    return tuple(found)
