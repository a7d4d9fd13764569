"""Browse abandonment: when the stager calls browsing abandoned, and when its journey starts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from lifecycle.core.journeys import ExitRun, Run, StartRun, on_trigger
from lifecycle.core.rules import BROWSE_QUIET, DueKind, RuleConfig, apply_due, apply_event
from lifecycle.core.state import CustomerState
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.events import Event, parse_event
from lifecycle.journey_files import load_journeys

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CONFIG = RuleConfig()
JOURNEYS = {j.name: j for j in load_journeys()}
_ids = itertools.count()


def event(kind: str, at: datetime, **fields: Any) -> Event:
    body = {"type": kind, "customer_id": "c1", "occurred_at": at.isoformat(), **fields}
    return parse_event(body, at, lambda: f"e-{next(_ids)}")


def view(product: str, at: datetime, **details: Any) -> Event:
    return event("product_viewed", at, properties={"product_id": product, **details})


def known() -> CustomerState:
    state = CustomerState("c1")
    state.traits["email"] = "c1@example.com"
    return state


def apply_all(state: CustomerState, events: list[Event]) -> dict[str, datetime | None]:
    dues: dict[str, datetime | None] = {}
    for item in events:
        dues.update(apply_event(state, item, item.occurred_at, CONFIG).dues)
    return dues


def test_the_same_product_twice_is_abandoned_two_hours_after_the_latest_view() -> None:
    state = known()
    dues = apply_all(state, [view("p1", T0, name="Lamp", price=80, currency="EUR"),
                             view("p1", T0 + timedelta(hours=5))])
    assert dues[DueKind.BROWSE] == T0 + timedelta(hours=5) + BROWSE_QUIET
    fired = apply_due(state, DueKind.BROWSE, T0 + timedelta(hours=7), T0 + timedelta(hours=7), CONFIG)
    [trigger] = fired.triggers
    assert trigger.type is TriggerType.BROWSE_ABANDONED and not trigger.backfill
    assert trigger.data["views"] == 2
    assert [(p["product_id"], p["name"], p["price"], p["views"]) for p in trigger.data["products"]] == [
        ("p1", "Lamp", 80.0, 2)]
    assert state.browsing == [] and state.browse_abandoned_at == T0 + timedelta(hours=7)


def test_three_views_of_any_products_qualify_and_two_do_not() -> None:
    state = known()
    assert DueKind.BROWSE not in apply_all(state, [view("p1", T0), view("p2", T0 + timedelta(minutes=1))])
    dues = apply_all(state, [view("p3", T0 + timedelta(minutes=2))])
    assert dues[DueKind.BROWSE] == T0 + timedelta(minutes=2) + BROWSE_QUIET
    trigger = apply_due(state, DueKind.BROWSE, T0 + timedelta(hours=3), T0 + timedelta(hours=3), CONFIG).triggers[0]
    assert [p["product_id"] for p in trigger.data["products"]] == ["p3", "p2", "p1"]  # the latest first at equal views


def test_views_more_than_a_day_apart_do_not_add_up() -> None:
    state = known()
    assert DueKind.BROWSE not in apply_all(state, [view("p1", T0), view("p1", T0 + timedelta(hours=25))])


def test_a_cart_or_an_order_within_the_two_hours_abandons_nothing() -> None:
    for ending in (event("cart_updated", T0 + timedelta(hours=1), properties={
            "cart_id": "k1", "currency": "EUR", "value": 80,
            "items": [{"product_id": "p1", "name": "Lamp", "quantity": 1, "price": 80}]}),
            event("order_placed", T0 + timedelta(hours=1), properties={
                "order_id": "o1", "currency": "EUR", "value": 80,
                "items": [{"product_id": "p1", "name": "Lamp", "quantity": 1, "price": 80}]})):
        state = known()
        apply_all(state, [view("p1", T0), view("p1", T0 + timedelta(minutes=5))])
        assert apply_all(state, [ending])[DueKind.BROWSE] is None
        assert state.browsing == []


def test_no_address_no_trigger() -> None:
    state = CustomerState("c1")
    apply_all(state, [view("p1", T0), view("p1", T0 + timedelta(minutes=5))])
    assert apply_due(state, DueKind.BROWSE, T0 + timedelta(hours=3), T0 + timedelta(hours=3), CONFIG).triggers == []


def test_a_cart_within_a_week_of_the_trigger_is_told_to_the_journey() -> None:
    state = known()
    apply_all(state, [view("p1", T0), view("p1", T0 + timedelta(minutes=5))])
    apply_due(state, DueKind.BROWSE, T0 + timedelta(hours=3), T0 + timedelta(hours=3), CONFIG)
    decision = apply_event(state, event("cart_updated", T0 + timedelta(hours=4), properties={
        "cart_id": "k9", "currency": "EUR", "value": 5,
        "items": [{"product_id": "p1", "name": "Lamp", "quantity": 1, "price": 5}]}), T0 + timedelta(hours=4), CONFIG)
    assert TriggerType.CART_UPDATED in [t.type for t in decision.triggers]


def browse_trigger(at: datetime, tid: str = "b1") -> Trigger:
    return Trigger(tid, TriggerType.BROWSE_ABANDONED, "c1", at, False, {"products": [], "views": 3})


def run(journey: str, started: datetime, status: str = "active", run_id: int = 1) -> Run:
    return Run(run_id, journey, status, "k", 0, started, started)


def test_the_journey_runs_at_most_once_a_week_and_never_beside_an_abandoned_cart() -> None:
    journeys = list(JOURNEYS.values())
    assert any(isinstance(a, StartRun) and a.journey == "browse_abandonment"
               for a in on_trigger(journeys, [], browse_trigger(T0)))
    earlier = run("browse_abandonment", T0 - timedelta(days=6), status="completed")
    assert not any(isinstance(a, StartRun) for a in on_trigger(journeys, [earlier], browse_trigger(T0)))
    week_ago = run("browse_abandonment", T0 - timedelta(days=7), status="completed")
    assert any(isinstance(a, StartRun) for a in on_trigger(journeys, [week_ago], browse_trigger(T0)))
    cart_run = run("abandoned_cart", T0 - timedelta(hours=3), run_id=2)
    assert not any(isinstance(a, StartRun) for a in on_trigger(journeys, [cart_run], browse_trigger(T0)))


def test_the_journey_exits_on_a_cart_or_an_order() -> None:
    journeys = list(JOURNEYS.values())
    active = run("browse_abandonment", T0)
    for kind in (TriggerType.CART_UPDATED, TriggerType.ORDER_PLACED):
        actions = on_trigger(journeys, [active], Trigger("x", kind, "c1", T0 + timedelta(hours=1), False, {}))
        assert ExitRun(1, f"exit:{kind.value}") in actions


def test_a_state_round_trips_its_views_and_drops_an_older_shape() -> None:
    state = known()
    apply_all(state, [view("p1", T0, name="Lamp", price=80, currency="EUR"), view("p2", T0 + timedelta(minutes=1))])
    again = CustomerState.from_json(state.to_json())
    assert (again.viewed, again.browsing) == (state.viewed, state.browsing)
    assert again.viewed["p1"] == ["2026-03-02T09:00:00.000000+00:00", "Lamp", 80.0, "EUR"]
    older = {**state.to_json(), "browsing": [{"product_id": "p1", "at": "2026-03-02T09:00:00+00:00"}]}
    assert CustomerState.from_json(older).browsing == []
