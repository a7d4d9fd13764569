"""lifecycle/jsoncodec.py: the standard library's values, faster, and its answers where orjson's differ."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import jsoncodec

_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=20)


@given(_VALUES)
def test_written_and_read_as_the_standard_library_does(value: Any) -> None:
    standard = json.dumps(value, separators=(",", ":"))
    assert json.loads(jsoncodec.dumps(value)) == json.loads(standard)
    assert jsoncodec.loads(standard) == json.loads(standard)
    assert jsoncodec.loads(standard.encode()) == json.loads(standard)


class Color(StrEnum):
    RED = "red"


@dataclass
class Point:
    x: int


def test_what_orjson_would_read_or_write_otherwise_goes_to_the_standard_library() -> None:
    assert jsoncodec.dumps({1: "a", None: 2}) == json.dumps({1: "a", None: 2}, separators=(",", ":"))
    assert jsoncodec.dumps({"n": 2 ** 80}) == '{"n":1208925819614629174706176}'
    assert jsoncodec.loads('{"n": 1208925819614629174706176}') == {"n": 2 ** 80}
    assert jsoncodec.dumps(Color.RED) == '"red"'
    assert jsoncodec.dumps({"é": "ü"}) in ('{"é":"ü"}', json.dumps({"é": "ü"}, separators=(",", ":")))
    for refused in (datetime(2026, 1, 1, tzinfo=UTC), Point(1), {1.5j}):
        with pytest.raises(TypeError):
            json.dumps(refused)
        with pytest.raises(TypeError):
            jsoncodec.dumps(refused)
    with pytest.raises(json.JSONDecodeError):
        jsoncodec.loads("{not json")
