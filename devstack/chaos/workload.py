"""The harness's workload: seeded customer stories played through the ingest API, each with the
emails its acknowledged events require.

Every story keeps its events well clear of due times (at least MARGIN - 3 s, longer than the faults
of a run hold the pipeline up), so what a customer must receive does not depend on how fast the pipeline is. The
expectation is built from what the API acknowledged, never read back from the database:

- `required`: must arrive exactly once;
- `optional`: may arrive at most once (an email due before an opt-out whose acknowledgement raced it, or
  an email that an event ends, when a fault held that event's acknowledgement back until less than
  RACE_SECONDS before the email fell due);
- an opt-out (`opted_out_at`, or `left` per category) forbids everything in its scope that arrives
  more than a second after the API acknowledged it: that is `unconsented`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from devstack.chaos.sink import Arrival, ChaosSink

# The journeys of a run: the shop's defaults with waits of seconds (applied through the admin API).
# MARGIN separates every event that can end a run or cancel an email from the email's due time: it is
# longer than the faults of a run can hold the pipeline up, so the outcome never depends on timing.
MARGIN = 45
WELCOME_WAIT, WELCOME_LAST = MARGIN, 10
CART_WAIT = 10
AFTER_ORDER = MARGIN
CART_ABANDON = MARGIN  # seconds: LIFECYCLE_CART_ABANDON_MINUTES=0.75
JOURNEYS: list[dict[str, Any]] = [
    {"name": "double_opt_in", "marketing": False, "consent": ["pending"],
     "entry": {"trigger": "signed_up", "where": {"consent": "pending"}},
     "exit": [{"trigger": "consent_changed", "where": {"to": ["opted_in", "opted_out"]}}],
     "steps": [{"send": {"template": "double_opt_in_1"}}]},
    {"name": "prospect_welcome", "category": "offers",
     "entry": {"trigger": "consent_changed", "where": {"to": "opted_in", "orders_count": 0}},
     "exit": [{"trigger": "order_placed"}],
     "steps": [{"send": {"template": "prospect_welcome_1"}}, {"wait": f"{WELCOME_WAIT}s"},
               {"send": {"template": "prospect_welcome_2"}}, {"wait": f"{WELCOME_LAST}s"},
               {"send": {"template": "prospect_welcome_3"}}]},
    {"name": "abandoned_cart", "category": "cart_reminders", "entry": {"trigger": "cart_abandoned"},
     "exit": [{"trigger": "order_placed"}, {"trigger": "cart_emptied"}],
     "steps": [{"send": {"template": "abandoned_cart_1"}}, {"wait": f"{CART_WAIT}s"},
               {"send": {"template": "abandoned_cart_2", "coupon": {"kind": "percent", "amount": 10, "valid": "3d"}}},
               {"wait": f"{CART_WAIT}s"},
               {"send": {"template": "abandoned_cart_3", "coupon": {"reuse_step": 2}}}]},
    {"name": "post_purchase", "category": "news", "reentry": "restart", "entry": {"trigger": "order_placed"},
     "exit": [{"trigger": "order_voided"}],
     "steps": [{"wait": f"{AFTER_ORDER}s"}, {"send": {"template": "post_purchase_1"}}]},
]
CATEGORY = {"double_opt_in": None, "prospect_welcome": "offers", "abandoned_cart": "cart_reminders",
            "post_purchase": "news"}
WELCOME = [("prospect_welcome", 1), ("prospect_welcome", 2), ("prospect_welcome", 3)]
CART = [("abandoned_cart", 1), ("abandoned_cart", 2), ("abandoned_cart", 3)]
# when each email falls due, in seconds after the event that starts its journey
DUE_AFTER = {("prospect_welcome", 1): 0, ("prospect_welcome", 2): WELCOME_WAIT,
             ("prospect_welcome", 3): WELCOME_WAIT + WELCOME_LAST, ("double_opt_in", 1): 0,
             ("abandoned_cart", 1): CART_ABANDON, ("abandoned_cart", 2): CART_ABANDON + CART_WAIT,
             ("abandoned_cart", 3): CART_ABANDON + 2 * CART_WAIT, ("post_purchase", 1): AFTER_ORDER}
# An event that ends a journey (an order, a cancellation) acknowledged less than this before one of its
# emails falls due may not stop that email: the event still has to go through the stager and reach the
# dispatcher, which takes longer while the pipeline recovers from a fault.
RACE_SECONDS = 30.0
# from its last event, how long until a story's last email is due
HORIZON = CART_ABANDON + 2 * CART_WAIT + 5
STORIES = ("welcome", "doi_confirm", "doi_ignore", "cart_abandon", "cart_order", "order_cancel",
           "unsubscribe_link", "unsubscribe_api", "category_out", "preferences_page", "duplicate_events")
WAIT_FOR_EMAIL_SECONDS = 150.0


class WorkloadError(Exception):
    """The harness itself sent something the API refused: a bug in the harness, not a finding."""


@dataclass
class Customer:
    customer_id: str
    email: str
    story: str
    required: set[tuple[str, int]] = field(default_factory=set)
    optional: set[tuple[str, int]] = field(default_factory=set)
    opted_out_at: float | None = None  # when the API acknowledged a full opt-out
    left: dict[str, float] = field(default_factory=dict)  # category -> acknowledgement time
    settle_at: float = 0.0  # after this every email of the story is due
    lost_links: list[str] = field(default_factory=list)  # emails awaited to act on that never came
    due: dict[tuple[str, int], float] = field(default_factory=dict)  # when each email falls due (time.time())

    def expect(self, keys: list[tuple[str, int]], started: float, required: bool = True) -> None:
        """These emails of a journey started at `started` (an acknowledgement): required or optional."""
        (self.required if required else self.optional).update(keys)
        for key in keys:
            self.due[key] = started + DUE_AFTER[key]

    def ended(self, keys: list[tuple[str, int]], started: float, at: float) -> None:
        """An event acknowledged at `at` ends the journey of `keys`, started at `started`: each of its
        emails due too soon after `at` for the event to stop it becomes optional (the others must not come)."""
        raced = [key for key in keys if at + RACE_SECONDS > started + DUE_AFTER[key] and key not in self.required]
        self.expect(raced, started, required=False)

    def forbids(self, arrival: Arrival) -> bool:
        """Whether this arrival came more than 1 s after an acknowledged opt-out covering it."""
        if self.opted_out_at is not None and arrival.at > self.opted_out_at + 1.0:
            return True
        category = CATEGORY.get(arrival.journey)
        left_at = self.left.get(category) if category else None
        return left_at is not None and arrival.at > left_at + 1.0


class Api:
    """The ingest API as a shop's backend and a customer's browser use it: retried until answered."""

    def __init__(self, base_url: str, write_key: str, patience: float = 240.0) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=15.0)
        self.write_key = write_key
        self.patience = patience

    async def close(self) -> None:
        await self.http.aclose()

    async def _post(self, url: str, **kwargs: Any) -> float:
        deadline = time.monotonic() + self.patience
        delay = 0.2
        while True:
            try:
                response = await self.http.post(url, **kwargs)
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code < 300:
                return time.time()
            if response is not None and response.status_code not in (429, 500, 502, 503, 504):
                raise WorkloadError(f"POST {url} answered {response.status_code}: {response.text[:300]}")
            if time.monotonic() > deadline:
                raise WorkloadError(f"POST {url} not acknowledged within {self.patience:.0f} s")
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 1.5)

    async def events(self, *events: dict[str, Any]) -> float:
        """Post one event or a batch; the moment the API acknowledged it (it is durable from then)."""
        body: object = events[0] if len(events) == 1 else {"events": list(events)}
        return await self._post("/v1/events", json=body, headers={"Authorization": f"Bearer {self.write_key}"})

    async def form(self, url: str, fields: dict[str, str | list[str]]) -> float:
        return await self._post(url, data=fields)

    async def apply_journey(self, definition: dict[str, Any], admin_key: str) -> None:
        response = await self.http.post("/v1/admin/journeys", json=definition,
                                        headers={"Authorization": f"Bearer {admin_key}"})
        if response.status_code not in (200, 201):
            raise WorkloadError(f"journey {definition['name']} refused ({response.status_code}): {response.text}")


_LINK = {
    "confirm": re.compile(r"https?://[^\s\"'<>]+/v1/confirm/[A-Za-z0-9_\-.]+"),
    "preferences": re.compile(r"https?://[^\s\"'<>]+/v1/preferences/[A-Za-z0-9_\-.]+"),
}


async def await_email(sink: ChaosSink, customer: Customer, journey: str, step: int) -> Arrival | None:
    deadline = time.monotonic() + WAIT_FOR_EMAIL_SECONDS
    while time.monotonic() < deadline:
        for arrival in sink.arrivals:
            if arrival.to == customer.email and arrival.journey == journey and arrival.step == step:
                return arrival
        sink.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sink.changed.wait(), timeout=1.0)
    customer.lost_links.append(f"{journey} {step}")
    return None


class Workload:
    """One run's customers: chosen and timed from the seed, played concurrently."""

    def __init__(self, api: Api, sink: ChaosSink, rng: random.Random, run: int, customers: int,
                 arrival_window: float) -> None:
        self.api = api
        self.sink = sink
        self.rng = rng
        self.customers: list[Customer] = []
        for number in range(customers):
            story = STORIES[number % len(STORIES)] if number < len(STORIES) else rng.choice(STORIES)
            customer_id = f"chaos-{run}-{number}-{uuid.UUID(int=rng.getrandbits(128)).hex[:8]}"
            self.customers.append(Customer(customer_id, f"{customer_id}@chaos.example", story))
        self.starts = sorted(rng.uniform(0, arrival_window) for _ in self.customers)

    async def play(self) -> None:
        await asyncio.gather(*(self._play(customer, start) for customer, start in zip(self.customers, self.starts,
                                                                                      strict=True)))

    async def _play(self, customer: Customer, start: float) -> None:
        await asyncio.sleep(start)
        story: Callable[[Customer], Awaitable[None]] = getattr(self, f"_{customer.story}")
        await story(customer)

    # --- events ----------------------------------------------------------------------------

    def _event(self, customer: Customer, kind: str, **fields: Any) -> dict[str, Any]:
        return {"event_id": f"{kind}-{uuid.UUID(int=self.rng.getrandbits(128))}", "type": kind,
                "customer_id": customer.customer_id, **fields}

    def _signup(self, customer: Customer, consent: str) -> dict[str, Any]:
        return self._event(customer, "customer_signed_up", traits={
            "email": customer.email, "first_name": "Chaos", "locale": self.rng.choice(["fr", "en"]),
            "consent": consent})

    def _cart(self, customer: Customer) -> dict[str, Any]:
        return self._event(customer, "cart_updated", properties={
            "cart_id": f"cart-{customer.customer_id}", "currency": "EUR", "value": 42.0,
            "items": [{"product_id": "p-1", "name": "Mug", "quantity": 2, "price": 21.0}]})

    def _order(self, customer: Customer) -> dict[str, Any]:
        return self._event(customer, "order_placed", properties={
            "order_id": f"order-{customer.customer_id}", "currency": "EUR", "value": 42.0,
            "items": [{"product_id": "p-1", "name": "Mug", "quantity": 2, "price": 21.0}]})

    async def _settle(self, customer: Customer, acted_at: float, horizon: float = HORIZON) -> None:
        customer.settle_at = max(customer.settle_at, acted_at + horizon)

    # --- stories ---------------------------------------------------------------------------

    async def _welcome(self, customer: Customer) -> None:
        acked = await self.api.events(self._signup(customer, "opted_in"))
        await self._settle(customer, acked)
        customer.expect(WELCOME, acked)

    async def _duplicate_events(self, customer: Customer) -> None:
        signup = self._signup(customer, "opted_in")
        customer.expect(WELCOME, await self.api.events(signup))
        await asyncio.sleep(self.rng.uniform(0.2, 2.0))
        viewed = {"type": "page_viewed", "customer_id": customer.customer_id,  # no id: derived from the content
                  "properties": {"url": "https://shop.example/mugs"}, "occurred_at": _iso(time.time())}
        acked = await self.api.events(signup, viewed)  # the sign-up again, in a batch
        await self.api.events(viewed)
        await self._settle(customer, acked)

    async def _doi_ignore(self, customer: Customer) -> None:
        acked = await self.api.events(self._signup(customer, "pending"))
        await self._settle(customer, acked)
        customer.expect([("double_opt_in", 1)], acked)

    async def _doi_confirm(self, customer: Customer) -> None:
        acked = await self.api.events(self._signup(customer, "pending"))
        await self._settle(customer, acked)
        customer.expect([("double_opt_in", 1)], acked)
        email = await await_email(self.sink, customer, "double_opt_in", 1)
        link = _find(email, "confirm")
        if link is None:
            return
        confirmed = await self.api.form(link, {"lang": "en"})
        await self._settle(customer, confirmed)
        customer.expect(WELCOME, confirmed)

    async def _cart_abandon(self, customer: Customer) -> None:
        customer.expect(WELCOME, await self.api.events(self._signup(customer, "opted_in")))
        await asyncio.sleep(1)
        acked = await self.api.events(self._cart(customer))
        await self._settle(customer, acked)
        customer.expect(CART, acked)

    async def _cart_order(self, customer: Customer) -> None:
        # the first welcome email is due at once and the order comes a moment later: whether it goes
        # first is a matter of timing, so it may come or not; the rest of the series must not
        signed_up = await self.api.events(self._signup(customer, "opted_in"))
        customer.expect(WELCOME[:1], signed_up, required=False)
        await asyncio.sleep(1)
        carted = await self.api.events(self._cart(customer))
        await asyncio.sleep(1)
        # the order takes the cart (no abandonment) and ends the welcome series
        acked = await self.api.events(self._order(customer))
        await self._settle(customer, acked)
        customer.expect([("post_purchase", 1)], acked)
        customer.ended(WELCOME[1:], signed_up, acked)
        customer.ended(CART, carted, acked)

    async def _order_cancel(self, customer: Customer) -> None:
        signed_up = await self.api.events(self._signup(customer, "opted_in"))
        customer.expect(WELCOME[:1], signed_up, required=False)
        await asyncio.sleep(1)
        ordered = await self.api.events(self._order(customer))
        customer.ended(WELCOME[1:], signed_up, ordered)
        await asyncio.sleep(1)
        cancelled = await self.api.events(self._event(
            customer, "order_cancelled", properties={"order_id": f"order-{customer.customer_id}"}))
        await self._settle(customer, cancelled)
        customer.ended([("post_purchase", 1)], ordered, cancelled)

    async def _unsubscribe_link(self, customer: Customer) -> None:
        acked = await self.api.events(self._signup(customer, "opted_in"))
        await self._settle(customer, acked)
        customer.expect(WELCOME[:1], acked)
        customer.expect(WELCOME[1:], acked, required=False)
        email = await await_email(self.sink, customer, "prospect_welcome", 1)
        if email is None:
            return
        url = str(email.message.get("List-Unsubscribe", "")).strip().strip("<>")
        customer.opted_out_at = await self.api.form(url, {"List-Unsubscribe": "One-Click"})
        await asyncio.sleep(2)
        # the backend's next sync says opted_in: an unsubscribe made through a link stays
        await self._settle(customer, await self.api.events(self._event(
            customer, "customer_updated", traits={"consent": "opted_in"})))

    async def _unsubscribe_api(self, customer: Customer) -> None:
        customer.expect(WELCOME, await self.api.events(self._signup(customer, "opted_in")), required=False)
        await asyncio.sleep(3)
        customer.opted_out_at = await self.api.events(self._event(customer, "unsubscribed"))
        await self._settle(customer, customer.opted_out_at)

    async def _category_out(self, customer: Customer) -> None:
        customer.expect(WELCOME, await self.api.events(self._signup(customer, "opted_in")))
        await asyncio.sleep(1)
        customer.expect(CART, await self.api.events(self._cart(customer)), required=False)
        await asyncio.sleep(2)
        customer.left["cart_reminders"] = await self.api.events(self._event(
            customer, "customer_updated", traits={"unsubscribed_categories": ["cart_reminders"]}))
        await self._settle(customer, customer.left["cart_reminders"])

    async def _preferences_page(self, customer: Customer) -> None:
        acked = await self.api.events(self._signup(customer, "opted_in"))
        await self._settle(customer, acked)
        customer.expect(WELCOME[:1], acked)
        customer.expect(WELCOME[1:], acked, required=False)
        email = await await_email(self.sink, customer, "prospect_welcome", 1)
        link = _find(email, "preferences")
        if link is None:
            return
        # keep cart reminders and news, leave offers (the welcome series)
        customer.left["offers"] = await self.api.form(link, {"action": "save", "receive": ["cart_reminders", "news"],
                                                             "lang": "fr"})
        await self._settle(customer, customer.left["offers"])


def _find(email: Arrival | None, kind: str) -> str | None:
    if email is None:
        return None
    found = _LINK[kind].search(email.body())
    return found.group(0) if found else None


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")
