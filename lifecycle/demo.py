"""`lifecycle demo`: a small shop's year on the virtual clock (journeys and a campaign), then every email
it sent."""

from __future__ import annotations

import sys
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from lifecycle.idle import PipelineWatch
from lifecycle.report import build_report, render
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings

START = "2025-01-06T09:00:00Z"


def _item(product_id: str, name: str, price: float, quantity: int = 1) -> dict[str, Any]:
    return {"product_id": product_id, "name": name, "quantity": quantity, "price": price}


def _cart(customer: str, cart_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    value = round(sum(i["price"] * i["quantity"] for i in items), 2)
    return {"event": {"type": "cart_updated", "customer_id": customer,
                      "properties": {"cart_id": cart_id, "currency": "EUR", "value": value, "items": items}}}


def _order(customer: str, order_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    value = round(sum(i["price"] * i["quantity"] for i in items), 2)
    return {"event": {"type": "order_placed", "customer_id": customer,
                      "properties": {"order_id": order_id, "currency": "EUR", "value": value, "items": items}}}


def _signup(customer: str, email: str, name: str, consent: str, **traits: str) -> dict[str, Any]:
    return {"event": {"type": "customer_signed_up", "customer_id": customer,
                      "traits": {"email": email, "first_name": name, "consent": consent, **traits}}}


def _view(customer: str, product_id: str, name: str, price: float) -> dict[str, Any]:
    return {"event": {"type": "product_viewed", "customer_id": customer,
                      "properties": {"product_id": product_id, "name": name, "price": price}}}


SHIRT = _item("p-shirt", "Linen shirt", 59.0)
MUG = _item("p-mug", "Stoneware mug", 18.0, 2)
COAT = _item("p-coat", "Wool coat", 189.0)
SOCKS = _item("p-socks", "Merino socks", 12.0, 3)


def demo_steps() -> list[dict[str, Any]]:
    """A shop's traffic: sign-ups, browsing, carts, orders, a campaign and months of silence."""
    return [
        _signup("demo-ana", "ana@example.com", "Ana", "opted_in", locale="fr"),
        _signup("demo-ben", "ben@example.com", "Ben", "pending"),
        _signup("demo-chloe", "chloe@example.com", "Chloé", "opted_in", birthday="1988-02-14",
                timezone="Europe/Paris"),
        {"advance": "20m"},
        _view("demo-ana", "p-shirt", "Linen shirt", 59.0),
        _cart("demo-ana", "cart-ana", [SHIRT]),
        _order("demo-chloe", "o-1001", [MUG]),
        {"advance": "3h"},
        {"event": {"type": "consent_confirmed", "customer_id": "demo-ben"}},
        _signup("demo-farid", "farid@example.com", "Farid", "opted_in"),
        _cart("demo-farid", "cart-farid", [SOCKS]),
        {"advance": "30m"},
        _cart("demo-farid", "cart-farid", []),
        {"advance": "1d2h"},
        _order("demo-ana", "o-1002", [SHIRT]),
        {"advance": "6d"},
        _order("demo-chloe", "o-1003", [COAT]),
        {"advance": "20d"},
        _signup("demo-gina", "gina@example.com", "Gina", "opted_in"),
        {"advance": "1d1h"},
        {"unsubscribe": "gina@example.com"},
        {"advance": "60d"},
        _order("demo-ben", "o-1004", [SOCKS, MUG]),
        {"advance": "20d"},
        # Ana reads the win-back email: engaged customers stay out of the sunset
        {"event": {"type": "email_clicked", "customer_id": "demo-ana",
                   "properties": {"journey": "win_back", "step": 1, "link": "shop"}}},
        # the summer sales, for every customer who ordered: 10:00 in each one's own time zone
        {"campaign": {"name": "summer_sales_2025", "category": "offers", "segment": {"orders_count": {"gte": 1}},
                      "template": "summer_sales", "send_at": "2025-06-25T10:00:00",
                      "coupon": {"kind": "percent", "amount": 15, "valid": "7d"}}},
        {"advance": "100d"},
        {"advance": "250d"},
    ]


async def run_demo(settings: Settings) -> int:
    engine = create_async_engine(settings.database_url)
    watch = PipelineWatch(settings, engine)
    await watch.start()
    runner = ScenarioRunner(settings, engine, watch)
    try:
        print(f"Playing a shop's year from {START} on the virtual clock...", file=sys.stderr)
        outcome = await runner.play({"name": "demo", "start": START, "steps": demo_steps()}, Path("demo"),
                                    check_end=False)
        delivered = runner.delivered
        async with engine.connect() as conn:
            skipped = (
                await conn.execute(
                    text(
                        "SELECT s.journey, s.step, s.reason, c.email FROM sends s"
                        " JOIN customers c USING (customer_id) WHERE s.status = 'skipped' ORDER BY s.due_at"
                    )
                )
            ).all()
        report = render(await build_report(engine, datetime.fromisoformat(START)), "table")
    finally:
        await runner.close()
        await watch.stop()
        await engine.dispose()
    if outcome.failures:
        for failure in outcome.failures:
            print(f"demo: {failure}", file=sys.stderr)
        return 1
    rows = [
        (parsedate_to_datetime(str(d.message["Date"])).strftime("%Y-%m-%d %H:%M"), d.to,
         f"campaign {d.campaign}" if d.campaign is not None else d.journey,
         "-" if d.campaign is not None else str(d.step), d.subject)
        for d in delivered
    ]
    rows.sort()
    headers = ("time (UTC)", "to", "journey", "step", "subject")
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    print(f"\n{len(rows)} emails sent")
    if skipped:
        print("\nSteps skipped, with the reason recorded:")
        for journey, step, reason, email in skipped:
            print(f"  {email:<20} {journey} step {step}: {reason}")
    print()
    print(report)
    return 0
