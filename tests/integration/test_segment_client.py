"""Segment's own Python library (segment-analytics-python, from PyPI) pointed at the ingest API with a
write key: it identifies a customer, tracks, completes an order; the customer then stands where the
pipeline puts them, and gets the welcome email its consent trait allows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from segment.analytics.client import Client
from sqlalchemy import text

from lifecycle.scenario import ScenarioRunner, first_plain_key

pytestmark = pytest.mark.integration
HERE = Path(__file__)


def _send(host: str, write_key: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    """The calls through the library, synchronously (its batch endpoint, Basic auth); the errors it gave."""
    errors: list[str] = []
    client = Client(write_key=write_key, host=host, sync_mode=True, max_retries=1,
                    on_error=lambda error, _items: errors.append(str(error)))
    for method, args, kwargs in calls:
        try:
            getattr(client, method)(*args, **kwargs)
        except Exception as exc:  # in sync mode the library raises what it got back
            errors.append(str(exc))
    client.flush()
    return errors


async def test_the_segment_library_identifies_tracks_and_orders(runner: ScenarioRunner) -> None:
    await runner.configure(HERE, {})
    # the library stamps calls with the real time: the virtual clock starts there
    await runner.reset(datetime.now(UTC).replace(microsecond=0))
    settings = runner.settings
    host = f"http://127.0.0.1:{settings.ingest_port}"
    key = first_plain_key(settings.api_keys, "LIFECYCLE_API_KEYS")
    identify: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("identify", ("seg-u1",), {"traits": {"email": "sega@example.com", "firstName": "Sega",
                                              "consent": "opted_in", "plan": "gold"}}),
    ]
    assert await asyncio.to_thread(_send, host, key, identify) == []
    # the calls' times are a little ahead of the virtual clock now: bring it there
    await runner.watch.advance_to(datetime.now(UTC) + timedelta(seconds=1))
    assert [(d.to, d.journey, d.step) for d in runner.new_emails()] == [("sega@example.com", "prospect_welcome", 1)]

    shopping: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("identify", ("seg-u1",), {"traits": {"lastName": "Lin"}}),  # at every login: no second sign-up
        ("page", ("seg-u1",), {"name": "Home", "properties": {"url": "https://shop.example/"}}),
        ("track", ("seg-u1", "Product Viewed"), {"properties": {"product_id": "p-mug", "name": "Mug",
                                                                "price": 12.5, "currency": "EUR"}}),
        ("track", ("seg-u1", "Wishlist Added"), {"properties": {"product_id": "p-mug"}}),
        ("track", ("seg-u1", "Order Completed"), {"properties": {
            "order_id": "seg-o1", "total": 25.0, "currency": "EUR",
            "products": [{"product_id": "p-mug", "name": "Mug", "price": 12.5, "quantity": 2}]}}),
    ]
    assert await asyncio.to_thread(_send, host, key, shopping) == []
    await runner.watch.advance_to(datetime.now(UTC) + timedelta(seconds=1))
    customer = (await runner.http.get("/v1/customers/seg-u1")).json()
    assert customer["email"] == "sega@example.com" and customer["consent"] == "opted_in"
    assert customer["last_name"] == "Lin"
    assert customer["stage"] == "new" and customer["orders_count"] == 1 and customer["total_spent"] == 25.0
    await runner.watch.advance_to(await runner.watch.clock.now() + timedelta(hours=1, minutes=1))
    assert [(d.to, d.journey, d.step) for d in runner.new_emails()] == [
        ("sega@example.com", "new_customer_welcome", 1)]

    # a wrong key is refused: the library reports it, nothing is stored
    errors = await asyncio.to_thread(_send, host, "not-a-key", [("track", ("seg-u2", "Signed In"), {})])
    assert errors and "401" in " ".join(errors)
    assert (await runner.http.get("/v1/customers/seg-u2")).status_code == 404


async def test_a_visitor_who_identifies_gets_the_reminder_of_the_cart_they_filled_anonymously(
        runner: ScenarioRunner) -> None:
    await runner.configure(HERE, {})
    await runner.reset(datetime.now(UTC).replace(microsecond=0))
    settings = runner.settings
    host = f"http://127.0.0.1:{settings.ingest_port}"
    key = first_plain_key(settings.api_keys, "LIFECYCLE_API_KEYS")
    mug = {"product_id": "p-mug", "name": "Mug", "price": 12.5, "currency": "EUR"}
    browsing: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
        ("track", (None, "Product Viewed"), {"properties": mug, "anonymous_id": "v-42"}),
        ("track", (None, "Product Added"), {"properties": {**mug, "cart_id": "k-7", "quantity": 2},
                                            "anonymous_id": "v-42"}),
        ("identify", ("seg-u7",), {"traits": {"email": "visitor@example.com", "consent": "opted_in"},
                                   "anonymous_id": "v-42"}),
    ]
    assert await asyncio.to_thread(_send, host, key, browsing) == []
    await runner.watch.advance_to(datetime.now(UTC) + timedelta(seconds=1))
    assert [(d.to, d.journey) for d in runner.new_emails()] == [("visitor@example.com", "prospect_welcome")]
    # a call of the visitor still on its way when they identified lands on the customer's profile
    late = [("track", (None, "Product Viewed"), {"properties": {**mug, "product_id": "p-cup", "name": "Cup"},
                                                "anonymous_id": "v-42"}),
            ("alias", ("v-42", "seg-u7"), {})]
    assert await asyncio.to_thread(_send, host, key, late) == []
    await runner.watch.advance_to(datetime.now(UTC) + timedelta(seconds=2))
    assert (await runner.http.get("/v1/customers/anonymous:v-42")).status_code == 404  # merged, gone
    async with runner.engine.connect() as conn:
        state = (await conn.execute(text("SELECT state FROM customers WHERE customer_id = 'seg-u7'"))).scalar_one()
    assert {"p-mug", "p-cup"} <= set(state["viewed"]) and state["cart"]["cart_id"] == "k-7"
    # the cart the visitor filled is abandoned under their name: the first reminder shows the mug
    await runner.watch.advance_to(await runner.watch.clock.now() + timedelta(hours=1, minutes=5))
    reminders = [d for d in runner.new_emails() if d.journey == "abandoned_cart"]
    assert [(d.to, d.step) for d in reminders] == [("visitor@example.com", 1)] and "Mug" in reminders[0].body
