"""DATA's fast paths (lifecycle/smtp_data.py): the same bytes as aiosmtplib's own regular expressions."""

from __future__ import annotations

import re

import aiosmtplib.protocol
import aiosmtplib.smtp
from hypothesis import given
from hypothesis import strategies as st

from lifecycle import smtp_data

# what aiosmtplib 5 does, written out, so the comparison does not depend on the patched module
_LINE_ENDINGS = re.compile(rb"(?:\r\n|\n|\r(?!\n))")
_PERIOD = re.compile(rb"(?m)^\.")


def _normalized(message: bytes) -> bytes:
    message = _LINE_ENDINGS.sub(b"\r\n", message)
    return message if message.endswith(b"\r\n") else message + b"\r\n"


_LINES = st.lists(st.sampled_from([b"a", b".", b"..", b" ", b"\r", b"\n", b"\r\n", b"x.y", b"=", b"\n."]),
                  max_size=40).map(b"".join)


def test_the_fast_paths_are_installed_where_aiosmtplib_calls_them() -> None:
    assert smtp_data.install()
    assert isinstance(aiosmtplib.protocol.PERIOD_REGEX, smtp_data._PeriodStuffing)
    assert aiosmtplib.smtp.normalize_message_line_endings is aiosmtplib.protocol.normalize_message_line_endings
    assert smtp_data.install()  # twice: still one layer
    assert not isinstance(aiosmtplib.protocol.PERIOD_REGEX.pattern, smtp_data._PeriodStuffing)


@given(_LINES)
def test_line_endings_are_what_the_regular_expression_makes(message: bytes) -> None:
    smtp_data.install()
    assert aiosmtplib.protocol.normalize_message_line_endings(message) == _normalized(message)
    assert smtp_data.in_wire_form(message) == (message == _normalized(message))


@given(_LINES)
def test_dots_are_stuffed_as_the_regular_expression_stuffs_them(message: bytes) -> None:
    smtp_data.install()
    assert aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", message) == _PERIOD.sub(b"..", message)


@given(st.lists(st.sampled_from([b"a", b".", b" ", b"\n", b"=", b"b.c"]), max_size=40).map(b"".join))
def test_a_composed_message_in_wire_form_is_already_what_data_sends(message: bytes) -> None:
    wire = smtp_data.to_wire_form(message)
    assert b"\r\n".join(wire.split(b"\r\n")) == wire and wire.replace(b"\r\n", b"\n") == message
    if message.endswith(b"\n"):
        assert smtp_data.in_wire_form(wire) and _normalized(wire) == wire
    assert smtp_data.to_wire_form(b"a\r\nb\n") == b"a\r\nb\n"  # a CR already: left as it is


def _parsed_or_refused(parse: object, address: str) -> str | type[Exception]:
    try:
        return parse(address)  # type: ignore[operator, no-any-return]
    except ValueError:
        return ValueError


@given(st.text(alphabet=st.sampled_from(list('ab@.<> "\r\n\x00é,')), max_size=30))
def test_an_address_is_parsed_as_aiosmtplib_parses_it(address: str) -> None:
    import aiosmtplib.email

    smtp_data.install()
    parse = aiosmtplib.email.parse_address
    assert hasattr(parse, "cache_info") and aiosmtplib.smtp.parse_address is parse  # type: ignore[attr-defined]
    original = parse.__wrapped__  # type: ignore[attr-defined]
    for _ in range(2):  # the second answer from the cache, errors included (never kept)
        expected = _parsed_or_refused(original, address)
        assert _parsed_or_refused(parse, address) == expected
        quoted = _parsed_or_refused(aiosmtplib.email.quote_address, address)
        assert quoted == (f"<{expected}>" if isinstance(expected, str) else ValueError)


@given(st.from_regex(smtp_data.PLAIN_ADDRESS, fullmatch=True))
def test_a_plain_address_is_what_the_parse_returns_for_it(address: str) -> None:
    import aiosmtplib.email

    smtp_data.install()
    original = aiosmtplib.email.parse_address.__wrapped__  # type: ignore[attr-defined]
    assert original(address) == address
    assert aiosmtplib.email.quote_address(address) == f"<{address}>"


@given(st.text(alphabet=st.sampled_from(list("aZ09!#$%&'*+/=?^_`{|}~-.@()<>[]:;,\\\" \t\r\né\x00")), max_size=24))
def test_any_address_near_the_plain_ones_is_parsed_as_aiosmtplib_parses_it(address: str) -> None:
    import aiosmtplib.email

    smtp_data.install()
    parse = aiosmtplib.email.parse_address
    original = parse.__wrapped__  # type: ignore[attr-defined]
    assert _parsed_or_refused(parse, address) == _parsed_or_refused(original, address)
