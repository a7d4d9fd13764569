"""Segments over customers the real pipeline built: each kind of condition, the audience rules, and the
admin preview API (docs/segments.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from lifecycle.core.segments import parse_filter
from lifecycle.db.segments import matching_ids
from lifecycle.scenario import ScenarioRunner
from tests.support.stories import post

pytestmark = pytest.mark.integration
START = datetime(2026, 7, 6, 9, 0, tzinfo=UTC)
HERE = Path(__file__)
EVERYONE = ["seg-ada", "seg-bob", "seg-cy", "seg-dee", "seg-eve"]


async def signup(runner: ScenarioRunner, customer: str, consent: str, **traits: Any) -> None:
    await post(runner, {"type": "customer_signed_up", "customer_id": customer,
                        "traits": {"email": f"{customer}@example.com", "consent": consent, **traits}})


async def order(runner: ScenarioRunner, customer: str, order_id: str, product: str, value: float,
                at: datetime | None = None) -> None:
    event: dict[str, Any] = {"type": "order_placed", "customer_id": customer, "properties": {
        "order_id": order_id, "currency": "EUR", "value": value,
        "items": [{"product_id": product, "name": product, "quantity": 1, "price": value}]}}
    if at is not None:
        event["occurred_at"] = at.isoformat()
    await post(runner, event)


async def view(runner: ScenarioRunner, customer: str, product: str) -> None:
    await post(runner, {"type": "product_viewed", "customer_id": customer, "properties": {"product_id": product}})


@pytest.fixture
async def shop(runner: ScenarioRunner) -> ScenarioRunner:
    await runner.configure(HERE, {})
    await runner.reset(START)
    await signup(runner, "seg-ada", "opted_in", locale="fr-CA", first_name="Ada")
    await signup(runner, "seg-bob", "opted_in", locale="en")
    await signup(runner, "seg-cy", "pending")
    await signup(runner, "seg-dee", "opted_in", locale="fr", unsubscribed_categories=["offers"])
    await signup(runner, "seg-eve", "opted_out", locale="en")
    await order(runner, "seg-ada", "seg-o1", "P1", 100.0)
    await order(runner, "seg-ada", "seg-o2", "P2", 110.0)
    await order(runner, "seg-ada", "seg-o3", "P1", 120.0)
    await order(runner, "seg-bob", "seg-o4", "P2", 40.0, at=START - timedelta(days=200))
    await view(runner, "seg-ada", "P9")
    await view(runner, "seg-cy", "P1")
    await post(runner, {"type": "email_opened", "customer_id": "seg-ada", "properties": {}})
    await runner.watch.advance_to(START + timedelta(minutes=1))
    return runner


async def matched(runner: ScenarioRunner, value: dict[str, Any], at: datetime | None = None,
                  category: str | None = None, audience_only: bool = False) -> list[str]:
    now = at or await runner.watch.clock.now()
    async with runner.engine.connect() as conn:
        found = await matching_ids(conn, parse_filter(value), now, runner.settings.default_locale, category,
                                   audience_only)
    return [c for c in found if c.startswith("seg-")]


async def test_each_kind_of_condition(shop: ScenarioRunner) -> None:
    runner = shop
    assert await matched(runner, {"consent": "opted_in"}) == ["seg-ada", "seg-bob", "seg-dee"]
    assert await matched(runner, {"consent": ["pending", "opted_out"]}) == ["seg-cy", "seg-eve"]
    assert await matched(runner, {"locale": "fr"}) == ["seg-ada", "seg-cy", "seg-dee"]  # cy: the shop's locale
    assert await matched(runner, {"locale": "fr_CA"}) == ["seg-ada"]
    assert await matched(runner, {"locale": ["en"]}) == ["seg-bob", "seg-eve"]
    assert await matched(runner, {"orders_count": {"gte": 3}}) == ["seg-ada"]
    assert await matched(runner, {"orders_count": {"lte": 0}}) == ["seg-cy", "seg-dee", "seg-eve"]
    assert await matched(runner, {"total_spent": {"gte": 300, "lte": 330}}) == ["seg-ada"]
    assert await matched(runner, {"average_order_value": {"lte": 50}}) == ["seg-bob"]
    # any JSON number is a bound: beyond the columns' types, and a range nobody can be in
    assert await matched(runner, {"orders_count": {"gte": 4.2e268}}) == []
    assert await matched(runner, {"orders_count": {"lte": 1e300}, "total_spent": {"gte": 1e-300}}) == [
        "seg-ada", "seg-bob"]
    assert await matched(runner, {"total_spent": {"gte": 330, "lte": 300}}) == []
    # no order: no average, so the complement holds them
    assert await matched(runner, {"not": {"average_order_value": {"gte": 100}}}) == [
        "seg-bob", "seg-cy", "seg-dee", "seg-eve"]
    assert await matched(runner, {"last_order_within": "30d"}) == ["seg-ada"]
    assert await matched(runner, {"last_order_before": "180d"}) == ["seg-bob"]
    assert await matched(runner, {"engaged_within": "1d"}) == ["seg-ada"]
    assert await matched(runner, {"signed_up_within": "1h"}) == EVERYONE
    assert await matched(runner, {"signed_up_within": "1h"}, at=START + timedelta(hours=2)) == []
    assert await matched(runner, {"bought_product": "P1"}) == ["seg-ada"]
    assert await matched(runner, {"bought_product": ["P2"]}) == ["seg-ada", "seg-bob"]
    assert await matched(runner, {"bought_product": {"products": ["P2"], "within": "30d"}}) == ["seg-ada"]
    assert await matched(runner, {"viewed_product": ["P1", "P9"]}) == ["seg-ada", "seg-cy"]
    assert await matched(runner, {"viewed_product": {"products": "P9", "within": "1h"}}) == ["seg-ada"]
    assert await matched(runner, {"viewed_product": {"products": "P9", "within": "1h"}},
                         at=START + timedelta(days=2)) == []
    assert await matched(runner, {"trait": {"first_name": "Ada"}}) == ["seg-ada"]
    assert await matched(runner, {"trait": {"locale": None}}) == ["seg-cy"]
    assert await matched(runner, {"any": [{"orders_count": {"gte": 3}}, {"consent": "pending"}]}) == [
        "seg-ada", "seg-cy"]
    assert await matched(runner, {"all": [{"locale": "fr"}, {"not": {"orders_count": {"gte": 1}}}]}) == [
        "seg-cy", "seg-dee"]


async def test_stage_separates_what_the_stager_decided(shop: ScenarioRunner) -> None:
    async with shop.engine.connect() as conn:
        stages: dict[str, str] = dict((await conn.execute(text(
            "SELECT customer_id, stage FROM customers WHERE customer_id IN ('seg-ada', 'seg-cy')"))).all())
    assert stages["seg-ada"] != stages["seg-cy"]
    assert "seg-ada" in await matched(shop, {"stage": [stages["seg-ada"]]})
    assert "seg-cy" not in await matched(shop, {"stage": [stages["seg-ada"]]})


async def test_the_audience_leaves_out_the_unconsented_and_the_category_s_unsubscribers(shop: ScenarioRunner) -> None:
    everyone = {"signed_up_within": "1d"}
    assert await matched(shop, everyone, audience_only=True) == ["seg-ada", "seg-bob", "seg-dee"]
    assert await matched(shop, everyone, category="offers", audience_only=True) == ["seg-ada", "seg-bob"]
    async with shop.engine.begin() as conn:
        await conn.execute(text("INSERT INTO suppressions (address, reason, suppressed_at)"
                                " VALUES ('seg-bob@example.com', 'bounced', now())"))
    assert await matched(shop, everyone, category="offers", audience_only=True) == ["seg-ada"]
    # an opt-out the API acknowledged counts before the stager applies it
    async with shop.engine.begin() as conn:
        await conn.execute(text("INSERT INTO consent_fences (customer_id, event_id, category, acknowledged_at)"
                                " VALUES ('seg-ada', 'not-yet-applied', '*', now())"))
    assert await matched(shop, everyone, audience_only=True) == ["seg-dee"]


async def test_the_preview_api(shop: ScenarioRunner) -> None:
    http = shop.http  # the admin key on /v1/admin/
    answer = await http.get("/v1/admin/segments/preview", params={"name": "vip", "sample": 5})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["segment"] == "vip" and body["matched"] >= 1 and body["audience"] >= 1
    assert "seg-ada" in [c["customer_id"] for c in body["sample"]]
    answer = await http.get("/v1/admin/segments/preview",
                            params={"filter": '{"signed_up_within": "1d"}', "category": "offers", "sample": 0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["matched"] - answer.json()["audience"] >= 3  # cy, dee and eve
    assert answer.json()["sample"] == []
    answer = await http.get("/v1/admin/segments/preview", params={"filter": '{"orders_count": {"gte": "x"}}'})
    assert answer.status_code == 422
    assert answer.json()["errors"] == [{"field": "filter.orders_count.gte", "message": "must be a number"}]
    assert (await http.get("/v1/admin/segments/preview", params={"name": "nobody"})).status_code == 404
    everyone = await http.get("/v1/admin/segments/preview", params={"sample": 100})
    assert everyone.status_code == 200 and everyone.json()["matched"] >= 5
    both = await http.get("/v1/admin/segments/preview", params={"name": "vip", "filter": '{"locale": "en"}'})
    assert both.status_code == 200 and "seg-ada" not in [c["customer_id"] for c in both.json()["sample"]]
    assert (await http.get("/v1/admin/segments/preview", params={"filter": "[1]"})).status_code == 400
    assert (await http.get("/v1/admin/segments/preview", params={"filter": "{"})).status_code == 400
    unauthorised = await http.get("/v1/admin/segments/preview", params={"name": "vip"},
                                  headers={"Authorization": "Bearer nope"})
    assert unauthorised.status_code == 401
