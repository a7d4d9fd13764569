"""The journey engine and the shipped journeys, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from lifecycle.core.journeys import (
    Defer,
    ExitRun,
    Journey,
    Recipient,
    RecordClick,
    Run,
    SendNow,
    SendPolicy,
    Skip,
    StartRun,
    assign_variant,
    decide_step,
    on_trigger,
)
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.journey_catalog import definition_text
from lifecycle.journey_files import BUILTIN_DIR, JourneyError, journey_json_schema, load_journeys, parse_journey
from lifecycle.templates import Templates

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
JOURNEYS = {j.name: j for j in load_journeys()}
OK = Recipient("a@example.com", "opted_in", None, None, None)
POLICY = SendPolicy()


def trig(trigger_type: TriggerType, at: datetime = T0, backfill: bool = False, tid: str = "t1",
         **data: Any) -> Trigger:
    return Trigger(tid, trigger_type, "c1", at, backfill, data)


def _data(values: dict[str, Any]) -> dict[str, Any]:
    """Trigger data under names that are not identifiers (`from`)."""
    return values


def started(actions: list[Any]) -> dict[str, StartRun]:
    return {a.journey: a for a in actions if isinstance(a, StartRun)}


def run_of(start: StartRun, run_id: int = 1, status: str = "active") -> Run:
    return Run(run_id, start.journey, status, start.entry_key, start.step_index, start.due_at, start.started_at,
               start.context)


def test_all_default_journeys_ship() -> None:
    assert set(JOURNEYS) == {"double_opt_in", "prospect_welcome", "abandoned_cart", "new_customer_welcome",
                             "post_purchase", "referral", "win_back", "lapsed_reactivation", "birthday",
                             "browse_abandonment"}


@pytest.mark.parametrize(
    ("trigger", "journey", "delay"),
    [
        (trig(TriggerType.SIGNED_UP, consent="pending"), "double_opt_in", timedelta(0)),
        (trig(TriggerType.CONSENT_CHANGED, to="opted_in", orders_count=0), "prospect_welcome", timedelta(0)),
        (trig(TriggerType.CART_ABANDONED, items=[]), "abandoned_cart", timedelta(0)),
        (trig(TriggerType.STAGE_CHANGED, to="new"), "new_customer_welcome", timedelta(hours=1)),
        (trig(TriggerType.ORDER_PLACED, order_id="o1"), "post_purchase", timedelta(days=7)),
        (trig(TriggerType.STAGE_CHANGED, to="active"), "referral", timedelta(days=2)),
        (trig(TriggerType.STAGE_CHANGED, to="at_risk"), "win_back", timedelta(0)),
        (trig(TriggerType.STAGE_CHANGED, to="lapsed"), "lapsed_reactivation", timedelta(0)),
        (trig(TriggerType.BIRTHDAY, year=2026), "birthday", timedelta(0)),
    ],
)
def test_entry_and_first_step_time(trigger: Trigger, journey: str, delay: timedelta) -> None:
    runs = started(on_trigger(list(JOURNEYS.values()), [], trigger))
    assert list(runs) == [journey]
    assert runs[journey].due_at == T0 + delay


def test_no_entry_for_consent_with_orders_or_backfill() -> None:
    journeys = list(JOURNEYS.values())
    assert not started(on_trigger(journeys, [], trig(TriggerType.CONSENT_CHANGED, to="opted_in", orders_count=1)))
    assert not started(on_trigger(journeys, [], trig(TriggerType.STAGE_CHANGED, backfill=True, to="at_risk")))


def test_waits_count_from_previous_due_time() -> None:
    journey = JOURNEYS["abandoned_cart"]
    first = journey.first_send(T0)
    assert first == (0, T0)
    second = journey.next_send(0, T0)
    assert second == (2, T0 + timedelta(days=1))
    assert journey.next_send(2, T0 + timedelta(days=1)) == (4, T0 + timedelta(days=4))
    assert journey.next_send(4, T0 + timedelta(days=4)) is None


def test_one_active_run_per_journey_and_restart_for_post_purchase() -> None:
    journeys = list(JOURNEYS.values())
    first = started(on_trigger(journeys, [], trig(TriggerType.CART_ABANDONED)))["abandoned_cart"]
    again = on_trigger(journeys, [run_of(first)], trig(TriggerType.CART_ABANDONED, tid="t2"))
    assert again == []
    purchase = started(on_trigger(journeys, [], trig(TriggerType.ORDER_PLACED, order_id="o1")))["post_purchase"]
    actions = on_trigger(journeys, [run_of(purchase, 7)],
                         trig(TriggerType.ORDER_PLACED, T0 + timedelta(days=1), tid="t3", order_id="o2"))
    assert ExitRun(7, "restarted") in actions
    assert started(actions)["post_purchase"].due_at == T0 + timedelta(days=8)


def test_referral_once_ever_and_birthday_once_a_year() -> None:
    journeys = list(JOURNEYS.values())
    referral = started(on_trigger(journeys, [], trig(TriggerType.STAGE_CHANGED, to="active")))["referral"]
    done = run_of(referral, status="completed")
    assert not started(on_trigger(journeys, [done], trig(TriggerType.STAGE_CHANGED, tid="t2", to="active")))
    bday = started(on_trigger(journeys, [], trig(TriggerType.BIRTHDAY, year=2026)))["birthday"]
    past = run_of(bday, status="completed")
    assert not started(on_trigger(journeys, [past], trig(TriggerType.BIRTHDAY, tid="t2", year=2026)))
    assert started(on_trigger(journeys, [past], trig(TriggerType.BIRTHDAY, tid="t3", year=2027)))


def test_exits() -> None:
    journeys = list(JOURNEYS.values())
    cart = run_of(started(on_trigger(journeys, [], trig(TriggerType.CART_ABANDONED)))["abandoned_cart"], 1)
    assert ExitRun(1, "exit:cart_emptied") in on_trigger(journeys, [cart], trig(TriggerType.CART_EMPTIED))
    welcome = run_of(started(on_trigger(journeys, [], trig(TriggerType.STAGE_CHANGED, to="new")))
                     ["new_customer_welcome"], 2)
    assert ExitRun(2, "exit:stage_changed") in on_trigger(
        journeys, [welcome], trig(TriggerType.STAGE_CHANGED, tid="t2", **_data({"from": "new", "to": "active"})))
    # history still ends journeys it concerns
    assert ExitRun(1, "exit:order_placed") in on_trigger(
        journeys, [cart], trig(TriggerType.ORDER_PLACED, backfill=True, order_id="o"))


def test_send_decisions() -> None:
    journey = JOURNEYS["prospect_welcome"]
    run = run_of(started(on_trigger([journey], [], trig(TriggerType.CONSENT_CHANGED, to="opted_in",
                                                          orders_count=0)))["prospect_welcome"])
    assert isinstance(decide_step(journey, run, OK, "c1", T0, POLICY), SendNow)
    opted_out = Recipient("a@example.com", "opted_out", None, None, None)
    assert decide_step(journey, run, opted_out, "c1", T0, POLICY) == Skip(journey.send_step(0), "consent:opted_out")
    no_email = Recipient(None, "opted_in", None, None, None)
    assert isinstance(decide_step(journey, run, no_email, "c1", T0, POLICY), Skip)
    doi = JOURNEYS["double_opt_in"]
    doi_run = run_of(started(on_trigger([doi], [], trig(TriggerType.SIGNED_UP, consent="pending")))["double_opt_in"])
    pending = Recipient("a@example.com", "pending", None, None, None)
    assert isinstance(decide_step(doi, doi_run, pending, "c1", T0, POLICY), SendNow)


def test_sunset_stops_marketing_after_a_silent_year() -> None:
    journey = JOURNEYS["win_back"]
    run = run_of(started(on_trigger([journey], [], trig(TriggerType.STAGE_CHANGED, to="at_risk")))["win_back"])
    year_ago = T0 - timedelta(days=365)
    silent = Recipient("a@example.com", "opted_in", None, year_ago, None)
    assert decide_step(journey, run, silent, "c1", T0, POLICY) == Skip(journey.send_step(0), "sunset")
    engaged = Recipient("a@example.com", "opted_in", None, year_ago, T0 - timedelta(days=10))
    assert isinstance(decide_step(journey, run, engaged, "c1", T0, POLICY), SendNow)
    recent = Recipient("a@example.com", "opted_in", None, T0 - timedelta(days=364), None)
    assert isinstance(decide_step(journey, run, recent, "c1", T0, POLICY), SendNow)


def test_review_request_only_after_satisfied_click() -> None:
    journey = JOURNEYS["post_purchase"]
    start = started(on_trigger([journey], [], trig(TriggerType.ORDER_PLACED, order_id="o1")))["post_purchase"]
    run = run_of(start, 5)
    second = journey.next_send(run.step_index or 0, start.due_at)
    assert second is not None
    run.step_index, run.due_at = second
    assert decide_step(journey, run, OK, "c1", T0, POLICY) == Skip(journey.send_step(second[0]), "condition:no_branch")
    click = on_trigger([journey], [run], trig(TriggerType.ENGAGEMENT, kind="clicked", journey="post_purchase",
                                              step="1", link="satisfied"))
    assert click == [RecordClick(5, 1, "satisfied")]
    run.clicks.append({"step": 1, "link": "satisfied"})
    decision = decide_step(journey, run, OK, "c1", T0, POLICY)
    assert isinstance(decision, SendNow) and decision.template == "post_purchase_2"
    run.clicks[:] = [{"step": 1, "link": "not_satisfied"}]
    decision = decide_step(journey, run, OK, "c1", T0, POLICY)
    assert isinstance(decision, SendNow) and decision.template == "post_purchase_4"


def test_validation_names_file_line_and_field(tmp_path: Path) -> None:
    text = "name: broken\nentry: {trigger: nope}\nsteps:\n  - wait: 3x\n  - send: {template: missing_tpl}\n"
    journey, problems = parse_journey(tmp_path / "broken.yaml", text, None)
    assert journey is None
    found = {(p.line, p.field) for p in problems}
    assert (2, "entry.trigger") in found and (4, "steps[0].wait") in found
    (tmp_path / "bad.yaml").write_text("name: bad\nentry: {trigger: birthday}\nsteps:\n  - send: {template: nope}\n")
    with pytest.raises(JourneyError) as caught:
        load_journeys(tmp_path)
    assert any(p.field == "steps[0].send.template" and p.line == 4 for p in caught.value.problems)


def test_yes_no_on_and_off_are_words_and_dates_text_in_a_journey(tmp_path: Path) -> None:
    # YAML 1.1 would read `NO` (Norway) as false: only true and false are booleans, as in YAML 1.2
    text = ("name: nordics\nentry: {trigger: birthday, where: {country: [NO, SE], plan: on, since: 2026-01-01}}\n"
            "steps:\n  - send: {template: birthday_1}\n")
    journey, problems = parse_journey(tmp_path / "nordics.yaml", text, None)
    assert problems == [] and journey is not None and journey.entry is not None
    assert journey.entry.where == {"country": ["NO", "SE"], "plan": ["on"], "since": ["2026-01-01"]}
    norway = Trigger("t1", TriggerType.BIRTHDAY, "c1", T0, data={"country": "NO", "plan": "on", "since": "2026-01-01"})
    assert journey.entry.matches(norway)


def test_extra_directory_overrides_a_journey(tmp_path: Path) -> None:
    (tmp_path / "birthday.yaml").write_text(
        "name: birthday\nreentry: once_per_key\nreentry_key: year\nentry: {trigger: birthday}\n"
        "steps:\n  - wait: 1h\n  - send: {template: birthday_1}\n")
    journeys = {j.name: j for j in load_journeys(tmp_path)}
    assert isinstance(journeys["birthday"], Journey)
    assert journeys["birthday"].first_send(T0) == (1, T0 + timedelta(hours=1))


def _due_run(journey_name: str, trigger: Trigger) -> tuple[Journey, Run]:
    journey = JOURNEYS[journey_name]
    return journey, run_of(started(on_trigger([journey], [], trigger))[journey_name])


def test_preference_category_skips_marketing() -> None:
    journey, run = _due_run("abandoned_cart", trig(TriggerType.CART_ABANDONED))
    left = Recipient("a@example.com", "opted_in", None, None, None, ("cart_reminders",))
    assert decide_step(journey, run, left, "c1", T0, POLICY) == Skip(journey.send_step(0), "preference:cart_reminders")
    other = Recipient("a@example.com", "opted_in", None, None, None, ("news",))
    assert isinstance(decide_step(journey, run, other, "c1", T0, POLICY), SendNow)


def test_quiet_hours_defer_to_their_end_in_the_customers_zone() -> None:
    journey, run = _due_run("abandoned_cart", trig(TriggerType.CART_ABANDONED))
    policy = SendPolicy(quiet_start=time(21, 0), quiet_end=time(8, 0))
    paris = Recipient("a@example.com", "opted_in", None, None, None, (), "Europe/Paris")
    late = datetime(2026, 3, 2, 22, 30, tzinfo=UTC)  # 23:30 in Paris
    assert decide_step(journey, run, paris, "c1", late, policy) == Defer(
        journey.send_step(0), datetime(2026, 3, 3, 7, 0, tzinfo=UTC))
    early = datetime(2026, 3, 3, 5, 0, tzinfo=UTC)  # 06:00 in Paris
    assert decide_step(journey, run, paris, "c1", early, policy) == Defer(
        journey.send_step(0), datetime(2026, 3, 3, 7, 0, tzinfo=UTC))
    assert isinstance(decide_step(journey, run, paris, "c1", datetime(2026, 3, 3, 7, 0, tzinfo=UTC), policy), SendNow)
    # transactional mail is not held back
    doi, doi_run = _due_run("double_opt_in", trig(TriggerType.SIGNED_UP, consent="pending"))
    pending = Recipient("a@example.com", "pending", None, None, None, (), "Europe/Paris")
    assert isinstance(decide_step(doi, doi_run, pending, "c1", late, policy), SendNow)


def test_frequency_cap_skips_marketing_beyond_the_cap() -> None:
    journey, run = _due_run("win_back", trig(TriggerType.STAGE_CHANGED, to="at_risk"))
    policy = SendPolicy(frequency_cap_count=2, frequency_cap_hours=24)
    busy = Recipient("a@example.com", "opted_in", None, None, None, (), None, 2)
    assert decide_step(journey, run, busy, "c1", T0, policy) == Skip(journey.send_step(0), "frequency_cap")
    calm = Recipient("a@example.com", "opted_in", None, None, None, (), None, 1)
    assert isinstance(decide_step(journey, run, calm, "c1", T0, policy), SendNow)


def test_variant_assignment_is_stable_and_follows_weights(tmp_path: Path) -> None:
    (tmp_path / "ab.yaml").write_text(
        "name: ab_test\nentry: {trigger: birthday}\nsteps:\n  - send:\n      template: birthday_1\n"
        "      variants:\n        - {name: a, weight: 3}\n        - {name: b, weight: 1, subject: Hi}\n")
    journey = {j.name: j for j in load_journeys(tmp_path)}["ab_test"]
    step = journey.send_step(0)
    first = [assign_variant(f"c{i}", journey.name, step).name for i in range(2000)]
    again = [assign_variant(f"c{i}", journey.name, step).name for i in range(2000)]
    assert first == again
    share = first.count("a") / len(first)
    assert 0.70 < share < 0.80
    run = run_of(started(on_trigger([journey], [], trig(TriggerType.BIRTHDAY, year=2026)))["ab_test"])
    decision = decide_step(journey, run, OK, "c7", T0, POLICY)
    assert isinstance(decision, SendNow) and decision.variant == assign_variant("c7", journey.name, step).name


def test_offers_and_coupons_are_parsed() -> None:
    cart = JOURNEYS["abandoned_cart"]
    second, third = cart.send_step(2), cart.send_step(4)
    assert second.coupon is not None and second.coupon.amount == 10 and second.coupon.valid == timedelta(days=3)
    assert third.coupon is not None and third.coupon.reuse_step == 2
    win_back = JOURNEYS["win_back"].send_step(0)
    assert win_back.coupon is not None
    assert [win_back.coupon.amount_for(t) for t in ("bronze", "silver", "gold")] == [10, 15, 20]
    assert JOURNEYS["win_back"].send_step(2).recommendations == 3


def test_invalid_offer_fields_are_named(tmp_path: Path) -> None:
    text = ("name: x\nentry: {trigger: birthday}\nsteps:\n  - send:\n      template: birthday_1\n"
            "      offer: {bronze: 10}\n      recommendations: 40\n")
    _, problems = parse_journey(tmp_path / "x.yaml", text, None)
    fields = {p.field for p in problems}
    assert "steps[0].send.offer" in fields and "steps[0].send.recommendations" in fields


def test_a_click_lands_on_the_run_of_the_clicked_email() -> None:
    journey = JOURNEYS["post_purchase"]
    first = run_of(started(on_trigger([journey], [], trig(TriggerType.ORDER_PLACED, order_id="o1")))["post_purchase"],
                   1, status="exited")
    second = run_of(started(on_trigger([journey], [], trig(TriggerType.ORDER_PLACED, T0 + timedelta(days=1),
                                                           tid="t2", order_id="o2")))["post_purchase"], 2)
    click: dict[str, Any] = dict(kind="clicked", journey="post_purchase", step="1", link="satisfied")
    assert on_trigger([journey], [first, second], trig(TriggerType.ENGAGEMENT, run_id=1, **click)) == [
        RecordClick(1, 1, "satisfied")]
    assert on_trigger([journey], [first, second], trig(TriggerType.ENGAGEMENT, **click)) == [
        RecordClick(2, 1, "satisfied")]


# --- the JSON Schema of the admin API says what the parser accepts ----------------------------------


def _schema() -> dict[str, Any]:
    return journey_json_schema(Templates(None).names())


def test_every_shipped_journey_fits_the_schema() -> None:
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), _schema())


@pytest.mark.parametrize("journey", [
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"wait": "1d"}]},  # no send step
    {"name": "x", "entry": {"trigger": "nope"}, "steps": [{"send": {"template": "referral_1"}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"send": {"template": "no_such"}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"send": {"template": "referral_1", "id": 5}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"wait": " 1d"}, {"send": {"template": "referral_1"}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "reentry": "once_per_key",
     "steps": [{"send": {"template": "referral_1"}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"send": {
        "template": "referral_1", "coupon": {"reuse_step": 1, "amount": 5}}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"send": {
        "template": "referral_1", "recommendations": True}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "description": 5, "steps": [{"send": {"template": "referral_1"}}]},
    {"name": "x", "entry": {"trigger": "signed_up"}, "steps": [{"send": {
        "branches": [{"template": "referral_1", "if_clicked": {"step": 1, "link": "a", "extra": 1}}]}}]},
])
def test_what_the_schema_refuses_the_parser_refuses_too(journey: dict[str, Any]) -> None:
    assert not jsonschema.Draft202012Validator(_schema()).is_valid(journey)
    parsed, problems = parse_journey(Path("<request>"), definition_text(journey), Templates(None))
    assert parsed is None and problems
