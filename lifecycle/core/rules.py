"""Lifecycle rules: a pure function from (state, input, now) to a decision.

No I/O and no clock reads: the stager loads the state, calls `apply_event` or
`apply_due`, and saves the decision in one transaction. Facts are computed from
`occurred_at`, never from arrival order, so any permutation of the same events
gives the same final state.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from lifecycle.core.state import CartState, ConsentFact, CustomerState, OrderFact, stamp
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.events import Event, EventType

PROFILE_TRAITS = ("email", "first_name", "last_name", "locale", "timezone", "birthday")


class DueKind:
    """Kinds of time-driven changes; a customer has at most one pending row per kind."""

    STAGE = "stage_expiry"
    CART = "cart_abandon"
    BIRTHDAY = "birthday"
    BROWSE = "browse_abandon"


# Browse abandonment: the same product viewed twice, or three views, within BROWSE_WINDOW; then no
# cart and no order for BROWSE_QUIET.
BROWSE_WINDOW = timedelta(hours=24)
BROWSE_QUIET = timedelta(hours=2)
BROWSE_KEPT = 50  # views kept per customer
BROWSE_PRODUCTS = 6  # products a browse_abandoned trigger carries, the most viewed first
BROWSE_EXIT_WINDOW = timedelta(days=7)  # a cart within this of a browse_abandoned is told (cart_updated)


@dataclass(frozen=True)
class RuleConfig:
    new_customer_days: int = 90
    lapsed_days: int = 365
    cart_abandon_minutes: float = 60
    backfill_hours: int = 24
    birthday_hour: int = 9
    soft_bounce_limit: int = 3  # soft bounces in a row (no open or click between) that suppress the address


@dataclass
class Decision:
    state: CustomerState
    triggers: list[Trigger] = field(default_factory=list)
    # kind -> new due time, or None to cancel; kinds absent are left as they are
    dues: dict[str, datetime | None] = field(default_factory=dict)


STAGES = ("prospect", "new", "active", "at_risk", "lapsed")  # every value compute_stage gives


def compute_stage(state: CustomerState, now: datetime, config: RuleConfig) -> str:
    counted = state.counted_orders()
    if not counted:
        return "prospect"
    last = max(o.placed_at for o in counted)
    age = now - last
    if age >= timedelta(days=config.lapsed_days):
        return "lapsed"
    if age >= timedelta(days=config.new_customer_days):
        return "at_risk"
    return "new" if len(counted) == 1 else "active"


def next_stage_change(state: CustomerState, now: datetime, config: RuleConfig) -> datetime | None:
    """When the stage would change with no new event: the stage expiry due time."""
    counted = state.counted_orders()
    if not counted:
        return None
    last = max(o.placed_at for o in counted)
    for days in (config.new_customer_days, config.lapsed_days):
        moment = last + timedelta(days=days)
        if moment > now:
            return moment
    return None


def parse_birthday(value: str) -> tuple[int, int] | None:
    """`YYYY-MM-DD` or `--MM-DD` to (month, day)."""
    text = value[2:] if value.startswith("--") else value[5:]
    try:
        month_s, day_s = text.split("-")
        return int(month_s), int(day_s)
    except ValueError:
        return None


def next_birthday(state: CustomerState, after: datetime, config: RuleConfig) -> datetime | None:
    """The next birthday moment at the configured hour in the customer's zone, strictly after `after`."""
    raw = state.traits.get("birthday")
    if not raw:
        return None
    parsed = parse_birthday(raw)
    if parsed is None:
        return None
    month, day = parsed
    zone = ZoneInfo(state.traits.get("timezone") or "UTC")
    local_after = after.astimezone(zone)
    for year in range(local_after.year, local_after.year + 9):
        # 29 February falls on the 28th in common years
        actual_day = min(day, calendar.monthrange(year, month)[1])
        moment = datetime.combine(date(year, month, actual_day), time(config.birthday_hour), tzinfo=zone)
        if moment > after:
            return moment.astimezone(after.tzinfo)
    return None


class _Applier:
    """Collects the effects of one input on one customer."""

    def __init__(self, state: CustomerState, now: datetime, cause_at: datetime, backfill: bool,
                 cause_id: str, config: RuleConfig) -> None:
        self.state = state
        self.now = now
        self.cause_at = cause_at
        self.backfill = backfill
        self.cause_id = cause_id
        self.config = config
        self.decision = Decision(state=state)
        self._stage_before = state.stage
        self._consent_before = state.consent
        self._birthday_inputs = (state.traits.get("birthday"), state.traits.get("timezone"))

    def emit(self, kind: TriggerType, data: dict[str, Any] | None = None, suffix: str = "") -> None:
        self.decision.triggers.append(
            Trigger(
                trigger_id=f"{self.cause_id}:{kind.value}{suffix}",
                type=kind,
                customer_id=self.state.customer_id,
                occurred_at=self.cause_at,
                backfill=self.backfill,
                data=data or {},
            )
        )

    def finish(self) -> Decision:
        state = self.state
        if state.consent != self._consent_before:
            self.emit(
                TriggerType.CONSENT_CHANGED,
                {"from": self._consent_before, "to": state.consent, "orders_count": len(state.counted_orders())},
            )
        new_stage = compute_stage(state, self.now, self.config)
        if new_stage != self._stage_before:
            state.stage = new_stage
            self.emit(TriggerType.STAGE_CHANGED, {"from": self._stage_before, "to": new_stage})
        self.decision.dues[DueKind.STAGE] = next_stage_change(state, self.now, self.config)
        if (state.traits.get("birthday"), state.traits.get("timezone")) != self._birthday_inputs:
            self.decision.dues[DueKind.BIRTHDAY] = next_birthday(state, self.now, self.config)
        return self.decision


def is_backfill(occurred_at: datetime, received_at: datetime, config: RuleConfig) -> bool:
    return received_at - occurred_at > timedelta(hours=config.backfill_hours)


def _proof(event: Event) -> dict[str, str | None]:
    """What a consent fact keeps of where its event came from (no origin: the API)."""
    origin = event.origin
    if origin is None:
        return {"source": "api"}
    return {"source": origin.source, "ip": origin.ip, "user_agent": origin.user_agent}


def apply_event(state: CustomerState, event: Event, now: datetime, config: RuleConfig,
                merging: CustomerState | None = None) -> Decision:
    """Apply one event (already known to be new) to a customer's state. `merging`: for a customer_merged
    event, the state held under its previous_id, which joins this one."""
    received_at = event.received_at or now
    applier = _Applier(state, now, event.occurred_at, is_backfill(event.occurred_at, received_at, config),
                       event.event_id, config)
    at = event.occurred_at
    kind = event.type
    state.first_seen_at = min(state.first_seen_at or at, at)

    if kind in (EventType.CUSTOMER_SIGNED_UP, EventType.CUSTOMER_UPDATED, EventType.CUSTOMER_IDENTIFIED):
        traits = event.traits.provided() if event.traits is not None else {}
        for name in PROFILE_TRAITS:
            if name in traits:
                value = traits[name]
                previous = state.traits.get(name)
                state.set_trait(name, None if value is None else str(value), at)
                if name == "email" and state.traits.get(name) != previous:
                    state.suppressed = None  # a suppression belongs to the address it was earned by
                    if previous is not None:  # soft bounces too; a first address is the one they were for
                        state.soft_bounces = []
        if "unsubscribed_categories" in traits:
            categories = traits["unsubscribed_categories"]
            chosen = sorted({str(c) for c in categories}) if isinstance(categories, list | tuple) else []
            state.set_trait("unsubscribed_categories", chosen, at)
            state.record_consent(ConsentFact(at, "categories", ",".join(chosen), **_proof(event)))
        if traits.get("consent") is not None:
            state.record_consent(ConsentFact(at, "trait", str(traits["consent"]), **_proof(event)))
        # identified: a sign-up the first time only (a library identifies the customer at every login)
        if kind is EventType.CUSTOMER_SIGNED_UP or (kind is EventType.CUSTOMER_IDENTIFIED
                                                    and state.signed_up_at is None):
            state.signed_up_at = min(state.signed_up_at or at, at)
            applier.emit(TriggerType.SIGNED_UP, {"consent": state.consent})
    elif kind is EventType.CONSENT_CONFIRMED:
        confirmed = _prop(event, "email")
        current = state.traits.get("email")
        # a confirmation link proves one address: it says nothing once the customer has another
        if confirmed is None or current is None or str(confirmed).lower() == str(current).lower():
            state.record_consent(ConsentFact(at, "confirmed", **_proof(event)))
    elif kind is EventType.UNSUBSCRIBED:
        state.record_consent(ConsentFact(at, "unsubscribed", **_proof(event)))
    elif kind is EventType.CUSTOMER_MERGED:
        if merging is not None and merging.customer_id != state.customer_id:
            _merge(applier, merging)
    elif kind is EventType.CART_UPDATED:
        _apply_cart(applier, event)
    elif kind is EventType.CART_LINE_CHANGED:
        _apply_cart_line(applier, event)
    elif kind is EventType.ORDER_PLACED:
        _apply_order(applier, event)
    elif kind in (EventType.ORDER_CANCELLED, EventType.ORDER_REFUNDED):
        order_id = str(_prop(event, "order_id"))
        fact = state.orders.get(order_id) or OrderFact(order_id=order_id)
        if not fact.voided:
            fact.voided = True
            applier.emit(TriggerType.ORDER_VOIDED, {"order_id": order_id, "reason": kind.value})
        state.orders[order_id] = fact
    elif kind in (EventType.EMAIL_OPENED, EventType.EMAIL_CLICKED):
        if state.last_engagement_at is None or at > state.last_engagement_at:
            state.last_engagement_at = at
            # the mailbox works: soft bounces before this are no longer in a row
            engaged = stamp(at)
            state.soft_bounces = [b for b in state.soft_bounces if b > engaged]
        if kind is EventType.EMAIL_CLICKED:
            state.last_click_at = max(state.last_click_at or at, at)
        applier.emit(
            TriggerType.ENGAGEMENT,
            {
                "kind": "clicked" if kind is EventType.EMAIL_CLICKED else "opened",
                "journey": _prop(event, "journey"),
                "step": _prop(event, "step"),
                "link": _prop(event, "link"),
                "message_id": _prop(event, "message_id"),
            },
        )
    elif kind is EventType.EMAIL_BOUNCED and _prop(event, "kind") == "soft":
        _soft_bounce(applier, at)
    elif kind in (EventType.EMAIL_BOUNCED, EventType.EMAIL_COMPLAINED):
        state.suppressed = "bounced" if kind is EventType.EMAIL_BOUNCED else "complained"
    elif kind is EventType.PRODUCT_VIEWED:
        product = _prop(event, "product_id")
        if product is not None:
            _apply_view(applier, event, str(product))
    elif kind is EventType.TRACK:
        applier.emit(TriggerType.TRACK, {"event": _prop(event, "event"),
                                         "attributes": dict(_prop(event, "attributes") or {})})
    # page_viewed and checkout_started only count as activity
    return applier.finish()


def _merge(applier: _Applier, source: CustomerState) -> None:
    """What the customer did under another id (an anonymous visit, an old id) joins their profile, as if
    each event had come under this id: traits and consent by event time, orders, views, the cart."""
    state = applier.state
    for name, at in source.trait_times.items():
        if name != "consent":  # consent comes from the facts below
            state.set_trait(name, source.traits.get(name), at)
    for fact in source.consent_log:
        state.record_consent(fact)
    for order_id, order in source.orders.items():
        state.orders.setdefault(order_id, order)
    for name in ("first_seen_at", "signed_up_at"):
        mine, theirs = getattr(state, name), getattr(source, name)
        setattr(state, name, min(mine or theirs, theirs or mine) if mine or theirs else None)
    for name in ("last_order_at_any", "last_engagement_at", "last_click_at"):
        mine, theirs = getattr(state, name), getattr(source, name)
        setattr(state, name, max(mine or theirs, theirs or mine) if mine or theirs else None)
    for product, (seen, name, price, currency) in source.viewed.items():
        state.record_view(product, seen, name, price, currency)
    cart = source.cart
    if cart is not None and cart.items and (state.cart is None or state.cart.updated_at < cart.updated_at) \
            and (state.last_order_at_any is None or state.last_order_at_any < cart.updated_at):
        _set_cart(applier, cart.cart_id, cart.items, cart.value, cart.currency, cart.updated_at)
    # the browsing that no cart or order of either ended since
    ended = max([t for t in (state.last_order_at_any, state.cart.updated_at if state.cart else None) if t],
                default=None)
    views = sorted({(p, seen) for p, seen in state.browsing + source.browsing
                    if ended is None or seen > stamp(ended)}, key=lambda v: v[1])
    if views:
        latest = datetime.fromisoformat(views[-1][1])
        state.browsing = [[p, seen] for p, seen in views if seen > stamp(latest - BROWSE_WINDOW)][-BROWSE_KEPT:]
        if not applier.backfill and browsing_qualifies(state.browsing):
            applier.decision.dues[DueKind.BROWSE] = latest + BROWSE_QUIET


def _soft_bounce(applier: _Applier, at: datetime) -> None:
    """A temporary failure: counted; soft_bounce_limit of them in a row (no open or click after the first)
    suppress the address like a hard bounce. A suppression stays even if an open older than the bounces
    arrives later: like the suppression list, it is only lifted by a new address."""
    state = applier.state
    if state.last_engagement_at is not None and at <= state.last_engagement_at:
        return  # the mailbox worked after this one
    bounced = stamp(at)
    if bounced not in state.soft_bounces:
        state.soft_bounces.append(bounced)
        state.soft_bounces.sort()
    limit = applier.config.soft_bounce_limit
    del state.soft_bounces[:-limit]  # only the last of the row matter
    if len(state.soft_bounces) >= limit and state.suppressed is None:
        state.suppressed = "bounced"


def _prop(event: Event, name: str) -> Any:
    props = event.properties
    if props is None:
        return None
    return getattr(props, name, None)


def _items(event: Event) -> list[dict[str, Any]]:
    """Line items as plain JSON values (money as float) for the state and the triggers."""
    return [
        {"product_id": item.product_id, "name": item.name, "quantity": int(item.quantity), "price": float(item.price)}
        for item in (_prop(event, "items") or [])
    ]


def _apply_view(applier: _Applier, event: Event, product: str) -> None:
    """Keep the view; browsing that qualifies is abandoned BROWSE_QUIET after its latest view. The views'
    times are stamps (text that compares as the instants do): a state is loaded and saved often, and
    parsing every view's time each time cost the stager about a tenth of its throughput."""
    state = applier.state
    seen = stamp(event.occurred_at)
    price = _prop(event, "price")
    state.record_view(product, seen, _prop(event, "name"), None if price is None else float(price),
                      _prop(event, "currency"))
    browsing = state.browsing
    browsing.append([product, seen])
    if len(browsing) > 1 and browsing[-2][1] > seen:
        browsing.sort(key=lambda v: v[1])  # a view that arrived late
    latest_seen = browsing[-1][1]
    latest = datetime.fromisoformat(latest_seen)
    if browsing[0][1][:10] != latest_seen[:10] or len(browsing) > BROWSE_KEPT:  # maybe a day old: prune
        cutoff = stamp(latest - BROWSE_WINDOW)
        state.browsing = [v for v in browsing if v[1] > cutoff][-BROWSE_KEPT:]
    if not applier.backfill and browsing_qualifies(state.browsing):
        applier.decision.dues[DueKind.BROWSE] = latest + BROWSE_QUIET


def browsing_qualifies(views: list[list[str]]) -> bool:
    """The same product viewed at least twice, or three views of any products."""
    return len(views) >= 3 or len({product for product, _ in views}) < len(views)


def _browse_ends(applier: _Applier, at: datetime, cart_id: str | None = None) -> None:
    """A cart or an order ends the browsing: nothing is abandoned; a recent browse run is told of a cart."""
    state = applier.state
    state.browsing = []
    applier.decision.dues[DueKind.BROWSE] = None
    if cart_id is not None and state.browse_abandoned_at is not None \
            and timedelta(0) <= at - state.browse_abandoned_at <= BROWSE_EXIT_WINDOW:
        applier.emit(TriggerType.CART_UPDATED, {"cart_id": cart_id})


def _browsed_products(state: CustomerState, views: list[list[str]]) -> list[dict[str, Any]]:
    """The viewed products, most viewed first (then the latest viewed), with their latest known details."""
    counts: dict[str, int] = {}
    last: dict[str, str] = {}
    for product, seen in views:
        counts[product] = counts.get(product, 0) + 1
        last[product] = max(last.get(product, seen), seen)
    ranked = sorted(counts, key=lambda p: (counts[p], last[p]), reverse=True)[:BROWSE_PRODUCTS]
    found = []
    for product in ranked:
        _, name, price, currency = state.viewed.get(product, [None, None, None, None])
        found.append({"product_id": product, "name": name or product, "price": price, "currency": currency,
                      "views": counts[product], "last_viewed_at": last[product]})
    return found


def _apply_cart(applier: _Applier, event: Event) -> None:
    state = applier.state
    at = event.occurred_at
    if state.cart is not None and state.cart.updated_at > at:
        return  # an older cart update than the one we hold
    _set_cart(applier, str(_prop(event, "cart_id")), _items(event), float(_prop(event, "value") or 0.0),
              str(_prop(event, "currency") or ""), at, _prop(event, "checkout_url"))


def _apply_cart_line(applier: _Applier, event: Event) -> None:
    """One line added or removed: the cart the customer holds (the same cart_id), changed by it. Lines
    add up whatever order they arrive in; the cart's time is the latest of its changes."""
    state = applier.state
    cart_id = str(_prop(event, "cart_id"))
    held = state.cart if state.cart is not None and state.cart.cart_id == cart_id else None
    items = [dict(item) for item in held.items] if held is not None else []
    product = str(_prop(event, "product_id"))
    quantity = _prop(event, "quantity")
    line = next((item for item in items if item["product_id"] == product), None)
    if _prop(event, "change") == "added":
        price = _prop(event, "price")
        if line is None:
            line = {"product_id": product, "name": str(_prop(event, "name") or product), "quantity": 0,
                    "price": float(price) if price is not None else 0.0}
            items.append(line)
        elif price is not None:
            line["price"] = float(price)
        line["quantity"] = int(line["quantity"]) + int(quantity or 1)
    elif line is not None:
        line["quantity"] = int(line["quantity"]) - int(quantity) if quantity is not None else 0
        items = [item for item in items if int(item["quantity"]) > 0]
    currency = str(_prop(event, "currency") or (held.currency if held is not None else ""))
    value = round(sum(float(item["price"]) * int(item["quantity"]) for item in items), 2)
    at = max(event.occurred_at, held.updated_at) if held is not None else event.occurred_at
    _set_cart(applier, cart_id, items, value, currency, at, held.checkout_url if held is not None else None)


def _set_cart(applier: _Applier, cart_id: str, items: list[dict[str, Any]], value: float, currency: str,
              at: datetime, checkout_url: str | None = None) -> None:
    state = applier.state
    if not items:
        had_items = state.cart is not None and state.cart.items
        state.cart = CartState(cart_id=cart_id, updated_at=at, items=[], value=0.0, currency=currency)
        applier.decision.dues[DueKind.CART] = None
        if had_items:
            applier.emit(TriggerType.CART_EMPTIED, {"cart_id": cart_id})
        return
    state.cart = CartState(cart_id=cart_id, updated_at=at, items=items, value=value, currency=currency,
                           checkout_url=checkout_url)
    _browse_ends(applier, at, cart_id)
    if state.last_order_at_any is None or state.last_order_at_any < at:
        applier.decision.dues[DueKind.CART] = at + timedelta(minutes=applier.config.cart_abandon_minutes)


def _apply_order(applier: _Applier, event: Event) -> None:
    state = applier.state
    at = event.occurred_at
    order_id = str(_prop(event, "order_id"))
    fact = state.orders.get(order_id) or OrderFact(order_id=order_id)
    fact.placed_at = at
    fact.value = float(_prop(event, "value") or 0.0)
    fact.currency = str(_prop(event, "currency") or "")
    fact.items = _items(event)
    state.orders[order_id] = fact
    state.last_order_at_any = max(state.last_order_at_any or at, at)
    _browse_ends(applier, at)
    if state.cart is not None and state.cart.updated_at <= at:
        # the order takes the cart: nothing to abandon any more
        state.cart = None
        applier.decision.dues[DueKind.CART] = None
    applier.emit(
        TriggerType.ORDER_PLACED,
        {"order_id": order_id, "value": fact.value, "currency": fact.currency, "items": fact.items},
    )


def apply_due(state: CustomerState, kind: str, due_at: datetime, now: datetime, config: RuleConfig) -> Decision:
    """Apply a time-driven change that fell due at `due_at`."""
    backfill = now - due_at > timedelta(hours=config.backfill_hours)
    cause_id = f"due:{kind}:{state.customer_id}:{due_at.isoformat()}"
    applier = _Applier(state, due_at, due_at, backfill, cause_id, config)
    if kind == DueKind.CART:
        cart = state.cart
        if cart is not None and cart.items and not cart.abandoned:
            cart.abandoned = True
            data: dict[str, Any] = {"cart_id": cart.cart_id, "items": cart.items, "value": cart.value,
                                    "currency": cart.currency}
            if cart.checkout_url is not None:
                data["checkout_url"] = cart.checkout_url  # the emails' button goes there
            applier.emit(TriggerType.CART_ABANDONED, data)
        applier.decision.dues[DueKind.CART] = None
    elif kind == DueKind.BROWSE:
        since = stamp(due_at - BROWSE_QUIET - BROWSE_WINDOW)
        views = [v for v in state.browsing if v[1] > since]
        if state.traits.get("email") and browsing_qualifies(views):
            applier.emit(TriggerType.BROWSE_ABANDONED, {"products": _browsed_products(state, views),
                                                         "views": len(views)})
            state.browse_abandoned_at = due_at
        state.browsing = []
        applier.decision.dues[DueKind.BROWSE] = None
    elif kind == DueKind.BIRTHDAY:
        if state.traits.get("birthday"):
            local_year = due_at.astimezone(ZoneInfo(state.traits.get("timezone") or "UTC")).year
            applier.emit(TriggerType.BIRTHDAY, {"year": local_year})
        decision = applier.finish()
        decision.dues[DueKind.BIRTHDAY] = next_birthday(state, due_at, config)
        return decision
    # stage expiry needs nothing beyond the recomputation in finish()
    return applier.finish()
