"""Segments: checking (every problem named by its field) and compiling (every condition null-safe)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lifecycle.core.segments import (
    All,
    AnyOf,
    Not,
    OneOf,
    Products,
    Range,
    Recency,
    SegmentError,
    TraitIs,
    parse_filter,
    parse_segment,
)
from lifecycle.db.segments import audience_condition, compile_filter
from lifecycle.segment_files import SegmentFileError, find_segment, load_segments

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def problems(value: object) -> list[str]:
    with pytest.raises(SegmentError) as caught:
        parse_filter(value)
    return [str(p) for p in caught.value.problems]


def test_every_condition_parses_to_its_node() -> None:
    found = parse_filter({"all": [
        {"stage": ["active", "at_risk"]},
        {"consent": "opted_in"},
        {"locale": "fr_CA"},
        {"orders_count": {"gte": 3}},
        {"total_spent": {"lte": 100.5}},
        {"average_order_value": {"gte": 10, "lte": 90}},
        {"last_order_within": "90d"},
        {"last_order_before": "1d12h"},
        {"engaged_within": "30d"},
        {"signed_up_within": "7d"},
        {"bought_product": ["P1", "P2"]},
        {"viewed_product": {"products": "P3", "within": "2d"}},
        {"trait": {"first_name": "Ada", "birthday": None}},
        {"any": [{"not": {"stage": "lapsed"}}]},
    ]})
    assert isinstance(found, All)
    assert found.parts[:10] == (
        OneOf("stage", ("active", "at_risk")), OneOf("consent", ("opted_in",)), OneOf("locale", ("fr-ca",)),
        Range("orders_count", 3.0, None), Range("total_spent", None, 100.5), Range("average_order_value", 10.0, 90.0),
        Recency("last_order_within", timedelta(days=90)), Recency("last_order_before", timedelta(days=1, hours=12)),
        Recency("engaged_within", timedelta(days=30)), Recency("signed_up_within", timedelta(days=7)),
    )
    assert found.parts[10] == Products("bought_product", ("P1", "P2"), None)
    assert found.parts[11] == Products("viewed_product", ("P3",), timedelta(days=2))
    assert found.parts[12] == All((TraitIs("first_name", "Ada"), TraitIs("birthday", None)))
    assert found.parts[13] == AnyOf((Not(OneOf("stage", ("lapsed",))),))


def test_several_keys_of_one_mapping_all_hold() -> None:
    assert parse_filter({"stage": "active", "orders_count": {"gte": 1}}) == All(
        (OneOf("stage", ("active",)), Range("orders_count", 1.0, None)))


@pytest.mark.parametrize(("value", "expected"), [
    ({}, "filter: must be a mapping of one or more conditions"),
    ({"stagee": ["x"]}, "filter.stagee: unknown condition"),
    ({"orders_count": {"gte": "3"}}, "filter.orders_count.gte: must be a number"),
    ({"orders_count": {"more": 3}}, "filter.orders_count.more: unknown bound"),
    ({"total_spent": {"gte": -1}}, "filter.total_spent.gte: must not be negative"),
    ({"viewed_product": {"products": ["ok", "p\x00"]}}, "filter.viewed_product.products: a text cannot hold the NUL"),
    ({"trait": {"first_name": "A\x00"}}, "filter.trait.first_name: a text cannot hold the NUL"),
    ({"consent": "maybe"}, "filter.consent: 'maybe': consent is one of"),
    ({"stage": ["active", "loyal"]}, "filter.stage: 'loyal': a stage is one of prospect, new, active"),
    ({"locale": "français"}, "filter.locale: 'français': a locale is a language tag"),
    ({"last_order_within": "3 weeks"}, "filter.last_order_within: '3 weeks' is not a duration"),
    ({"engaged_within": "100000d"}, "filter.engaged_within: '100000d' is not a duration"),
    ({"engaged_within": "2h1d"}, "filter.engaged_within: '2h1d' is not a duration"),
    ({"engaged_within": 30}, "filter.engaged_within: must be a duration"),
    ({"bought_product": []}, "filter.bought_product: must be a non-empty text or a non-empty list of texts"),
    ({"viewed_product": {"within": "2d"}}, "filter.viewed_product.products: is required"),
    ({"viewed_product": {"products": ["P"], "since": "2d"}}, "filter.viewed_product.since: unknown field"),
    ({"trait": {"shoe_size": "42"}}, "filter.trait.shoe_size: not a trait customers have"),
    ({"trait": {"first_name": ["a"]}}, "filter.trait.first_name: must be a text, a number"),
    ({"any": []}, "filter.any: must be a non-empty list of filters"),
    ({"all": [{"stage": "new"}, {"nope": 1}]}, "filter.all[1].nope: unknown condition"),
    ({"not": {"orders_count": 3}}, "filter.not.orders_count: must be a mapping with gte, lte or both"),
])
def test_problems_name_their_field(value: object, expected: str) -> None:
    found = problems(value)
    assert any(p.startswith(expected) for p in found), found


def test_deep_nesting_is_a_problem_not_a_crash() -> None:
    value: dict[str, object] = {"stage": "new"}
    for _ in range(3000):
        value = {"not": value}
    assert any("nested more than" in p for p in problems(value))


def test_every_problem_is_reported_at_once() -> None:
    found = problems({"stage": [], "orders_count": {"gte": "x"}, "all": [{"locale": 3}]})
    assert [p.split(":")[0] for p in found] == ["filter.stage", "filter.orders_count.gte", "filter.all[0].locale"]


def test_a_segment_has_a_name_a_description_and_a_filter() -> None:
    segment = parse_segment({"name": "vip", "description": "big spenders", "filter": {"total_spent": {"gte": 300}}})
    assert (segment.name, segment.description, segment.filter) == ("vip", "big spenders",
                                                                  Range("total_spent", 300.0, None))
    with pytest.raises(SegmentError) as caught:
        parse_segment({"name": "bad name!", "filter": {}, "extra": 1})
    assert [p.field for p in caught.value.problems] == ["extra", "name", "filter"]
    with pytest.raises(SegmentError, match="differs from the file's name"):
        parse_segment({"name": "a", "filter": {"stage": "new"}}, default_name="b")


def test_compiled_conditions_are_null_safe_and_parameterised() -> None:
    sql, params = compile_filter(parse_filter({"not": {"average_order_value": {"gte": 50}}}), NOW, "fr")
    assert sql == "(NOT coalesce(((c.total_spent / nullif(c.orders_count, 0)) >= CAST(:s0 AS numeric)), false))"
    assert params == {"s0": 50.0}
    sql, params = compile_filter(parse_filter({"last_order_within": "10d", "trait": {"first_name": "O'Brien"}}),
                                 NOW, "fr")
    assert params == {"s0": NOW - timedelta(days=10), "s1": "first_name", "s2": "O'Brien"}
    assert "O'Brien" not in sql  # values are parameters, never spliced into the text
    _, params = compile_filter(parse_filter({"locale": ["fr", "en-GB"]}), NOW, "FR_ca")
    assert params == {"s0": "fr-ca", "s1": ["en-gb"], "s2": ["fr"]}


def test_the_audience_needs_consent_an_address_no_suppression_and_the_category() -> None:
    sql, params = audience_condition("offers")
    assert params == {"audience_category": "offers"}
    for part in ("c.consent = 'opted_in'", "c.email IS NOT NULL", "suppressions", "unsubscribed_categories",
                 "consent_fences"):
        assert part in sql


def test_segment_files_builtin_and_extra(tmp_path: Path) -> None:
    assert {"vip", "engaged", "never_ordered", "lapsed_buyers"} <= set(load_segments())
    (tmp_path / "vip.yaml").write_text("name: vip\nfilter: {orders_count: {gte: 10}}\n")
    assert load_segments(tmp_path)["vip"].filter == Range("orders_count", 10.0, None)
    assert find_segment("vip", tmp_path).filter == Range("orders_count", 10.0, None)
    (tmp_path / "broken.yaml").write_text("name: broken\nfilter: {stage: [\n")
    with pytest.raises(SegmentFileError, match=r"broken.yaml:\d+: not valid YAML"):
        load_segments(tmp_path)
    # a broken file does not hide another segment named directly
    assert find_segment("vip", tmp_path).name == "vip"
    with pytest.raises(SegmentFileError, match="no such file"):
        find_segment(str(tmp_path / "missing.yaml"))
