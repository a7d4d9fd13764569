"""Campaigns: one email to a segment at a chosen moment (pure: the definition, its checks, its times).

A campaign is `{name, category, segment, template, variants?, send_at, max_per_minute?, if_passed?,
description?}`. `segment` is a filter written inline (lifecycle/core/segments.py) or a segment's name.
`send_at` is an instant with an offset (`2027-01-07T09:00:00Z`: everyone then) or a local date-time
without one (`2027-01-07T10:00:00`: 10:00 in each customer's own zone, else the shop's), DST-correct as
journeys' `at` is. When the campaign starts, a local moment already past in some zones is sent at
once there (`if_passed: send`, the default) or not at all (`if_passed: skip`).

Checking reports every problem with its field, as segments do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from lifecycle.core.journeys import MAX_WEIGHT, NAME_PATTERN, Variant, local_moment
from lifecycle.core.segments import SEGMENT_NAME, Filter, SegmentError, SegmentProblem, parse_filter
from lifecycle.events.kinds import EMAIL_CATEGORIES

CAMPAIGN_NAME = re.compile(NAME_PATTERN)
IF_PASSED = ("send", "skip")
FIELDS = ("name", "description", "category", "segment", "template", "variants", "send_at", "max_per_minute",
          "if_passed")
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


def due_for(send_at: SendAt, zone: ZoneInfo, started_at: datetime, if_passed: IfPassed) -> datetime | None:
    """A customer's due time for a campaign started at `started_at`, or None (their moment passed and
    the campaign skips them)."""
    moment = send_at.moment_in(zone)
    if moment >= started_at:
        return moment
    return started_at if if_passed == "send" else None


def throttled(due: datetime, position: int, started_at: datetime, max_per_minute: int | None) -> datetime:
    """The due time of the `position`-th send (from 0) of a campaign sending at most `max_per_minute`:
    never before its turn in an even spread from the start."""
    if not max_per_minute:
        return due
    return max(due, started_at + timedelta(minutes=position / max_per_minute))


class CampaignError(ValueError):
    """Every problem found in a campaign; nothing of it is used."""

    def __init__(self, problems: list[SegmentProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


def parse_send_at(value: Any) -> SendAt | str:
    """A SendAt, or the problem with `value`."""
    if isinstance(value, datetime):  # a YAML loader that reads timestamps
        value = value.isoformat()
    if not isinstance(value, str):
        return "a date-time such as 2027-01-07T10:00:00 (local to each customer) or 2027-01-07T09:00:00Z"
    text = value.strip()
    if not re.match(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}", text):
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
    if max_per_minute is not None and (isinstance(max_per_minute, bool) or not isinstance(max_per_minute, int)
                                       or not 1 <= max_per_minute <= 1_000_000):
        fail("max_per_minute", "a whole number of emails a minute, from 1 to 1000000")
    if_passed = value.get("if_passed", "send")
    if if_passed not in IF_PASSED:
        fail("if_passed", "send (at once, where the local moment has passed when the campaign starts) or skip")
    description = value.get("description", "")
    if not isinstance(description, str):
        fail("description", "must be text")
    if problems:
        raise CampaignError(problems)
    assert isinstance(name, str) and isinstance(category, str) and isinstance(template, str)
    assert segment is not None and send_at is not None
    return Campaign(name, category, segment, template, send_at, variants, max_per_minute,
                    "skip" if if_passed == "skip" else "send", description)


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
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
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
        if template is not None and not _known(template, names):
            fail(f"{where}.template", f"no template named {template!r}")
            continue
        subject = item.get("subject")
        if subject is not None and not isinstance(subject, str):
            fail(f"{where}.subject", "must be text")
            continue
        if not unknown:
            found.append(Variant(item["name"], weight, template or default_template, subject))
    if len({v.name for v in found}) != len(found):
        fail("variants", "variant names must differ")
    return tuple(found)
