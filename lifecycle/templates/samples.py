"""Sample data: what `check` renders every template of every locale with."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from lifecycle.templates.links import Links

SAMPLE_SHOP_URL = "https://shop.example"
# every template must show it (the footer of _base.mjml does): `check` looks for it in both parts
SAMPLE_POSTAL_ADDRESS = "Maison Lin, 12 rue des Lilas, 75011 Paris, France"


def _sample_links() -> Links:
    return Links(SAMPLE_SHOP_URL,
                 {"unsubscribe": f"{SAMPLE_SHOP_URL}/u/sample", "preferences": f"{SAMPLE_SHOP_URL}/p/sample",
                  "confirm": f"{SAMPLE_SHOP_URL}/c/sample"},
                 lambda index: f"https://track.example/t/c/sample-{index}")


_SAMPLE_BASE: dict[str, Any] = {
    "customer": {"customer_id": "c-sample", "email": "ana@example.com", "first_name": "Ana", "last_name": "Martin",
                 "locale": "fr", "timezone": "Europe/Paris", "birthday": "1990-07-07"},
    "shop": {"name": "Maison Lin", "url": SAMPLE_SHOP_URL, "logo_url": f"{SAMPLE_SHOP_URL}/logo.png",
             "email": "hello@shop.example", "address": SAMPLE_POSTAL_ADDRESS},
    "journey": "sample",
    "step": 1,
    "now": datetime(2026, 7, 7, 9, 0, tzinfo=UTC),
    # the union of every trigger's data, so that each journey's templates find theirs
    "context": {
        "cart_id": "k1", "order_id": "o1", "currency": "EUR", "value": 128.0, "year": 2026,
        "from": "prospect", "to": "new", "consent": "pending", "orders_count": 0,
        "views": 4,
        "products": [
            {"product_id": "p1", "name": "Linen shirt", "price": 59.0, "currency": "EUR", "views": 2,
             "last_viewed_at": "2026-07-07T07:00:00+00:00"},
            {"product_id": "p9", "name": "p9", "price": None, "currency": None, "views": 1,
             "last_viewed_at": "2026-07-07T06:00:00+00:00"},
        ],
        "items": [
            {"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0},
            {"product_id": "p2", "name": "Wool scarf", "quantity": 2, "price": 34.5,
             "image_url": f"{SAMPLE_SHOP_URL}/media/scarf.jpg"},
        ],
    },
}
_SAMPLE_RECOMMENDATIONS = [
    {"product_id": f"p{n}", "name": name, "price": price, "currency": "EUR",
     "url": f"{SAMPLE_SHOP_URL}/products/p{n}", "image_url": f"{SAMPLE_SHOP_URL}/images/p{n}.jpg"}
    for n, name, price in ((3, "Silk tie", 35.0), (4, "Felt hat", 70.0), (5, "Canvas tote", 24.0))
]
_SAMPLE_EXTRAS: tuple[dict[str, Any], ...] = (
    # everything: a percent coupon with its offer, a gold customer, three recommendations
    {"coupon": {"code": "AC-7K2Q9", "kind": "percent", "amount": 10.0, "currency": "EUR",
                "expires_at": datetime(2026, 7, 10, 21, 59, 59, tzinfo=UTC)},
     "offer": {"percent": 10.0}, "tier": "gold", "recommendations": _SAMPLE_RECOMMENDATIONS},
    # nothing optional, and no first name: every `is defined` fallback
    {"customer": {"first_name": None, "last_name": None, "locale": None, "timezone": "UTC"}},
    # a fixed coupon, no offer, an empty recommendation list, another zone and locale variant
    {"coupon": {"code": "WB-55XR2", "kind": "fixed", "amount": 10.0, "currency": "EUR",
                "expires_at": datetime(2026, 7, 21, 3, 59, 59, tzinfo=UTC)},
     "tier": "silver", "recommendations": [],
     "customer": {"locale": "en-GB", "timezone": "America/New_York"}},
)


def sample_contexts() -> list[dict[str, Any]]:
    """Contexts that together take every branch of the shipped templates (fresh links each)."""
    contexts = []
    for extras in _SAMPLE_EXTRAS:
        context = copy.deepcopy(_SAMPLE_BASE)
        for key, value in copy.deepcopy(extras).items():
            if key == "customer":
                context["customer"].update(value)
            else:
                context[key] = value
        context["links"] = _sample_links()
        contexts.append(context)
    return contexts


SAMPLE_CONTEXT: dict[str, Any] = sample_contexts()[0]
