"""Signed tokens: round trip, and refusal of anything forged, altered or garbled."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lifecycle.settings import Settings
from lifecycle.tokens import (
    InvalidToken,
    MalformedToken,
    confirm_token,
    confirm_url,
    read_confirm_token,
    read_unsubscribe_token,
    sign,
    unsubscribe_token,
    unsubscribe_url,
    verify,
)

SECRET = "s3cret"


def test_round_trip() -> None:
    payload = {"c": "customer-1", "m": "msg-9", "ü": "ñ"}
    assert verify(SECRET, sign(SECRET, payload)) == payload


def test_tokens_are_url_safe_and_deterministic() -> None:
    token = sign(SECRET, {"c": "a/b?c=d&e", "m": "+/="})
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert sign(SECRET, {"m": "+/=", "c": "a/b?c=d&e"}) == token


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(InvalidToken):
        verify("other", sign(SECRET, {"c": "1"}))


def test_altered_payload_is_refused() -> None:
    token = sign(SECRET, {"c": "1"})
    forged_body = base64.urlsafe_b64encode(json.dumps({"c": "2"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify(SECRET, forged_body + "." + token.split(".")[1])


def test_every_single_character_change_is_refused() -> None:
    token = sign(SECRET, {"c": "customer", "m": "message"})
    for position, char in enumerate(token):
        for replacement in "A_.-x":
            if replacement == char:
                continue
            altered = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken):
                verify(SECRET, altered)


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "abc.", ".abc", "ab$c.def", "a" * 5000 + ".b", "é.é", "abc.d e"],
)
def test_garbled_tokens_are_malformed(token: str) -> None:
    with pytest.raises(MalformedToken):
        verify(SECRET, token)


def test_validly_signed_non_map_payload_is_refused() -> None:
    body = base64.urlsafe_b64encode(b"[1, 2]").rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest())
    with pytest.raises(MalformedToken):
        verify(SECRET, body + "." + mac.rstrip(b"=").decode())


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign("", {"c": "1"})
    with pytest.raises(ValueError):
        verify("", "a.b")


def test_non_string_payload_is_refused() -> None:
    with pytest.raises(TypeError):
        sign(SECRET, {"c": 1})  # type: ignore[dict-item]


def test_unsubscribe_claim() -> None:
    claim = read_unsubscribe_token(SECRET, unsubscribe_token(SECRET, "c1", "m1"))
    assert (claim.customer_id, claim.message_id) == ("c1", "m1")


def test_purposes_do_not_mix() -> None:
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(SECRET, confirm_token(SECRET, "c1"))
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(SECRET, sign(SECRET, {"c": "c1", "m": "m1"}))
    with pytest.raises(InvalidToken):
        read_confirm_token(SECRET, unsubscribe_token(SECRET, "c1", "m1"))


def test_confirm_tokens() -> None:
    assert read_confirm_token(SECRET, confirm_token(SECRET, "c1")) == "c1"
    assert read_confirm_token(SECRET, sign(SECRET, {"c": "c1"})) == "c1"  # the bare form
    with pytest.raises(InvalidToken):
        read_confirm_token(SECRET, sign(SECRET, {"c": "c1", "x": "y"}))


def test_urls() -> None:
    settings = Settings(public_url="https://mail.shop.example/", signing_secret=SECRET)
    url = unsubscribe_url(settings, "c1", "m1")
    prefix = "https://mail.shop.example/v1/unsubscribe/"
    assert url.startswith(prefix)
    assert read_unsubscribe_token(SECRET, url.removeprefix(prefix)).customer_id == "c1"
    confirm = confirm_url(settings, "c1")
    assert read_confirm_token(SECRET, confirm.removeprefix("https://mail.shop.example/v1/confirm/")) == "c1"


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=5))
def test_round_trip_property(payload: dict[str, str]) -> None:
    assert verify(SECRET, sign(SECRET, payload)) == payload
