"""A customer's lifecycle state, as the rules see it (pure data, JSON round-trip)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def _dt(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def stamp(value: datetime) -> str:
    """An instant as fixed-width UTC text: two stamps compare as the instants do."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class OrderFact:
    order_id: str
    placed_at: datetime | None = None  # None while only a cancellation was seen
    value: float = 0.0
    currency: str = ""
    items: list[dict[str, Any]] = field(default_factory=list)
    voided: bool = False  # cancelled or refunded: not counted

    def to_json(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "placed_at": _iso(self.placed_at), "value": self.value,
                "currency": self.currency, "items": self.items, "voided": self.voided}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OrderFact:
        return cls(order_id=data["order_id"], placed_at=_dt(data.get("placed_at")), value=data.get("value", 0.0),
                   currency=data.get("currency", ""), items=data.get("items", []), voided=data.get("voided", False))


@dataclass
class CountedOrder:
    order_id: str
    placed_at: datetime
    value: float


@dataclass
class CartState:
    cart_id: str
    updated_at: datetime
    items: list[dict[str, Any]]
    value: float
    currency: str
    abandoned: bool = False
    checkout_url: str | None = None  # where the customer takes the cart up again, when the shop said

    def to_json(self) -> dict[str, Any]:
        data = {"cart_id": self.cart_id, "updated_at": self.updated_at.isoformat(), "items": self.items,
                "value": self.value, "currency": self.currency, "abandoned": self.abandoned}
        if self.checkout_url is not None:
            data["checkout_url"] = self.checkout_url
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CartState:
        return cls(cart_id=data["cart_id"], updated_at=datetime.fromisoformat(data["updated_at"]),
                   items=data["items"], value=data["value"], currency=data["currency"],
                   abandoned=data.get("abandoned", False), checkout_url=data.get("checkout_url"))


CONSENT_LOG_LIMIT = 100  # consent facts kept per customer; the oldest go first
VIEWED_LIMIT = 50  # products whose latest view is kept per customer (segments' viewed_product); the oldest go

# At the same instant an opt-out outranks a confirmation, which outranks a trait: ties never depend on order.
_FACT_RANK = {"categories": 0, "trait": 0, "confirmed": 1, "unsubscribed": 2}


@dataclass(frozen=True)
class ConsentFact:
    """One thing said about a customer's consent: a `consent` trait (`value`), a confirmed double
    opt-in, an unsubscribe the customer made (a link, a page, an `unsubscribed` event), or the
    categories they left (`value`: their names, comma-separated). With its proof: where it came
    from (`source`: api, import, link or page) and, where the customer acted, their IP and browser."""

    at: datetime
    kind: str  # trait | confirmed | unsubscribed | categories
    value: str | None = None  # the trait's value
    source: str | None = None  # None: facts recorded before sources were
    ip: str | None = None
    user_agent: str | None = None

    def order(self) -> tuple[datetime, int, str]:
        return (self.at, _FACT_RANK[self.kind], self.value or "")

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"at": self.at.isoformat(), "kind": self.kind, "value": self.value}
        for name in ("source", "ip", "user_agent"):
            if (given := getattr(self, name)) is not None:
                data[name] = given
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConsentFact:
        return cls(datetime.fromisoformat(data["at"]), data["kind"], data.get("value"), data.get("source"),
                   data.get("ip"), data.get("user_agent"))


def derive_consent(facts: list[ConsentFact]) -> tuple[str | None, bool]:
    """(consent, sticky) from every fact in event-time order, so any arrival order gives the same answer.

    An unsubscribe the customer made is sticky: a later `consent: opted_in` trait (a backend import,
    a sync) does not undo it. Only a fresh double opt-in does: a `pending` trait (signing up again),
    then a confirmation. A `pending` or `opted_out` trait is always taken.
    """
    consent: str | None = None
    sticky = False
    for fact in sorted(facts, key=ConsentFact.order):
        if fact.kind == "categories":
            continue  # one kind of email left, not consent as a whole
        if fact.kind == "unsubscribed":
            consent, sticky = "opted_out", True
        elif fact.kind == "confirmed":
            if sticky and consent != "pending":
                continue  # an old confirmation link is no fresh double opt-in
            consent, sticky = "opted_in", False
        elif not (sticky and fact.value == "opted_in"):
            consent = fact.value
    return consent, sticky


@dataclass
class CustomerState:
    customer_id: str
    traits: dict[str, Any] = field(default_factory=dict)
    # per trait (and "consent"), the occurred_at of the value we hold: last writer by event time wins
    trait_times: dict[str, datetime] = field(default_factory=dict)
    consent: str | None = None  # derived from consent_log
    consent_log: list[ConsentFact] = field(default_factory=list)
    stage: str | None = None
    orders: dict[str, OrderFact] = field(default_factory=dict)
    cart: CartState | None = None
    signed_up_at: datetime | None = None
    first_seen_at: datetime | None = None
    last_order_at_any: datetime | None = None  # includes voided orders: they still took the cart
    last_engagement_at: datetime | None = None
    last_click_at: datetime | None = None
    suppressed: str | None = None
    # product id -> [its latest view as a stamp(), name, price, currency as the latest views gave them].
    # Times stay text, so loading and saving a state (many times a second) parses none of them.
    viewed: dict[str, list[Any]] = field(default_factory=dict)
    # the product views of the last 24 hours, oldest first (browse abandonment): [product id, stamp]
    browsing: list[list[str]] = field(default_factory=list)
    browse_abandoned_at: datetime | None = None  # the latest browse_abandoned trigger
    # the soft bounces since the last open or click, as stamps, oldest first (at most the limit that suppresses)
    soft_bounces: list[str] = field(default_factory=list)

    def record_view(self, product_id: str, seen: str, name: str | None = None, price: float | None = None,
                    currency: str | None = None) -> None:
        """The latest view (a stamp) of each product and its latest details, for at most VIEWED_LIMIT products
        (the most recently viewed)."""
        held = self.viewed.get(product_id)
        if held is None:
            self.viewed[product_id] = [seen, name, price, currency]
        elif held[0] <= seen:
            self.viewed[product_id] = [seen, name or held[1], held[2] if price is None else price,
                                       currency or held[3]]
        else:
            return
        if len(self.viewed) > VIEWED_LIMIT:
            oldest = sorted(self.viewed, key=lambda p: (self.viewed[p][0], p))[: len(self.viewed) - VIEWED_LIMIT]
            for product in oldest:
                del self.viewed[product]

    def set_trait(self, name: str, value: str | list[str] | None, at: datetime) -> None:
        """Last writer by event time wins; None clears the trait."""
        held = self.trait_times.get(name)
        if held is None or at >= held:
            if value is None:
                self.traits.pop(name, None)
            else:
                self.traits[name] = value
            self.trait_times[name] = at

    def record_consent(self, fact: ConsentFact) -> None:
        """Add a consent fact (a repeated one changes nothing) and derive the consent again."""
        if fact not in self.consent_log:
            self.consent_log.append(fact)
            self.consent_log.sort(key=ConsentFact.order)
            del self.consent_log[:-CONSENT_LOG_LIMIT]
        self.consent, _ = derive_consent(self.consent_log)

    @property
    def opt_out_is_sticky(self) -> bool:
        return derive_consent(self.consent_log)[1]

    def counted_orders(self) -> list[CountedOrder]:
        return [
            CountedOrder(o.order_id, o.placed_at, o.value)
            for o in self.orders.values()
            if o.placed_at is not None and not o.voided
        ]

    def order_summary(self) -> dict[str, Any]:
        counted = self.counted_orders()
        times = [o.placed_at for o in counted]
        return {
            "orders_count": len(counted),
            "total_spent": round(sum(o.value for o in counted), 2),
            "first_order_at": min(times) if times else None,
            "last_order_at": max(times) if times else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "traits": self.traits,
            "trait_times": {k: v.isoformat() for k, v in self.trait_times.items()},
            "consent": self.consent,
            "consent_log": [fact.to_json() for fact in self.consent_log],
            "stage": self.stage,
            "orders": {k: v.to_json() for k, v in self.orders.items()},
            "cart": self.cart.to_json() if self.cart else None,
            "signed_up_at": _iso(self.signed_up_at),
            "first_seen_at": _iso(self.first_seen_at),
            "last_order_at_any": _iso(self.last_order_at_any),
            "last_engagement_at": _iso(self.last_engagement_at),
            "last_click_at": _iso(self.last_click_at),
            "suppressed": self.suppressed,
            "viewed": self.viewed,
            "browsing": self.browsing,
            "browse_abandoned_at": _iso(self.browse_abandoned_at),
            "soft_bounces": self.soft_bounces,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CustomerState:
        return cls(
            customer_id=data["customer_id"],
            traits=dict(data.get("traits", {})),
            trait_times={k: datetime.fromisoformat(v) for k, v in data.get("trait_times", {}).items()},
            consent=data.get("consent"),
            consent_log=_consent_log(data),
            stage=data.get("stage"),
            orders={k: OrderFact.from_json(v) for k, v in data.get("orders", {}).items()},
            cart=CartState.from_json(data["cart"]) if data.get("cart") else None,
            signed_up_at=_dt(data.get("signed_up_at")),
            first_seen_at=_dt(data.get("first_seen_at")),
            last_order_at_any=_dt(data.get("last_order_at_any")),
            last_engagement_at=_dt(data.get("last_engagement_at")),
            last_click_at=_dt(data.get("last_click_at")),
            suppressed=data.get("suppressed"),
            viewed={k: v if isinstance(v, list) else [v, None, None, None] for k, v in data.get("viewed", {}).items()},
            # [product id, stamp] pairs; anything else (an older shape) is dropped, not misread
            browsing=[v for v in data.get("browsing", []) if isinstance(v, list)],
            browse_abandoned_at=_dt(data.get("browse_abandoned_at")),
            soft_bounces=[b for b in data.get("soft_bounces", []) if isinstance(b, str)],
        )


def _consent_log(data: dict[str, Any]) -> list[ConsentFact]:
    if "consent_log" in data:
        return [ConsentFact.from_json(item) for item in data["consent_log"]]
    # a state saved before the log existed: its consent becomes one trait fact at the time it was set
    consent, at = data.get("consent"), data.get("trait_times", {}).get("consent")
    return [ConsentFact(datetime.fromisoformat(at), "trait", consent)] if consent and at else []
