"""Local send times of journey steps (`at`, `on`): the next allowed local moment, DST included."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from lifecycle.core.journeys import (
    Defer,
    Journey,
    Recipient,
    Run,
    SendNow,
    SendPolicy,
    SendStep,
    TriggerMatch,
    decide_step,
    send_window_start,
    zone_of,
)
from lifecycle.core.triggers import TriggerType
from lifecycle.journey_files import parse_journey
from lifecycle.templates import Templates

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_at_goes_out_at_the_next_local_time_of_day() -> None:
    # 2026-03-02 is a Monday; Paris is UTC+1 in winter
    assert send_window_start(utc(2026, 3, 2, 8, 0), PARIS, time(10, 0), ()) == utc(2026, 3, 2, 9, 0)
    assert send_window_start(utc(2026, 3, 2, 9, 0), PARIS, time(10, 0), ()) == utc(2026, 3, 2, 9, 0)  # exactly then
    assert send_window_start(utc(2026, 3, 2, 9, 1), PARIS, time(10, 0), ()) == utc(2026, 3, 3, 9, 0)  # tomorrow


def test_on_alone_waits_for_the_start_of_the_next_allowed_day() -> None:
    saturday = utc(2026, 3, 7, 15, 0)
    assert send_window_start(saturday, PARIS, None, (MON, TUE, WED, THU, FRI)) == utc(2026, 3, 8, 23, 0)  # Mon 00:00
    assert send_window_start(utc(2026, 3, 6, 15, 0), PARIS, None, (FRI,)) == utc(2026, 3, 6, 15, 0)  # a Friday: now


def test_at_and_on_together() -> None:
    friday_noon = utc(2026, 3, 6, 11, 0)  # 12:00 in Paris, past 10:00: next allowed day is Monday
    assert send_window_start(friday_noon, PARIS, time(10, 0), (MON, TUE, WED, THU, FRI)) == utc(2026, 3, 9, 9, 0)
    assert send_window_start(friday_noon, PARIS, time(10, 0), (FRI,)) == utc(2026, 3, 13, 9, 0)  # a week later


def test_local_time_across_daylight_saving_changes() -> None:
    # Paris moves to UTC+2 on Sunday 2026-03-29: 10:00 local is 09:00 UTC before and 08:00 UTC after
    assert send_window_start(utc(2026, 3, 28, 12, 0), PARIS, time(10, 0), ()) == utc(2026, 3, 29, 8, 0)
    # New York falls back on 2026-11-01: 10:00 local is 14:00 UTC before and 15:00 UTC after
    assert send_window_start(utc(2026, 10, 31, 16, 0), NEW_YORK, time(10, 0), ()) == utc(2026, 11, 1, 15, 0)
    # a time the clocks skip (02:30 on 2026-03-29 in Paris) goes out as far after the change: 03:30 local
    assert send_window_start(utc(2026, 3, 28, 12, 0), PARIS, time(2, 30), ()) == utc(2026, 3, 29, 1, 30)
    # a repeated time (01:30 on 2026-11-01 in New York) goes out at its first occurrence (EDT)
    assert send_window_start(utc(2026, 11, 1, 4, 0), NEW_YORK, time(1, 30), ()) == utc(2026, 11, 1, 5, 30)
    # weekdays are local: Sunday 23:30 in New York is Monday in UTC, and still Sunday for `on`
    assert send_window_start(utc(2026, 3, 9, 3, 30), NEW_YORK, None, (MON,)) == utc(2026, 3, 9, 4, 0)


def test_the_customers_zone_else_the_shops() -> None:
    policy = SendPolicy(timezone="America/New_York")
    assert zone_of("Europe/Paris", policy) == PARIS
    assert zone_of(None, policy) == NEW_YORK
    assert zone_of("Not/AZone", policy) == NEW_YORK


def _journey(step: SendStep) -> tuple[Journey, Run]:
    journey = Journey("windowed", TriggerMatch(TriggerType.SIGNED_UP), (step,))
    return journey, Run(1, "windowed", "active", "k", 0, utc(2026, 3, 2, 8, 0), utc(2026, 3, 2, 8, 0))


def test_a_due_step_outside_its_window_is_deferred_then_sent_at_its_moment() -> None:
    journey, run = _journey(SendStep("prospect_welcome_1", 1, at=time(10, 0), on=(MON, TUE, WED, THU, FRI)))
    paris = Recipient("a@example.com", "opted_in", None, None, None, (), "Europe/Paris")
    decided = decide_step(journey, run, paris, "c1", utc(2026, 3, 2, 8, 0), SendPolicy())
    assert decided == Defer(journey.send_step(0), utc(2026, 3, 2, 9, 0))
    # claimed a little after the moment it was deferred to: it goes (the due time counts, not the claim's)
    later = replace(run, due_at=utc(2026, 3, 2, 9, 0))
    assert isinstance(decide_step(journey, later, paris, "c1", utc(2026, 3, 2, 9, 0, 1), SendPolicy()), SendNow)
    # no zone of their own: the shop's
    nowhere = Recipient("a@example.com", "opted_in", None, None, None)
    decided = decide_step(journey, run, nowhere, "c1", utc(2026, 3, 2, 8, 0), SendPolicy(timezone="America/New_York"))
    assert decided == Defer(journey.send_step(0), utc(2026, 3, 2, 15, 0))


JOURNEY = """name: windowed
entry: {trigger: signed_up}
steps:
  - send: {template: prospect_welcome_1, %s}
"""


def test_journey_files_take_at_and_on() -> None:
    journey, problems = parse_journey(Path("w.yaml"), JOURNEY % 'at: "10:00", on: [fri, mon]', Templates())
    assert problems == [] and journey is not None
    assert (journey.send_step(0).at, journey.send_step(0).on) == (time(10, 0), (MON, FRI))


@pytest.mark.parametrize(("window", "message"), [
    ('at: "24:00"', "a local time of day from 00:00 to 23:59"),
    ("at: 10:00", "quote it"),
    ("on: []", "a step with no day to go out on would never be sent"),
    ("on: [monday]", "unknown weekday(s) ['monday']"),
    ("on: [mon, mon]", "a weekday is given twice"),
])
def test_impossible_windows_are_rejected(window: str, message: str) -> None:
    _, problems = parse_journey(Path("w.yaml"), JOURNEY % window, Templates())
    assert any(message in p.message for p in problems), problems


def test_on_is_a_key_in_scenarios_segments_and_campaigns() -> None:
    from lifecycle.yamlio import load_plain

    assert load_plain("on: [mon, fri]\nyes: no\nflag: true\nsend_at: 2027-01-07T10:00:00\n") == {
        "on": ["mon", "fri"], "yes": "no", "flag": True, "send_at": "2027-01-07T10:00:00"}
