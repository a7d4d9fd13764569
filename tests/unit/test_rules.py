"""The lifecycle rules, exhaustively and without I/O."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.core.rules import DueKind, RuleConfig, apply_due, apply_event, compute_stage, next_birthday
from lifecycle.core.state import CustomerState
from lifecycle.core.triggers import TriggerType
from lifecycle.events import Event, parse_event

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONFIG = RuleConfig()


def event(kind: str, at: datetime = T0, received: datetime | None = None, event_id: str | None = None,
          **fields: Any) -> Event:
    body: dict[str, Any] = {"type": kind, "customer_id": "c1", "occurred_at": at.isoformat(), **fields}
    if event_id:
        body["event_id"] = event_id
    counter = itertools.count()
    return parse_event(body, received or at, lambda: f"e-{kind}-{at.isoformat()}-{next(counter)}")


def order(order_id: str, at: datetime, value: float = 10.0, **kw: Any) -> Event:
    return event("order_placed", at, event_id=f"o-{order_id}", properties={
        "order_id": order_id, "currency": "EUR", "value": value,
        "items": [{"product_id": "p1", "name": "Shirt", "quantity": 1, "price": value}]}, **kw)


def cart(items: list[dict[str, Any]], at: datetime) -> Event:
    return event("cart_updated", at, properties={"cart_id": "k1", "currency": "EUR",
                                                 "value": sum(i["price"] for i in items), "items": items})


def trigger_types(decision: Any) -> list[str]:
    return [t.type.value for t in decision.triggers]


def test_signup_with_consent_emits_signed_up_and_consent_change() -> None:
    state = CustomerState("c1")
    decision = apply_event(state, event("customer_signed_up", traits={"email": "a@example.com",
                                                                      "consent": "opted_in"}), T0, CONFIG)
    assert trigger_types(decision) == ["signed_up", "consent_changed", "stage_changed"]
    consent = decision.triggers[1]
    assert consent.data == {"from": None, "to": "opted_in", "orders_count": 0}
    assert state.stage == "prospect" and state.traits["email"] == "a@example.com"


def test_the_first_identify_signs_up_and_the_next_ones_only_update() -> None:
    state = CustomerState("c1")
    first = apply_event(state, event("customer_identified", traits={"email": "a@example.com",
                                                                     "consent": "opted_in"}), T0, CONFIG)
    assert trigger_types(first) == ["signed_up", "consent_changed", "stage_changed"]
    assert state.signed_up_at == T0
    later = T0 + timedelta(days=3)
    again = apply_event(state, event("customer_identified", later, traits={"first_name": "Ada"}), later, CONFIG)
    assert trigger_types(again) == [] and state.traits["first_name"] == "Ada" and state.signed_up_at == T0
    # a customer who signed up the usual way is not signed up again by an identify
    other = CustomerState("c2")
    apply_event(other, event("customer_signed_up", traits={"email": "b@example.com"}), T0, CONFIG)
    assert "signed_up" not in trigger_types(apply_event(other, event("customer_identified", later, traits={
        "locale": "fr"}), later, CONFIG))


def test_a_tracked_event_is_a_trigger_with_its_name_and_attributes() -> None:
    state = CustomerState("c1")
    decision = apply_event(state, event("track", properties={"event": "Wishlist Added",
                                                             "attributes": {"product_id": "p1"}}), T0, CONFIG)
    [trigger] = [t for t in decision.triggers if t.type is TriggerType.TRACK]
    assert trigger.data == {"event": "Wishlist Added", "attributes": {"product_id": "p1"}}


def line(change: str, product: str, at: datetime, cart_id: str = "k1", **fields: Any) -> Event:
    return event("cart_line_changed", at, event_id=f"l-{change}-{product}-{at.isoformat()}", properties={
        "cart_id": cart_id, "change": change, "product_id": product, **fields})


def test_cart_lines_add_up_remove_and_empty_the_cart() -> None:
    state = CustomerState("c1")
    apply_event(state, line("added", "p1", T0, name="Mug", price=10, currency="EUR"), T0, CONFIG)
    t1 = T0 + timedelta(minutes=5)
    decision = apply_event(state, line("added", "p2", t1, price=4.5, quantity=2), t1, CONFIG)
    assert state.cart is not None and state.cart.value == 19.0 and state.cart.currency == "EUR"
    assert [(i["product_id"], i["name"], i["quantity"]) for i in state.cart.items] == [
        ("p1", "Mug", 1), ("p2", "p2", 2)]
    assert decision.dues[DueKind.CART] == t1 + timedelta(minutes=CONFIG.cart_abandon_minutes)
    t2 = t1 + timedelta(minutes=5)
    apply_event(state, line("added", "p1", t2), t2, CONFIG)
    apply_event(state, line("removed", "p2", t2, quantity=1), t2, CONFIG)
    assert [(i["product_id"], i["quantity"]) for i in state.cart.items] == [("p1", 2), ("p2", 1)]
    assert state.cart.value == 24.5
    # a line of an older change arriving late still counts; the cart's time stays the latest
    late = apply_event(state, line("added", "p3", T0 + timedelta(minutes=1), price=1), t2, CONFIG)
    assert state.cart.updated_at == t2 and late.dues[DueKind.CART] == t2 + timedelta(
        minutes=CONFIG.cart_abandon_minutes)
    for product in ("p1", "p2", "p3"):
        emptied = apply_event(state, line("removed", product, t2), t2, CONFIG)
    assert state.cart.items == [] and trigger_types(emptied) == ["cart_emptied"]
    # another cart starts from nothing
    apply_event(state, line("added", "p9", t2, cart_id="k2", price=3), t2, CONFIG)
    assert state.cart.cart_id == "k2" and [i["product_id"] for i in state.cart.items] == ["p9"]


def test_stages_follow_orders_and_time() -> None:
    state = CustomerState("c1")
    apply_event(state, order("o1", T0), T0, CONFIG)
    assert compute_stage(state, T0, CONFIG) == "new"
    apply_event(state, order("o2", T0 + timedelta(days=1)), T0 + timedelta(days=1), CONFIG)
    assert state.stage == "active"
    last = T0 + timedelta(days=1)
    assert compute_stage(state, last + timedelta(days=89, hours=23), CONFIG) == "active"
    assert compute_stage(state, last + timedelta(days=90), CONFIG) == "at_risk"
    assert compute_stage(state, last + timedelta(days=365), CONFIG) == "lapsed"


def test_stage_expiry_due_times_and_transitions() -> None:
    state = CustomerState("c1")
    decision = apply_event(state, order("o1", T0), T0, CONFIG)
    assert decision.dues[DueKind.STAGE] == T0 + timedelta(days=90)
    due = T0 + timedelta(days=90)
    decision = apply_due(state, DueKind.STAGE, due, due, CONFIG)
    assert state.stage == "at_risk"
    [change] = decision.triggers
    assert change.type is TriggerType.STAGE_CHANGED and change.data == {"from": "new", "to": "at_risk"}
    assert change.occurred_at == due and not change.backfill
    assert decision.dues[DueKind.STAGE] == T0 + timedelta(days=365)


def test_cancelled_and_refunded_orders_do_not_count() -> None:
    state = CustomerState("c1")
    apply_event(state, order("o1", T0, 30), T0, CONFIG)
    apply_event(state, order("o2", T0 + timedelta(hours=1), 20), T0, CONFIG)
    apply_event(state, event("order_refunded", T0 + timedelta(hours=2), properties={"order_id": "o2"}), T0, CONFIG)
    summary = state.order_summary()
    assert summary["orders_count"] == 1 and summary["total_spent"] == 30.0
    assert state.stage == "new"
    apply_event(state, event("order_cancelled", T0 + timedelta(hours=3), properties={"order_id": "o1"}), T0, CONFIG)
    assert state.order_summary()["orders_count"] == 0 and state.stage == "prospect"


def test_cancellation_seen_before_the_order_still_voids_it() -> None:
    state = CustomerState("c1")
    apply_event(state, event("order_cancelled", T0, properties={"order_id": "o1"}), T0, CONFIG)
    apply_event(state, order("o1", T0 - timedelta(minutes=5)), T0, CONFIG)
    assert state.order_summary()["orders_count"] == 0


def test_cart_abandonment_is_moved_by_updates_and_cancelled_by_order_or_emptying() -> None:
    item = {"product_id": "p1", "name": "Shirt", "quantity": 1, "price": 10.0}
    state = CustomerState("c1")
    decision = apply_event(state, cart([item], T0), T0, CONFIG)
    assert decision.dues[DueKind.CART] == T0 + timedelta(hours=1)
    later = T0 + timedelta(minutes=30)
    decision = apply_event(state, cart([item, item], later), later, CONFIG)
    assert decision.dues[DueKind.CART] == later + timedelta(hours=1)
    emptied = apply_event(state, cart([], later + timedelta(minutes=1)), later, CONFIG)
    assert emptied.dues[DueKind.CART] is None and trigger_types(emptied) == ["cart_emptied"]
    apply_event(state, cart([item], later + timedelta(minutes=2)), later, CONFIG)
    ordered = apply_event(state, order("o1", later + timedelta(minutes=3)), later, CONFIG)
    assert ordered.dues[DueKind.CART] is None and state.cart is None


def test_cart_abandoned_trigger_carries_items_once() -> None:
    item = {"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0}
    state = CustomerState("c1")
    apply_event(state, cart([item], T0), T0, CONFIG)
    due = T0 + timedelta(hours=1)
    decision = apply_due(state, DueKind.CART, due, due, CONFIG)
    [abandoned] = decision.triggers
    assert abandoned.type is TriggerType.CART_ABANDONED
    assert abandoned.data["items"][0]["name"] == "Linen shirt" and abandoned.occurred_at == due
    assert apply_due(state, DueKind.CART, due, due, CONFIG).triggers == []
    assert "checkout_url" not in abandoned.data


def test_the_carts_checkout_url_is_kept_and_told_when_abandoned() -> None:
    item = {"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0}
    url = "https://checkout.shop.example/c/k1/recover?key=a1"
    state = CustomerState("c1")
    apply_event(state, event("cart_updated", T0, properties={"cart_id": "k1", "currency": "EUR", "value": 59.0,
                                                             "items": [item], "checkout_url": url}), T0, CONFIG)
    restored = CustomerState.from_json(state.to_json())  # as the stager saves and loads it
    due = T0 + timedelta(hours=1)
    [abandoned] = apply_due(restored, DueKind.CART, due, due, CONFIG).triggers
    assert abandoned.data["checkout_url"] == url


def test_backfill_marks_triggers_as_history() -> None:
    state = CustomerState("c1")
    received = T0 + timedelta(days=2)
    decision = apply_event(state, order("o1", T0, received=received), received, CONFIG)
    assert decision.triggers and all(t.backfill for t in decision.triggers)
    fresh = apply_event(CustomerState("c2"), order("o1", T0, received=T0 + timedelta(hours=23)),
                        T0 + timedelta(hours=23), CONFIG)
    assert not any(t.backfill for t in fresh.triggers)


def test_birthday_at_nine_in_the_customers_zone() -> None:
    state = CustomerState("c1", traits={"birthday": "1990-03-15", "timezone": "Europe/Paris"})
    moment = next_birthday(state, datetime(2026, 3, 14, 12, tzinfo=UTC), CONFIG)
    assert moment == datetime(2026, 3, 15, 8, tzinfo=UTC)
    state.traits["timezone"] = "America/New_York"  # daylight saving time from 8 March 2026
    assert next_birthday(state, datetime(2026, 3, 14, 12, tzinfo=UTC), CONFIG) == datetime(2026, 3, 15, 13,
                                                                                          tzinfo=UTC)


def test_birthday_on_29_february_and_without_year() -> None:
    state = CustomerState("c1", traits={"birthday": "--02-29"})
    assert next_birthday(state, datetime(2026, 1, 1, tzinfo=UTC), CONFIG) == datetime(2026, 2, 28, 9, tzinfo=UTC)
    assert next_birthday(state, datetime(2027, 12, 1, tzinfo=UTC), CONFIG) == datetime(2028, 2, 29, 9, tzinfo=UTC)


def test_birthday_due_emits_and_schedules_next_year() -> None:
    state = CustomerState("c1", traits={"birthday": "1990-03-15"}, stage="prospect")
    due = datetime(2026, 3, 15, 9, tzinfo=UTC)
    decision = apply_due(state, DueKind.BIRTHDAY, due, due, CONFIG)
    assert [(t.type.value, t.data) for t in decision.triggers] == [("birthday", {"year": 2026})]
    assert decision.dues[DueKind.BIRTHDAY] == datetime(2027, 3, 15, 9, tzinfo=UTC)


def test_consent_last_writer_by_event_time_wins() -> None:
    state = CustomerState("c1")
    apply_event(state, event("unsubscribed", T0 + timedelta(minutes=5)), T0, CONFIG)
    decision = apply_event(state, event("customer_updated", T0, traits={"consent": "opted_in"}), T0, CONFIG)
    assert state.consent == "opted_out" and decision.triggers == []


def _consent_after(events: list[Event]) -> str | None:
    state = CustomerState("c1")
    for e in events:
        apply_event(state, e, T0 + timedelta(days=1), CONFIG)
    return state.consent


def test_an_unsubscribe_is_sticky_against_a_later_import() -> None:
    unsubscribe = event("unsubscribed", T0)
    imported = event("customer_updated", T0 + timedelta(hours=1), traits={"consent": "opted_in"})
    assert _consent_after([unsubscribe, imported]) == "opted_out"
    assert _consent_after([imported, unsubscribe]) == "opted_out"  # whatever the arrival order


def test_an_api_opt_out_is_not_sticky() -> None:
    opted_out = event("customer_updated", T0, traits={"consent": "opted_out"})
    imported = event("customer_updated", T0 + timedelta(hours=1), traits={"consent": "opted_in"})
    assert _consent_after([opted_out, imported]) == "opted_in"


def test_only_a_fresh_double_opt_in_lifts_a_sticky_opt_out() -> None:
    unsubscribe = event("unsubscribed", T0)
    old_link = event("consent_confirmed", T0 + timedelta(minutes=5))
    assert _consent_after([unsubscribe, old_link]) == "opted_out"
    signed_up_again = event("customer_signed_up", T0 + timedelta(hours=1), traits={"consent": "pending"})
    confirmed = event("consent_confirmed", T0 + timedelta(hours=2))
    assert _consent_after([unsubscribe, signed_up_again]) == "pending"
    assert _consent_after([confirmed, signed_up_again, unsubscribe]) == "opted_in"
    # and once lifted, the customer can unsubscribe again
    again = event("unsubscribed", T0 + timedelta(hours=3))
    assert _consent_after([unsubscribe, signed_up_again, confirmed, again]) == "opted_out"


def test_a_confirmation_for_another_address_is_ignored() -> None:
    state = CustomerState("c1")
    apply_event(state, event("customer_signed_up", T0, traits={"email": "new@example.com", "consent": "pending"}),
                T0, CONFIG)
    # a link sent to the address the customer had before
    old = event("consent_confirmed", T0 + timedelta(minutes=1), properties={"email": "Old@Example.com"})
    apply_event(state, old, T0 + timedelta(minutes=1), CONFIG)
    assert state.consent == "pending"
    same = event("consent_confirmed", T0 + timedelta(minutes=2), properties={"email": "NEW@example.com"})
    apply_event(state, same, T0 + timedelta(minutes=2), CONFIG)
    assert state.consent == "opted_in"


def test_a_state_saved_before_the_consent_log_reads_back() -> None:
    legacy = {"customer_id": "c1", "consent": "opted_in", "trait_times": {"consent": T0.isoformat()}}
    state = CustomerState.from_json(legacy)
    assert state.consent == "opted_in"
    apply_event(state, event("customer_updated", T0 - timedelta(hours=1), traits={"consent": "opted_out"}),
                T0, CONFIG)
    assert state.consent == "opted_in"  # the older trait loses, as it always did


def test_engagement_is_recorded_and_forwarded() -> None:
    state = CustomerState("c1")
    decision = apply_event(state, event("email_clicked", T0, properties={
        "journey": "post_purchase", "step": 1, "link": "satisfied"}), T0, CONFIG)
    assert state.last_engagement_at == T0 and state.last_click_at == T0
    [trigger] = [t for t in decision.triggers if t.type is TriggerType.ENGAGEMENT]
    assert trigger.data == {"kind": "clicked", "journey": "post_purchase", "step": "1", "link": "satisfied",
                            "message_id": None}


def _final(events: list[Event]) -> dict[str, Any]:
    state = CustomerState("c1")
    now = T0 + timedelta(days=1)
    for e in events:
        apply_event(state, e, now, CONFIG)
    data = state.to_json()
    data.pop("first_seen_at")
    return data


STORY = [
    event("customer_signed_up", T0, event_id="s1", traits={"email": "a@example.com", "consent": "pending"}),
    event("consent_confirmed", T0 + timedelta(minutes=3), event_id="s2"),
    event("customer_updated", T0 + timedelta(minutes=4), event_id="s3", traits={"first_name": "Ana"}),
    order("o1", T0 + timedelta(minutes=10), 25),
    order("o2", T0 + timedelta(minutes=20), 40),
    event("order_refunded", T0 + timedelta(minutes=30), event_id="s4", properties={"order_id": "o1"}),
    event("email_opened", T0 + timedelta(minutes=40), event_id="s5"),
    event("unsubscribed", T0 + timedelta(minutes=50), event_id="s6"),
    event("customer_updated", T0 + timedelta(minutes=60), event_id="s7", traits={"consent": "opted_in"}),
]


@settings(max_examples=200, deadline=None)
@given(st.permutations(STORY))
def test_any_order_of_the_same_events_gives_the_same_state(events: list[Event]) -> None:
    assert _final(events) == _final(STORY)


def test_to_json_round_trip() -> None:
    state = CustomerState("c1")
    for e in STORY:
        apply_event(state, e, T0, CONFIG)
    assert CustomerState.from_json(state.to_json()).to_json() == state.to_json()


def _visitor() -> CustomerState:
    """An anonymous visitor: two views of one product, then a cart."""
    visitor = CustomerState("anonymous:v1")
    for minutes in (0, 5):
        apply_event(visitor, event("product_viewed", T0 + timedelta(minutes=minutes),
                                   properties={"product_id": "p-mug", "name": "Mug", "price": 12}), T0, CONFIG)
    apply_event(visitor, cart([{"product_id": "p-mug", "name": "Mug", "quantity": 1, "price": 12}],
                              T0 + timedelta(minutes=10)), T0, CONFIG)
    return visitor


def test_a_merged_visitors_cart_and_views_become_the_customers() -> None:
    state = CustomerState("c1")
    apply_event(state, event("customer_signed_up", T0 - timedelta(days=1),
                             traits={"email": "a@example.com", "consent": "opted_in"}), T0, CONFIG)
    visitor = _visitor()
    now = T0 + timedelta(minutes=20)
    merged = apply_event(state, event("customer_merged", now, properties={"previous_id": "anonymous:v1"}), now,
                         CONFIG, merging=visitor)
    assert state.cart is not None and state.cart.cart_id == "k1" and not state.cart.abandoned
    assert merged.dues[DueKind.CART] == T0 + timedelta(minutes=10 + CONFIG.cart_abandon_minutes)
    assert "p-mug" in state.viewed and state.browsing == []  # the cart ended the browsing
    assert state.first_seen_at == T0 - timedelta(days=1) and state.traits["email"] == "a@example.com"
    assert state.consent == "opted_in"
    # the same merge again (a retry): nothing more to take
    again = apply_event(state, event("customer_merged", now, properties={"previous_id": "anonymous:v1"}), now,
                        CONFIG, merging=None)
    assert again.triggers == [] and DueKind.CART not in again.dues


def test_a_merge_takes_traits_by_event_time_and_never_an_older_cart_or_a_taken_one() -> None:
    state = CustomerState("c1")
    apply_event(state, event("customer_updated", T0, traits={"first_name": "Ana"}), T0, CONFIG)
    apply_event(state, order("o1", T0 + timedelta(hours=1)), T0, CONFIG)
    old = CustomerState("old-7")
    apply_event(old, event("customer_updated", T0 - timedelta(days=3), traits={"first_name": "A.", "locale": "fr"}),
                T0, CONFIG)
    apply_event(old, event("customer_updated", T0 + timedelta(days=1), traits={"consent": "opted_out"}), T0, CONFIG)
    apply_event(old, order("o0", T0 - timedelta(days=30), value=40.0), T0, CONFIG)
    apply_event(old, cart([{"product_id": "p2", "name": "Cap", "quantity": 1, "price": 9}], T0), T0, CONFIG)
    later = T0 + timedelta(days=2)
    decision = apply_event(state, event("customer_merged", later, properties={"previous_id": "old-7"}), later,
                           CONFIG, merging=old)
    assert state.traits["first_name"] == "Ana" and state.traits["locale"] == "fr"  # the newer value of each
    assert state.consent == "opted_out"  # the newest consent fact of either
    assert sorted(state.orders) == ["o0", "o1"] and state.stage == "active"
    assert state.cart is None  # the cart was older than the customer's order, which took it
    assert "consent_changed" in trigger_types(decision) and "stage_changed" in trigger_types(decision)
    same = CustomerState("c2")
    apply_event(same, event("customer_merged", later, properties={"previous_id": "c2"}), later, CONFIG,
                merging=same)  # a merge into itself changes nothing
    assert same.orders == {} and same.cart is None


def _bounce(at: datetime, kind: str | None = None) -> Event:
    properties: dict[str, Any] = {"message_id": f"<m-{at.isoformat()}>"}
    if kind is not None:
        properties["kind"] = kind
    return event("email_bounced", at, event_id=f"b-{at.isoformat()}", properties=properties)


def _signed_up() -> CustomerState:
    state = CustomerState("c1")
    apply_event(state, event("customer_signed_up", traits={"email": "a@example.com", "consent": "opted_in"}),
                T0, CONFIG)
    return state


def test_a_bounce_without_a_kind_is_hard_and_suppresses_at_once() -> None:
    state = _signed_up()
    apply_event(state, _bounce(T0 + timedelta(days=1)), T0, CONFIG)
    assert state.suppressed == "bounced"
    complained = _signed_up()
    apply_event(complained, event("email_complained", T0 + timedelta(days=1)), T0, CONFIG)
    assert complained.suppressed == "complained"


def test_soft_bounces_suppress_only_once_the_limit_is_reached_in_a_row() -> None:
    state = _signed_up()
    days = [T0 + timedelta(days=n) for n in (1, 8, 15)]
    for number, day in enumerate(days, start=1):
        apply_event(state, _bounce(day, "soft"), day, CONFIG)
        assert state.suppressed == (None if number < CONFIG.soft_bounce_limit else "bounced")
    assert len(state.soft_bounces) == CONFIG.soft_bounce_limit == 3
    assert CustomerState.from_json(state.to_json()).soft_bounces == state.soft_bounces


def test_an_open_or_a_click_breaks_the_row_and_a_repeated_report_counts_once() -> None:
    state = _signed_up()
    one, two, three, four = (T0 + timedelta(days=n) for n in (1, 2, 3, 4))
    apply_event(state, _bounce(one, "soft"), one, CONFIG)
    apply_event(state, _bounce(one, "soft"), one, CONFIG)  # the same instant again: the same bounce
    apply_event(state, _bounce(two, "soft"), two, CONFIG)
    apply_event(state, event("email_opened", two + timedelta(hours=1)), two, CONFIG)
    assert state.soft_bounces == []
    apply_event(state, _bounce(three, "soft"), three, CONFIG)
    apply_event(state, _bounce(one - timedelta(hours=1), "soft"), three, CONFIG)  # before the open: not in the row
    apply_event(state, _bounce(four, "soft"), four, CONFIG)
    assert state.suppressed is None and len(state.soft_bounces) == 2
    apply_event(state, event("email_clicked", four + timedelta(hours=1), properties={
        "journey": "welcome", "step": 1, "link": "https://shop.example/x"}), four, CONFIG)
    assert state.soft_bounces == []


def test_the_limit_is_a_setting_and_a_new_address_starts_a_new_row() -> None:
    strict = RuleConfig(soft_bounce_limit=1)
    state = _signed_up()
    apply_event(state, _bounce(T0 + timedelta(days=1), "soft"), T0, strict)
    assert state.suppressed == "bounced"
    apply_event(state, event("customer_updated", T0 + timedelta(days=2), traits={"email": "b@example.com"}), T0,
                strict)
    assert state.suppressed is None and state.soft_bounces == []
    lenient = _signed_up()
    for n in range(1, 3):
        apply_event(lenient, _bounce(T0 + timedelta(days=n), "soft"), T0, RuleConfig(soft_bounce_limit=5))
    assert lenient.suppressed is None and len(lenient.soft_bounces) == 2


SOFT_STORY = [
    event("customer_signed_up", T0, event_id="s1", traits={"email": "a@example.com", "consent": "opted_in"}),
    _bounce(T0 + timedelta(days=1), "soft"),
    event("email_opened", T0 + timedelta(days=2), event_id="o1"),
    _bounce(T0 + timedelta(days=3), "soft"),
]  # fewer bounces than the limit: a suppression, once made, stays whatever arrives later


@settings(max_examples=100, deadline=None)
@given(st.permutations(SOFT_STORY))
def test_soft_bounces_below_the_limit_give_the_same_row_in_any_order(events: list[Event]) -> None:
    assert _final(events) == _final(SOFT_STORY)
