"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.fuzz.hooks): generated requests kept inside the rules
the OpenAPI document states in words because JSON Schema cannot say them. Every check stays on.

- an event's `occurred_at` is at most 5 minutes after the server receives it (relative to "now");
- in a journey, the ids given to send steps differ, variant names differ, and a coupon's `reuse_step`
  names an earlier send step;
- in a campaign, variant names differ.

Only values that would break one of these rules are changed, into values that keep the request's
other properties: a request the fuzzer built to be invalid stays invalid.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis


def _past(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return value
    if moment.tzinfo is None or moment <= datetime.now(UTC) + timedelta(minutes=4):
        return value
    return (datetime.now(UTC) - timedelta(days=1)).isoformat().replace("+00:00", "Z")


def _event(event: object) -> object:
    if isinstance(event, dict) and "occurred_at" in event:
        return {**event, "occurred_at": _past(event["occurred_at"])}
    return event


def _distinct_variants(given: list[Any]) -> list[Any]:
    """The variants, their names made to differ."""
    names: set[str] = set()
    variants = []
    for i, variant in enumerate(given):
        if isinstance(variant, dict) and isinstance(variant.get("name"), str):
            variant = dict(variant)
            while variant["name"] in names:
                variant["name"] += f"-{i}"
            names.add(variant["name"])
        variants.append(variant)
    return variants


def _journey(journey: dict[str, Any]) -> dict[str, Any]:
    steps = journey.get("steps")
    if not isinstance(steps, list):
        return journey
    ids: set[str] = set()
    number = 0
    fixed: list[object] = []
    for step in steps:
        send = step.get("send") if isinstance(step, dict) else None
        if not isinstance(send, dict):
            fixed.append(step)
            continue
        number += 1
        send = dict(send)
        if isinstance(send.get("id"), str):
            while send["id"] in ids:
                send["id"] = (send["id"][:60] + f"-{number}")[-64:].lstrip("-_.:") or f"s{number}"
            ids.add(send["id"])
        if isinstance(send.get("variants"), list):
            send["variants"] = _distinct_variants(send["variants"])
        coupon = send.get("coupon")
        reuse = coupon.get("reuse_step") if isinstance(coupon, dict) else None
        if isinstance(coupon, dict) and isinstance(reuse, int | float) and not isinstance(reuse, bool) \
                and float(reuse).is_integer() and reuse >= number:
            # only an earlier step can be reused: the first send step cannot reuse one
            send["coupon"] = {**coupon, "reuse_step": number - 1} if number > 1 else \
                {k: v for k, v in coupon.items() if k != "reuse_step"} | {"amount": 10}
        fixed.append({**step, "send": send})
    return {**journey, "steps": fixed}


@schemathesis.hook("map_body")
def within_the_stated_rules(ctx: Any, body: Any) -> Any:
    path = ctx.operation.path
    if path == "/v1/events":
        if isinstance(body, dict) and isinstance(body.get("events"), list):
            return {**body, "events": [_event(e) for e in body["events"]]}
        return _event(body)
    if path == "/v1/admin/journeys" and isinstance(body, dict):
        return _journey(body)
    if path == "/v1/admin/campaigns" and isinstance(body, dict):
        return _campaign(body)
    return body


def _campaign(campaign: dict[str, Any]) -> dict[str, Any]:
    fixed = dict(campaign)
    if isinstance(fixed.get("variants"), list):
        fixed["variants"] = _distinct_variants(fixed["variants"])
    return fixed
