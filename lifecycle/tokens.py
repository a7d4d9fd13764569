"""HMAC-SHA256 signed, URL-safe tokens (one-click unsubscribe and double opt-in links).

A token is `<payload>.<signature>`, both unpadded base64url: the payload is the compact,
key-sorted JSON of a `dict[str, str]`, the signature is HMAC-SHA256 over the payload
text. Signing is deterministic, so the same payload always gives the same token (the
ingest API derives an idempotent event id from it). Tokens do not expire: an
unsubscribe link must keep working for as long as the email exists.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Final

from lifecycle.settings import Settings

# Payload key naming the token's purpose, so a token minted for one use is refused by another.
PURPOSE_KEY: Final = "p"
UNSUBSCRIBE_PURPOSE: Final = "unsubscribe"
CONFIRM_PURPOSE: Final = "confirm"
_MAX_TOKEN_LENGTH: Final = 4096


class InvalidToken(ValueError):
    """The token was forged, altered or is not a token at all."""


class MalformedToken(InvalidToken):
    """The token is not even shaped like one of ours (garbled, truncated, too long)."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not text or any(ch not in _ALPHABET for ch in text):
        raise MalformedToken("token is not base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedToken("token is not base64url") from None
    # Only the canonical spelling: the decoder ignores stray low bits in the last
    # character, which would give one token several valid spellings.
    if _b64encode(raw) != text:
        raise MalformedToken("token is not canonical base64url")
    return raw


_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _mac(secret: str, body: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), body.encode("ascii"), hashlib.sha256).digest()


def sign(secret: str, payload: dict[str, str]) -> str:
    """A URL-safe token carrying `payload`, signed with `secret`."""
    if not secret:
        raise ValueError("the signing secret must not be empty")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items()):
        raise TypeError("token payload must map str to str")
    body = _b64encode(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_b64encode(_mac(secret, body))}"


def verify(secret: str, token: str) -> dict[str, str]:
    """The payload of a token made by `sign` with the same secret; InvalidToken otherwise."""
    if not secret:
        raise ValueError("the signing secret must not be empty")
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH or token.count(".") != 1:
        raise MalformedToken("token is malformed")
    body, signature = token.split(".")
    given = _b64decode(signature)
    _b64decode(body)  # shape check before spending a MAC on it
    # Constant time, so the signature cannot be guessed byte by byte.
    if not hmac.compare_digest(given, _mac(secret, body)):
        raise InvalidToken("token signature does not match")
    try:
        payload = json.loads(_b64decode(body))
    except ValueError:
        raise MalformedToken("token payload is not JSON") from None
    if not isinstance(payload, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items()):
        raise MalformedToken("token payload is not a string map")
    return payload


@dataclass(frozen=True)
class UnsubscribeClaim:
    customer_id: str
    message_id: str


def unsubscribe_token(secret: str, customer_id: str, message_id: str) -> str:
    return sign(secret, {PURPOSE_KEY: UNSUBSCRIBE_PURPOSE, "c": customer_id, "m": message_id})


def read_unsubscribe_token(secret: str, token: str) -> UnsubscribeClaim:
    """Who and which email an unsubscribe token is for; InvalidToken if it is not one."""
    payload = verify(secret, token)
    if payload.get(PURPOSE_KEY) != UNSUBSCRIBE_PURPOSE or "c" not in payload or "m" not in payload:
        raise InvalidToken("not an unsubscribe token")
    return UnsubscribeClaim(customer_id=payload["c"], message_id=payload["m"])


def unsubscribe_url(settings: Settings, customer_id: str, message_id: str) -> str:
    """The one-click unsubscribe link (RFC 8058) for one email to one customer."""
    token = unsubscribe_token(settings.signing_secret, customer_id, message_id)
    return f"{settings.public_url.rstrip('/')}/v1/unsubscribe/{token}"


def confirm_token(secret: str, customer_id: str) -> str:
    return sign(secret, {PURPOSE_KEY: CONFIRM_PURPOSE, "c": customer_id})


def read_confirm_token(secret: str, token: str) -> str:
    """The customer a double opt-in confirmation token is for; InvalidToken if it is not one.

    Also accepts the bare `{"c": customer_id}` form (no purpose key), which cannot be
    mistaken for an unsubscribe token because those always carry a purpose.
    """
    payload = verify(secret, token)
    if set(payload) not in ({"c"}, {PURPOSE_KEY, "c"}) or payload.get(PURPOSE_KEY, CONFIRM_PURPOSE) != CONFIRM_PURPOSE:
        raise InvalidToken("not a confirmation token")
    return payload["c"]


def confirm_url(settings: Settings, customer_id: str) -> str:
    """The double opt-in confirmation link for one customer."""
    return f"{settings.public_url.rstrip('/')}/v1/confirm/{confirm_token(settings.signing_secret, customer_id)}"
