"""Campaign definitions: their checks (each problem with its field) and their times (local, DST, passed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from lifecycle.core.campaigns import (
    CampaignError,
    SendAt,
    campaign_of,
    due_for,
    parse_campaign,
    parse_send_at,
    throttled,
)
from lifecycle.core.journeys import CouponSpec, Variant
from lifecycle.core.segments import OneOf

PARIS, TOKYO, NEW_YORK = ZoneInfo("Europe/Paris"), ZoneInfo("Asia/Tokyo"), ZoneInfo("America/New_York")
BASE: dict[str, Any] = {"name": "winter_sale", "category": "offers", "segment": {"stage": ["active"]},
                        "template": "winter_sales", "send_at": "2027-01-07T10:00:00"}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_a_campaign_with_every_field() -> None:
    campaign = parse_campaign({**BASE, "description": "Soldes", "max_per_minute": 600, "if_passed": "skip",
                               "variants": [{"name": "a"}, {"name": "b", "weight": 3, "subject": "Hi {{ x }}"}]},
                              {"winter_sales"})
    assert campaign.segment == OneOf("stage", ("active",))
    assert campaign.send_at == SendAt(local=datetime(2027, 1, 7, 10, 0))
    assert campaign.variants == (Variant("a", 1, "winter_sales"), Variant("b", 3, "winter_sales", "Hi {{ x }}"))
    assert (campaign.max_per_minute, campaign.if_passed, campaign.description) == (600, "skip", "Soldes")
    assert parse_campaign({**BASE, "segment": "vip"}).segment == "vip"


def test_a_campaign_runs_as_a_journey_of_one_marketing_send_step() -> None:
    campaign = parse_campaign({**BASE, "coupon": {"kind": "fixed", "amount": 10, "valid": "7d"},
                               "recommendations": 3, "variants": [{"name": "a"}, {"name": "b"}]}, {"winter_sales"})
    journey = campaign.journey()
    assert journey.name == "campaign:winter_sale" and campaign_of(journey.name) == "winter_sale"
    assert campaign_of("abandoned_cart") is None
    assert journey.entry is None and journey.marketing and journey.consent == ("opted_in",)
    assert journey.category == "offers"
    step = journey.send_step(0)
    assert (step.template, step.number, step.id, step.recommendations) == ("winter_sales", 1, "campaign", 3)
    assert step.coupon == CouponSpec(kind="fixed", amount=10.0, valid=timedelta(days=7))
    assert [v.name for v in step.variants] == ["a", "b"]
    assert journey.first_send(utc(2027, 1, 7)) == (0, utc(2027, 1, 7))


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"category": "promos"}, "category", "one of cart_reminders, offers, news"),
    ({"segment": {"stage": ["nobody"]}}, "segment.stage", "a stage is one of"),
    ({"segment": "not a name!"}, "segment", "a segment's name"),
    ({"template": "nope"}, "template", "no template named 'nope'"),
    ({"send_at": "next friday"}, "send_at", "is not a date-time"),
    ({"send_at": "2027-02-30T10:00:00"}, "send_at", "is not a date-time"),
    ({"send_at": "2100-02-29T10:00:00"}, "send_at", "is not a date-time"),
    ({"max_per_minute": 0}, "max_per_minute", "from 1 to 1000000"),
    ({"if_passed": "later"}, "if_passed", "send (at once"),
    ({"variants": [{"name": "a"}]}, "variants", "two or more"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "variants", "variant names must differ"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"max_per_minute": None}, "max_per_minute", "from 1 to 1000000"),
    ({"send_at": " 2027-01-07T10:00:00"}, "send_at", "is not a date-time"),
    ({"send_at": "1969-12-31T10:00:00"}, "send_at", "is not a date-time"),
    ({"coupon": {"kind": {}, "amount": 5}}, "coupon.kind", "percent or fixed"),
    ({"coupon": {"amount": 150}}, "coupon.amount", "at most 100 for a percent coupon"),
    ({"coupon": {"amount": 5, "valid": "soon"}}, "coupon.valid", "a duration"),
    ({"coupon": {"amount": 5, "code": "X"}}, "coupon.code", "unknown field"),
    ({"recommendations": 13}, "recommendations", "0 to 12"),
    ({"description": "a\x00b"}, "description", "without the NUL character"),
    ({"variants": [{"name": "a", "subject": "x\x00"}, {"name": "b"}]}, "variants[0].subject", "NUL"),
    ({"segment": {"bought_product": ["p\x00"]}}, "segment.bought_product", "NUL character"),
    ({"variants": [{"name": "a", "template": None}, {"name": "b"}]}, "variants[0].template", "no template"),
])
def test_problems_name_their_field(change: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(CampaignError) as caught:
        parse_campaign({**BASE, **change}, {"winter_sales"})
    assert any(p.field == field and message in p.message for p in caught.value.problems), caught.value.problems


def test_every_missing_field_is_named() -> None:
    with pytest.raises(CampaignError) as caught:
        parse_campaign({})
    assert [p.field for p in caught.value.problems] == ["name", "category", "segment", "template", "send_at"]


def test_send_at_is_an_instant_or_a_local_time() -> None:
    assert parse_send_at("2027-01-07T09:00:00Z") == SendAt(instant=utc(2027, 1, 7, 9))
    assert parse_send_at("2027-01-07T10:00:00+01:00") == SendAt(instant=utc(2027, 1, 7, 9))
    assert parse_send_at("2027-01-07T10:00:00") == SendAt(local=datetime(2027, 1, 7, 10))


def test_local_send_times_per_zone_and_across_dst() -> None:
    local = SendAt(local=datetime(2027, 1, 7, 10, 0))
    assert local.moment_in(PARIS) == utc(2027, 1, 7, 9)
    assert local.moment_in(TOKYO) == utc(2027, 1, 7, 1)
    assert local.moment_in(NEW_YORK) == utc(2027, 1, 7, 15)
    summer = SendAt(local=datetime(2027, 7, 7, 10, 0))
    assert summer.moment_in(PARIS) == utc(2027, 7, 7, 8)  # summer time: UTC+2
    # the campaign starts when the first zone on Earth (UTC+14) reaches the moment
    assert local.earliest() == utc(2027, 1, 6, 20)
    instant = SendAt(instant=utc(2027, 1, 7, 9))
    assert instant.moment_in(TOKYO) == instant.earliest() == utc(2027, 1, 7, 9)


def test_a_local_moment_already_passed_goes_at_once_or_is_skipped() -> None:
    local = SendAt(local=datetime(2027, 1, 7, 10, 0))
    started = utc(2027, 1, 7, 12)  # past 10:00 in Paris and Tokyo, not yet in New York
    assert due_for(local, PARIS, started, "send") == started
    assert due_for(local, PARIS, started, "skip") is None
    assert due_for(local, NEW_YORK, started, "skip") == utc(2027, 1, 7, 15)


def test_throttling_spreads_the_sends_evenly_from_the_start() -> None:
    start = utc(2027, 1, 7, 9)
    times = throttled([start] * 91, 60)
    assert times[0] == start
    assert times[90] == datetime(2027, 1, 7, 9, 1, 30, tzinfo=UTC)  # the 91st: 1.5 min in
    assert throttled([start] * 3, None) == [start] * 3


def test_throttling_lets_a_later_due_time_reset_the_spread() -> None:
    # three at 09:00, two at 15:00 (another zone's local moment): the second group starts at 15:00
    dues = [utc(2027, 1, 7, 9)] * 3 + [utc(2027, 1, 7, 15)] * 2
    times = throttled(dues, 2)
    assert times == [utc(2027, 1, 7, 9), datetime(2027, 1, 7, 9, 0, 30, tzinfo=UTC), utc(2027, 1, 7, 9, 1),
                     utc(2027, 1, 7, 15), datetime(2027, 1, 7, 15, 0, 30, tzinfo=UTC)]
