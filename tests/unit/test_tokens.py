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
from pydantic import ValidationError

from lifecycle.settings import Settings
from lifecycle.tokens import (
    TOKEN_PATTERN,
    ConfirmClaim,
    InvalidToken,
    MalformedToken,
    OutdatedToken,
    SigningKeys,
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
KEYS = SigningKeys.from_secret(SECRET)


def test_round_trip() -> None:
    payload = {"c": "customer-1", "m": "msg-9", "ü": "ñ"}
    assert verify(KEYS, sign(KEYS, payload)) == payload


def test_tokens_are_url_safe_and_deterministic() -> None:
    token = sign(KEYS, {"c": "a/b?c=d&e", "m": "+/="})
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)
    assert sign(KEYS, {"m": "+/=", "c": "a/b?c=d&e"}) == token


def test_wrong_secret_is_refused() -> None:
    with pytest.raises(InvalidToken):
        verify(SigningKeys.from_secret("other"), sign(KEYS, {"c": "1"}))


def test_altered_payload_is_refused() -> None:
    token = sign(KEYS, {"c": "1"})
    forged_body = base64.urlsafe_b64encode(json.dumps({"c": "2"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        verify(KEYS, forged_body + "." + token.split(".")[1])


def test_every_single_character_change_is_refused() -> None:
    token = sign(KEYS, {"c": "customer", "m": "message"})
    for position, char in enumerate(token):
        for replacement in "A_.-x":
            if replacement == char:
                continue
            altered = token[:position] + replacement + token[position + 1 :]
            with pytest.raises(InvalidToken):
                verify(KEYS, altered)


@pytest.mark.parametrize(
    "token",
    ["", ".", "abc", "a.b.c", "abc.", ".abc", "ab$c.def", "a" * 5000 + ".b", "é.é", "abc.d e"],
)
def test_garbled_tokens_are_malformed(token: str) -> None:
    with pytest.raises(MalformedToken):
        verify(KEYS, token)


def test_validly_signed_non_map_payload_is_refused() -> None:
    body = base64.urlsafe_b64encode(b"[1, 2]").rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(SECRET.encode(), body.encode(), hashlib.sha256).digest())
    with pytest.raises(InvalidToken) as caught:
        verify(KEYS, body + "." + mac.rstrip(b"=").decode())
    assert not isinstance(caught.value, MalformedToken)


@pytest.mark.parametrize("token", ["A." + "B" * 43, "AB." + "_" * 43, "x" * 4000 + "." + "0" * 43])
def test_a_token_of_the_documented_shape_that_does_not_verify_is_not_ours_not_damaged(token: str) -> None:
    assert re.fullmatch(TOKEN_PATTERN, token)
    with pytest.raises(InvalidToken) as caught:
        verify(KEYS, token)
    assert not isinstance(caught.value, MalformedToken)  # 403 (404 for a click), as the schema promises


def test_every_token_made_has_the_documented_shape() -> None:
    assert re.fullmatch(TOKEN_PATTERN, sign(KEYS, {"c": "x" * 300, "m": "<a@b>"}))


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        SigningKeys.from_secret("")
    with pytest.raises(ValueError):
        SigningKeys("k1", {"k1": ""})
    with pytest.raises(ValueError):
        SigningKeys("k2", {"k1": "x"})  # the signing key must be in the ring


def test_non_string_payload_is_refused() -> None:
    with pytest.raises(TypeError):
        sign(KEYS, {"c": 1})  # type: ignore[dict-item]


def test_unsubscribe_claim() -> None:
    claim = read_unsubscribe_token(KEYS, unsubscribe_token(KEYS, "c1", "m1"))
    assert (claim.customer_id, claim.message_id) == ("c1", "m1")


def test_purposes_do_not_mix() -> None:
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(KEYS, confirm_token(KEYS, "c1", "ana@example.com"))
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(KEYS, sign(KEYS, {"c": "c1", "m": "m1"}))
    with pytest.raises(InvalidToken):
        read_confirm_token(KEYS, unsubscribe_token(KEYS, "c1", "m1"))


def test_confirm_tokens_carry_the_lower_cased_address() -> None:
    claim = read_confirm_token(KEYS, confirm_token(KEYS, "c1", " Ana@Example.COM "))
    assert (claim.customer_id, claim.email) == ("c1", "ana@example.com")
    with pytest.raises(InvalidToken):
        read_confirm_token(KEYS, sign(KEYS, {"c": "c1", "e": "a@b.example", "x": "y"}))


@pytest.mark.parametrize("payload", [{"c": "c1"}, {"p": "confirm", "c": "c1"}, {"p": "confirm", "c": "c1", "e": ""}])
def test_confirm_tokens_without_an_address_are_no_longer_valid(payload: dict[str, str]) -> None:
    with pytest.raises(OutdatedToken):
        read_confirm_token(KEYS, sign(KEYS, payload))
    with pytest.raises(OutdatedToken):  # as made before key ids, too
        read_confirm_token(KEYS, legacy_token(SECRET, payload))


def test_urls() -> None:
    settings = Settings(public_url="https://mail.shop.example/", signing_secret=SECRET)
    url = unsubscribe_url(settings, KEYS, "c1", "m1")
    prefix = "https://mail.shop.example/v1/unsubscribe/"
    assert url.startswith(prefix)
    assert read_unsubscribe_token(KEYS, url.removeprefix(prefix)).customer_id == "c1"
    confirm = confirm_url(settings, KEYS, "c1", "ana@example.com")
    claim = read_confirm_token(KEYS, confirm.removeprefix("https://mail.shop.example/v1/confirm/"))
    assert claim == ConfirmClaim("c1", "ana@example.com")


@given(st.dictionaries(st.text(max_size=10).filter(lambda key: key != "k"), st.text(max_size=30), max_size=5))
def test_round_trip_property(payload: dict[str, str]) -> None:
    assert verify(KEYS, sign(KEYS, payload)) == payload


# --- key rotation -----------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def legacy_token(secret: str, payload: dict[str, str]) -> str:
    """A token as made before key ids: no `k` in the payload, signed with LIFECYCLE_SIGNING_SECRET."""
    body = _b64(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    return body + "." + _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def payload_of(token: str) -> dict[str, str]:
    body = token.split(".")[0]
    decoded: dict[str, str] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


def ring(signing_keys: str = "", signing_secret: str = "old-secret") -> SigningKeys:
    return SigningKeys.from_settings(Settings(signing_keys=signing_keys, signing_secret=signing_secret))


def test_without_signing_keys_the_signing_secret_signs_under_a_fixed_id() -> None:
    keys = ring()
    token = sign(keys, {"c": "1"})
    assert payload_of(token) == {"c": "1", "k": "secret"}
    assert keys.signing_secret == "old-secret"
    assert verify(keys, token) == {"c": "1"}  # the key id is not part of what the caller reads


def test_the_first_signing_key_signs_and_every_key_verifies() -> None:
    keys = ring("k2:two,k1:one")
    assert keys.signing_id == "k2" and keys.signing_secret == "two"
    assert payload_of(sign(keys, {"c": "1"}))["k"] == "k2"
    for old in (ring("k1:one"), ring()):
        assert verify(keys, sign(old, {"c": "1"})) == {"c": "1"}


def test_rotation_keeps_old_links_valid_until_their_key_is_retired() -> None:
    before = ring("k1:one")
    sent = unsubscribe_token(before, "c1", "m1")
    rotated = ring("k2:two,k1:one")  # step 1: the new key signs, the old one still verifies
    assert read_unsubscribe_token(rotated, sent).customer_id == "c1"
    retired = ring("k2:two", signing_secret="")  # step 2, once the emails of k1 are old enough
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(retired, sent)
    assert read_unsubscribe_token(retired, unsubscribe_token(rotated, "c1", "m1")).customer_id == "c1"


def test_an_unknown_key_id_is_refused_like_a_forgery() -> None:
    # Signed with a secret the ring holds, but under an id it does not know: refused all the same.
    made_up = SigningKeys("nope", {"nope": "one"})
    with pytest.raises(InvalidToken) as caught:
        verify(ring("k1:one"), sign(made_up, {"c": "1"}))
    assert not isinstance(caught.value, MalformedToken)  # a 403 for the pages, not a 400


def test_the_key_id_cannot_be_swapped() -> None:
    keys = ring("k2:two,k1:one")
    token = sign(keys, {"c": "1"})
    swapped = _b64(json.dumps({"c": "1", "k": "k1"}, separators=(",", ":")).encode()) + "." + token.split(".")[1]
    with pytest.raises(InvalidToken):
        verify(keys, swapped)
    with pytest.raises(ValueError, match="key id"):
        sign(keys, {"k": "k1"})


def test_legacy_tokens_verify_against_the_signing_secret() -> None:
    sent = legacy_token("old-secret", {"p": "unsubscribe", "c": "c1", "m": "m1"})
    for keys in (ring(), ring("k2:two")):
        assert read_unsubscribe_token(keys, sent).message_id == "m1"
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(ring("k2:two", signing_secret=""), sent)  # the legacy secret retired
    with pytest.raises(InvalidToken):
        read_unsubscribe_token(ring(signing_secret="another"), sent)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("k1", "entry 1 is not id:secret"),
        ("k1:", "entry 1 is not id:secret"),
        ("k1:a,bad id:b", "entry 2: a key id is"),
        ("k1:a,k1:b", "used twice"),
        ("secret:a", "reserved for LIFECYCLE_SIGNING_SECRET"),
    ],
)
def test_bad_signing_keys_are_clear_errors_that_never_show_a_secret(spec: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(signing_keys=spec)
    text = str(caught.value)
    assert message in text
    assert ":a" not in text and ":b" not in text


def test_some_signing_key_is_required() -> None:
    with pytest.raises(ValidationError, match="need a signing key"):
        Settings(signing_keys="", signing_secret="")
    assert ring("k1:one", signing_secret="").signing_id == "k1"
