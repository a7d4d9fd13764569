"""The benchmark's pure parts: scaling, percentiles, duplicate counting, the JSON object, the workloads."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime

import pytest

from bench.common import (
    ISSUE_KEYS,
    JSON_KEYS,
    Delivery,
    Results,
    Row,
    Scale,
    count_duplicates,
    percentile,
    spread_rate,
    table,
)
from bench.main import parse_args
from bench.tick import PLACEHOLDER, _records
from bench.workload import EVENTS_PER_CUSTOMER, mixed_events, parsed, pipeline_events
from lifecycle.events import Event, EventType


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1 .. 100
    assert percentile(values, 0.5) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2  # unsorted input
    assert percentile([7.0], 0.99) == 7
    assert percentile([1.0, 2.0], 0.99) == 2  # never below the largest share asked for


def test_percentile_refuses_nothing_and_bad_fractions() -> None:
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile([1.0], 0)


def test_scale_multiplies_counts_and_durations_with_floors() -> None:
    smoke = Scale(0.02)
    assert smoke.count(100_000) == 2_000
    assert smoke.count(5_000) == 100
    assert smoke.count(1_000_000) == 20_000
    assert smoke.count(20_000, 100) == 400
    assert smoke.count(10, 4) == 4  # the floor
    assert smoke.seconds(60, 5) == 5
    assert Scale(0.5).seconds(60, 5) == 30
    assert Scale().count(5_000) == 5_000
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError):
            Scale(bad)


def _at(message_id: str, to: str, journey: str = "prospect_welcome", step: int = 1, at: float = 0.0) -> Delivery:
    return Delivery(message_id, to, journey, step, at)


def test_duplicates_count_repeated_message_ids_and_repeated_steps() -> None:
    assert count_duplicates([]) == 0
    once = [_at("<1>", "a@x"), _at("<2>", "b@x"), _at("<3>", "a@x", step=2), _at("<4>", "a@x", journey="other")]
    assert count_duplicates(once) == 0
    assert count_duplicates([*once, _at("<1>", "a@x")]) == 1  # the same message again
    assert count_duplicates([*once, _at("<9>", "B@x")]) == 1  # another message for the same step
    assert count_duplicates([_at("<1>", "a@x")] * 3) == 2


def test_spread_rate_is_intervals_over_the_span() -> None:
    assert spread_rate([]) is None
    assert spread_rate([5.0]) is None
    assert spread_rate([10.0, 11.0, 12.0]) == pytest.approx(1.0)


def test_json_object_has_exactly_the_issue_keys_and_todays() -> None:
    assert set(ISSUE_KEYS) == {
        "ingest_events_per_s", "ingest_raw_per_s", "ingest_ratio", "stager_events_per_s",
        "dispatcher_emails_per_s", "smtp_raw_per_s", "dispatcher_ratio", "dispatcher_dkim_ratio",
        "dispatcher_distinct_ratio",
        "latency_p50_s", "latency_p99_s", "tick_10k_s", "tick_1m_s", "tick_ratio",
        "replicas_2_emails_per_s", "replicas_2_duplicates",
    }
    assert all(key.startswith(("pipeline_", "campaign_")) for key in JSON_KEYS if key not in ISSUE_KEYS)
    results = Results()
    results.set("ingest_events_per_s", 1234.56789)
    results.set("replicas_2_duplicates", 0)
    out = json.loads(json.dumps(results.as_json()))
    assert list(out) == list(JSON_KEYS)
    assert out["ingest_events_per_s"] == 1234.5679
    assert out["replicas_2_duplicates"] == 0
    assert out["tick_ratio"] is None  # a phase that did not run
    with pytest.raises(KeyError):
        results.set("made_up_per_s", 1.0)


def test_table_has_value_baseline_and_ratio() -> None:
    text = table([Row("a figure", 500.0, 1000.0, "/s"), Row("a delay (s)", 0.25, unit=" s"), Row("dupes", 0)])
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "value", "raw", "baseline", "ratio"]
    assert lines[1].split()[-3:] == ["500", "1,000", "0.50"]
    assert lines[2].split()[-1] == "0.250"
    assert lines[3].split()[-1] == "0"


def test_phases_and_scale_arguments() -> None:
    args = parse_args(["--scale", "0.02", "--phases", "latency,ingest"])
    assert args.chosen == ["ingest", "dispatcher", "latency"]  # in order; latency needs the dispatcher's figure
    assert args.scale_ == Scale(0.02)
    assert parse_args([]).chosen == ["ingest", "stager", "dispatcher", "latency", "tick", "pipeline", "replicas",
                                     "campaign"]
    with pytest.raises(SystemExit):
        parse_args(["--phases", "nonsense"])
    with pytest.raises(SystemExit):
        parse_args(["--scale", "0"])


def test_the_stager_mix_is_valid_events_in_the_apis_wire_format() -> None:
    raw = mixed_events("t", 30, datetime(2026, 1, 1, tzinfo=UTC))
    assert len(raw) == 30
    events = parsed(raw, datetime(2026, 1, 1, tzinfo=UTC))
    kinds = Counter(e.type for e in events)
    assert kinds == {EventType.CUSTOMER_SIGNED_UP: 3, EventType.PRODUCT_VIEWED: 18, EventType.CART_UPDATED: 6,
                     EventType.ORDER_PLACED: 3}
    assert EVENTS_PER_CUSTOMER == 10
    assert len({(e.customer_id, e.event_id) for e in events}) == 30
    signup = events[0]
    assert signup.traits is not None and signup.traits.consent == "opted_in" and signup.traits.email
    assert Event.from_message(signup.to_message()) == signup


def test_todays_workload_is_one_signup_and_views_per_customer() -> None:
    events = parsed(pipeline_events("p", 3, 2, datetime(2026, 1, 1, tzinfo=UTC)), datetime(2026, 1, 1, tzinfo=UTC))
    assert [e.type for e in events[:3]] == [EventType.CUSTOMER_SIGNED_UP] + [EventType.PRODUCT_VIEWED] * 2
    assert len(events) == 9


def test_tick_rows_are_the_template_under_each_id() -> None:
    template = {"state": {"customer_id": PLACEHOLDER, "traits": {"email": f"{PLACEHOLDER}@example.com"}},
                "stage": "new", "consent": "opted_in", "email": f"{PLACEHOLDER}@example.com", "suppressed": None,
                "last_engagement_at": None, "orders_count": 1, "total_spent": 10.75, "first_order_at": None,
                "last_order_at": None, "updated_at": None}
    rows = list(_records(template, range(2), "c"))
    assert [r[0] for r in rows] == ["c-0", "c-1"]
    assert json.loads(rows[1][1]) == {"customer_id": "c-1", "traits": {"email": "c-1@example.com"}}
    assert rows[1][4] == "c-1@example.com"
    assert str(rows[0][8]) == "10.75"
