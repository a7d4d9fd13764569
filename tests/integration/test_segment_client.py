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
