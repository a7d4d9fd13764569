"""Stories about offers through the whole pipeline: coupons, tiers, recommendations, A/B tests, attribution."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from lifecycle.core.journeys import assign_variant
from lifecycle.journey_files import load_journeys
from lifecycle.report import build_report
from lifecycle.scenario import Delivered, ScenarioRunner
from tests.support.stories import post

pytestmark = pytest.mark.integration
START = datetime(2026, 7, 6, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


def item(product_id: str, name: str, price: float, quantity: int = 1) -> dict[str, Any]:
    return {"product_id": product_id, "name": name, "quantity": quantity, "price": price}


async def signup(runner: ScenarioRunner, customer: str, email: str, **traits: str) -> None:
    await post(runner, {"type": "customer_signed_up", "customer_id": customer,
                        "traits": {"email": email, "consent": "opted_in", **traits}})


async def cart(runner: ScenarioRunner, customer: str, items: list[dict[str, Any]]) -> None:
    await post(runner, {"type": "cart_updated", "customer_id": customer, "properties": {
        "cart_id": f"k-{customer}", "currency": "EUR", "value": sum(i["price"] * i["quantity"] for i in items),
        "items": items}})


async def order(runner: ScenarioRunner, customer: str, order_id: str, items: list[dict[str, Any]],
                coupon: str | None = None, at: datetime | None = None) -> None:
    props: dict[str, Any] = {"order_id": order_id, "currency": "EUR",
                             "value": sum(i["price"] * i["quantity"] for i in items), "items": items}
    if coupon:
        props["coupon_code"] = coupon
    event: dict[str, Any] = {"type": "order_placed", "customer_id": customer, "properties": props}
    if at is not None:
        event["occurred_at"] = at.isoformat()
    await post(runner, event)


async def advance(runner: ScenarioRunner, delta: timedelta) -> None:
    await runner.watch.advance_to(await runner.watch.clock.now() + delta)


def mails(runner: ScenarioRunner, to: str, journey: str, step: int | None = None) -> list[Delivered]:
    return [d for d in runner.delivered if d.to == to and d.journey == journey and (step is None or d.step == step)]


async def scalar(runner: ScenarioRunner, sql: str, **params: Any) -> Any:
    async with runner.engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


@pytest.fixture
async def fresh(runner: ScenarioRunner) -> ScenarioRunner:
    await runner.configure(HERE, {})
    await runner.reset(START)
    return runner


async def _abandon(runner: ScenarioRunner, customer: str, email: str) -> str:
    """Sign up, leave a cart, get reminders 1 and 2; returns the coupon code of reminder 2."""
    await signup(runner, customer, email)
    await cart(runner, customer, [item("p-lamp", "Brass lamp", 80.0)])
    await advance(runner, timedelta(hours=1, minutes=1))
    await advance(runner, timedelta(days=1))
    [second] = mails(runner, email, "abandoned_cart", 2)
    code = await scalar(runner, "SELECT code FROM coupons WHERE customer_id = :c AND journey = 'abandoned_cart'",
                        c=customer)
    assert code and code in second.body
    return str(code)


async def test_coupon_issued_reminded_and_redeemed(fresh: ScenarioRunner) -> None:
    code = await _abandon(fresh, "c-cp-1", "wendy@example.com")
    # valid 3 days: until the end of the third day, so that the "expires soon" reminder still helps
    expires = await scalar(fresh, "SELECT expires_at FROM coupons WHERE code = :k", k=code)
    assert expires == datetime(2026, 7, 10, 23, 59, 59, tzinfo=UTC)
    await advance(fresh, timedelta(days=3))
    [third] = mails(fresh, "wendy@example.com", "abandoned_cart", 3)
    assert code in third.body  # the same code, reminded before it expires
    await order(fresh, "c-cp-1", "o-cp-1", [item("p-lamp", "Brass lamp", 80.0)], coupon=code.lower())
    await fresh.watch.wait_idle()
    assert await scalar(fresh, "SELECT redeemed_order_id FROM coupons WHERE code = :k", k=code) == "o-cp-1"
    assert await scalar(fresh, "SELECT outcome FROM coupon_attempts WHERE order_id = 'o-cp-1'") == "redeemed"


async def test_expired_and_foreign_coupons_are_recorded_not_redeemed(fresh: ScenarioRunner) -> None:
    code = await _abandon(fresh, "c-cp-2", "xavier@example.com")
    await signup(fresh, "c-cp-3", "yann@example.com")
    await order(fresh, "c-cp-3", "o-foreign", [item("p-mug", "Mug", 12.0)], coupon=code)
    await advance(fresh, timedelta(days=4))
    await order(fresh, "c-cp-2", "o-late", [item("p-lamp", "Brass lamp", 80.0)], coupon=code)
    await fresh.watch.wait_idle()
    outcomes = {
        order_id: await scalar(fresh, "SELECT outcome FROM coupon_attempts WHERE order_id = :o", o=order_id)
        for order_id in ("o-foreign", "o-late")
    }
    assert outcomes == {"o-foreign": "foreign", "o-late": "expired"}
    assert await scalar(fresh, "SELECT redeemed_order_id FROM coupons WHERE code = :k", k=code) is None


async def test_win_back_offer_grows_with_the_customers_tier(fresh: ScenarioRunner) -> None:
    long_ago = START - timedelta(days=89)
    await signup(fresh, "c-tier-gold", "gold@example.com")
    await signup(fresh, "c-tier-bronze", "bronze@example.com")
    await order(fresh, "c-tier-gold", "o-g1", [item("p-coat", "Coat", 320.0)], at=long_ago - timedelta(days=1))
    await order(fresh, "c-tier-gold", "o-g2", [item("p-boots", "Boots", 260.0)], at=long_ago)
    await order(fresh, "c-tier-bronze", "o-b1", [item("p-socks", "Socks", 12.0)], at=long_ago)
    await advance(fresh, timedelta(days=1, hours=1))
    amounts = {}
    for customer in ("c-tier-gold", "c-tier-bronze"):
        amounts[customer] = float(await scalar(
            fresh, "SELECT amount FROM coupons WHERE customer_id = :c AND journey = 'win_back' AND step = 1",
            c=customer))
    assert amounts == {"c-tier-gold": 20.0, "c-tier-bronze": 10.0}
    [gold_mail] = mails(fresh, "gold@example.com", "win_back", 1)
    gold_code = await scalar(fresh, "SELECT code FROM coupons WHERE customer_id = 'c-tier-gold'")
    assert gold_code in gold_mail.body


async def test_recommendations_exclude_what_the_customer_bought(fresh: ScenarioRunner) -> None:
    shirt, tie, belt, hat = (item("p-shirt", "Oxford shirt", 60.0), item("p-tie", "Silk tie", 35.0),
                             item("p-belt", "Leather belt", 45.0), item("p-hat", "Felt hat", 70.0))
    await order(fresh, "c-rec-a", "o-ra", [shirt, tie])
    await order(fresh, "c-rec-b", "o-rb", [shirt, tie, belt])
    await order(fresh, "c-rec-c", "o-rc", [hat])
    await signup(fresh, "c-rec-me", "zoe@example.com")
    await order(fresh, "c-rec-me", "o-me", [shirt, belt])
    await advance(fresh, timedelta(days=10, hours=2))
    [third] = mails(fresh, "zoe@example.com", "new_customer_welcome", 3)
    assert "Silk tie" in third.body  # bought with the shirt by others
    assert "Felt hat" in third.body  # a best seller fills the list
    assert "Oxford shirt" not in third.body and "Leather belt" not in third.body
    assert third.body.index("Silk tie") < third.body.index("Felt hat")


async def test_ab_assignment_is_stable_and_reported(fresh: ScenarioRunner, tmp_path: Path) -> None:
    journeys = tmp_path / "journeys"
    journeys.mkdir()
    (journeys / "birthday.yaml").write_text(
        "name: birthday\ncategory: offers\nreentry: once_per_key\nreentry_key: year\nentry: {trigger: birthday}\n"
        "steps:\n  - send:\n      template: birthday_1\n      coupon: {kind: percent, amount: 15, valid: 7d}\n"
        "      variants:\n        - {name: warm, weight: 1}\n"
        "        - {name: short, weight: 1, subject: \"Cake, {{ customer.first_name or 'friend' }}?\"}\n")
    await fresh.configure(HERE, {"journeys_dir": str(journeys)})
    try:
        customers = [f"c-ab-{i}" for i in range(12)]
        for customer in customers:
            await signup(fresh, customer, f"{customer}@example.com", birthday="--07-07", timezone="UTC")
        await advance(fresh, timedelta(days=1, hours=1))
        async with fresh.engine.connect() as conn:
            recorded: dict[str, str] = dict((await conn.execute(text(
                "SELECT customer_id, variant FROM sends WHERE journey = 'birthday'"))).all())
        step = {j.name: j for j in load_journeys(journeys)}["birthday"].send_step(0)
        assert recorded == {c: assign_variant(c, "birthday", step).name for c in customers}
        assert set(recorded.values()) == {"warm", "short"}
        short = [d for d in fresh.delivered if d.journey == "birthday" and recorded[d.to.split("@")[0]] == "short"]
        assert short and all(d.subject == "Cake, friend?" for d in short)
        rows = [r for r in await build_report(fresh.engine, START) if r.journey == "birthday"]
        assert {r.variant for r in rows} == {"warm", "short"}
        assert sum(r.sent for r in rows) == len(customers)
        assert {r.verdict for r in rows} == {"control", "not significant yet"}
    finally:
        await fresh.configure(HERE, {})


async def test_an_order_after_a_click_is_attributed_to_the_email(fresh: ScenarioRunner) -> None:
    await signup(fresh, "c-attr-1", "abe@example.com")
    await cart(fresh, "c-attr-1", [item("p-pen", "Fountain pen", 90.0)])
    await advance(fresh, timedelta(hours=1, minutes=1))
    [reminder] = mails(fresh, "abe@example.com", "abandoned_cart", 1)
    await post(fresh, {"type": "email_clicked", "customer_id": "c-attr-1", "properties": {
        "journey": "abandoned_cart", "step": 1, "link": "cart", "message_id": str(reminder.message["Message-ID"])}})
    await advance(fresh, timedelta(days=2))
    await order(fresh, "c-attr-1", "o-attr-1", [item("p-pen", "Fountain pen", 90.0)])
    await fresh.watch.wait_idle()
    assert await scalar(fresh, "SELECT attributed_journey || ':' || attributed_step FROM orders"
                               " WHERE order_id = 'o-attr-1'") == "abandoned_cart:1"
    [row] = [r for r in await build_report(fresh.engine, START, "abandoned_cart") if r.step == 1]
    assert (row.sent, row.clicked, row.converted, row.revenue) == (1, 1, 1, 90.0)
    # an order long after the click is nobody's
    await advance(fresh, timedelta(days=6))
    await order(fresh, "c-attr-1", "o-attr-2", [item("p-ink", "Ink", 9.0)])
    await fresh.watch.wait_idle()
    assert await scalar(fresh, "SELECT attributed_journey FROM orders WHERE order_id = 'o-attr-2'") is None
