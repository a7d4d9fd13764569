"""Shopify's signed webhooks through the whole pipeline (Kafka, PostgreSQL, dispatcher, SMTP sink): an
opted-in customer's checkout is abandoned, the first reminder takes them back to Shopify's abandoned
checkout URL, the order stops the reminders; a webhook delivered again, even to a restarted ingest after
the secret was rotated, changes nothing; a refund voids the order only when it pays all of it back, and
refunds that each repay part of it void it once Shopify updates the order to refunded, once."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from lifecycle.db.schema import processed_events
from lifecycle.scenario import ScenarioRunner
from lifecycle.shopify import event_id

pytestmark = pytest.mark.integration
HERE = Path(__file__)
FIXTURES = HERE.resolve().parents[1] / "fixtures" / "shopify"
SECRET, NEXT_SECRET = "shpss_it_current", "shpss_it_next"
START = datetime(2027, 5, 3, 9, 0, tzinfo=UTC)
ADDRESS = "ada.shopify@example.com"
CUSTOMER = "706405506930370084"


def fixture(name: str, at: datetime, *fields: str) -> dict[str, Any]:
    """A documented payload, its times (`fields`) set to `at`, for our customer."""
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    for name_of in fields:
        payload[name_of] = at.isoformat()
    return payload


async def deliver(runner: ScenarioRunner, topic: str, payload: dict[str, Any], webhook_id: str,
                  secret: str = SECRET) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    answer = await runner.http.post("/v1/webhooks/shopify", content=body, headers={
        "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-SHA256": signature,
        "X-Shopify-Webhook-Id": webhook_id, "X-Shopify-Shop-Domain": "shop.myshopify.com"})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


async def test_a_checkout_abandoned_then_recovered(runner: ScenarioRunner) -> None:
    await runner.configure(HERE, {"shopify_secrets": SECRET})
    try:
        await _abandoned_then_recovered(runner)
    finally:
        await runner.configure(HERE, {})


async def _abandoned_then_recovered(runner: ScenarioRunner) -> None:
    await runner.reset(START)
    customer = {**fixture("customers_create", START, "created_at", "updated_at"), "email": ADDRESS}
    assert (await deliver(runner, "customers/create", customer, "wh-customer"))["outcome"] == "accepted"

    opened = START + timedelta(minutes=5)
    await runner.watch.advance_to(opened)
    checkout = fixture("checkouts_create", opened, "created_at", "updated_at")
    checkout["email"] = ADDRESS
    checkout["customer"] = {**checkout["customer"], "id": int(CUSTOMER), "email": ADDRESS,
                            "email_marketing_consent": customer["email_marketing_consent"]}
    assert await deliver(runner, "checkouts/create", checkout, "wh-checkout") == {"outcome": "accepted", "events": 3}
    assert await deliver(runner, "checkouts/create", checkout, "wh-checkout") == {"outcome": "duplicate", "events": 0}
    await runner.watch.wait_idle()
    assert [(d.to, d.journey, d.step) for d in runner.new_emails()] == [(ADDRESS, "prospect_welcome", 1)]

    # an hour later the cart is abandoned: the first reminder, whose button is Shopify's checkout page
    await runner.watch.advance_to(opened + timedelta(hours=1, minutes=1))
    [reminder] = [d for d in runner.new_emails() if d.journey == "abandoned_cart"]
    assert (reminder.to, reminder.step) == (ADDRESS, 1)
    assert "IPod Nano - 8GB - Pink" in reminder.body
    public_url = runner.settings.public_url
    followed = set()
    for link in re.findall(rf"{re.escape(public_url)}/t/c/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", reminder.body):
        clicked = await runner.http.get(link.removeprefix(public_url), follow_redirects=False)
        assert clicked.status_code == 302, clicked.text
        followed.add(clicked.headers["location"])
    assert checkout["abandoned_checkout_url"] in followed

    # the customer orders: the checkout completes, the order arrives; no reminder follows
    ordered = opened + timedelta(hours=2)
    await runner.watch.advance_to(ordered)
    completed = {**checkout, "completed_at": ordered.isoformat(), "updated_at": ordered.isoformat()}
    assert (await deliver(runner, "checkouts/update", completed, "wh-completed"))["outcome"] == "accepted"
    order = fixture("orders_create", ordered, "created_at", "updated_at", "processed_at")
    order["email"] = order["contact_email"] = ADDRESS
    order["customer"] = {**checkout["customer"]}
    assert await deliver(runner, "orders/create", order, "wh-order") == {"outcome": "accepted", "events": 2}
    await runner.watch.advance_to(ordered + timedelta(days=5))
    assert [d for d in runner.new_emails() if d.journey == "abandoned_cart"] == []
    profile = (await runner.http.get(f"/v1/customers/{CUSTOMER}")).json()
    assert (profile["email"], profile["consent"], profile["orders_count"], profile["total_spent"]) == (
        ADDRESS, "opted_in", 1, 403.0)

    # the secret is rotated (the ingest restarts, forgetting the webhooks it published): the order
    # delivered again under the new secret is published again, with the same event ids: the stager
    # applied them already, and skips them
    applied = await _applied_events(runner)
    assert {event_id("wh-order", 0, "customer_identified"), event_id("wh-order", 1, "order_placed")} <= applied
    await runner.configure(HERE, {"shopify_secrets": f"{SECRET},{NEXT_SECRET}"})
    again = await deliver(runner, "orders/create", order, "wh-order", NEXT_SECRET)
    assert again == {"outcome": "accepted", "events": 2}
    await runner.watch.wait_idle()
    assert await _applied_events(runner) == applied
    assert (await runner.http.get(f"/v1/customers/{CUSTOMER}")).json()["orders_count"] == 1
    assert runner.new_emails() == []

    # refunds name only their order, found as the stager recorded it: a partial refund leaves the order
    # counting, one that pays the whole order back voids it
    refunded = ordered + timedelta(days=5, hours=1)
    await runner.watch.advance_to(refunded)
    partial = fixture("refunds_create", refunded, "created_at", "processed_at")  # 199.00 of 403.00
    assert await deliver(runner, "refunds/create", partial, "wh-refund-1", NEXT_SECRET) == {
        "outcome": "nothing_kept", "events": 0}
    await runner.watch.wait_idle()
    assert (await runner.http.get(f"/v1/customers/{CUSTOMER}")).json()["orders_count"] == 1
    # a second partial refund repays the rest: by itself still partial; Shopify then updates the order
    # to refunded, which voids it
    rest = copy.deepcopy(partial)
    rest["id"] += 1
    rest["transactions"][0]["amount"] = str(Decimal(order["total_price"]) - Decimal("199.00"))
    assert await deliver(runner, "refunds/create", rest, "wh-refund-2", NEXT_SECRET) == {
        "outcome": "nothing_kept", "events": 0}
    updated = {**order, "financial_status": "refunded", "updated_at": refunded.isoformat()}
    assert await deliver(runner, "orders/updated", updated, "wh-update-1", NEXT_SECRET) == {
        "outcome": "accepted", "events": 1}
    await runner.watch.wait_idle()
    profile = (await runner.http.get(f"/v1/customers/{CUSTOMER}")).json()
    assert (profile["orders_count"], profile["stage"]) == (0, "prospect")
    # a later update of the refunded order makes the same event, which counts once; a whole refund of
    # the voided order makes none
    applied = await _applied_events(runner)
    assert await deliver(runner, "orders/updated", {**updated, "tags": "vip"}, "wh-update-2", NEXT_SECRET) == {
        "outcome": "accepted", "events": 1}
    whole = copy.deepcopy(rest)
    whole["id"] += 1
    whole["transactions"][0]["amount"] = order["total_price"]
    assert (await deliver(runner, "refunds/create", whole, "wh-refund-3", NEXT_SECRET))["events"] == 0
    await runner.watch.wait_idle()
    assert await _applied_events(runner) == applied
    assert runner.new_emails() == []

    # Shopify's privacy topics: the data request finds the export, the redaction erases the customer
    named = {**fixture("customers_redact", refunded), "customer": {"id": int(CUSTOMER), "email": ADDRESS}}
    asked = {**fixture("customers_data_request", refunded), "customer": named["customer"]}
    assert (await deliver(runner, "customers/data_request", asked, "wh-data", NEXT_SECRET))["events"] == 0
    assert (await runner.http.get(f"/v1/admin/customers/{CUSTOMER}/export")).status_code == 200
    assert await deliver(runner, "customers/redact", named, "wh-redact", NEXT_SECRET) == {
        "outcome": "accepted", "events": 0}
    await runner.watch.wait_idle()
    assert (await runner.http.get(f"/v1/customers/{CUSTOMER}")).status_code == 404
    assert (await runner.http.get(f"/v1/admin/customers/{CUSTOMER}/export")).status_code == 404
    assert await _applied_events(runner) == set()


async def _applied_events(runner: ScenarioRunner) -> set[str]:
    async with runner.engine.connect() as conn:
        rows = await conn.execute(select(processed_events.c.event_id)
                                  .where(processed_events.c.customer_id == CUSTOMER))
        return {row.event_id for row in rows}
