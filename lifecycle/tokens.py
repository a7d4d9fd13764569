"""HMAC-SHA256 signed, URL-safe tokens (one-click unsubscribe and double opt-in links).

A token is `<payload>.<signature>`, both unpadded base64url: the payload is the compact,
key-sorted JSON of a `dict[str, str]`, the signature is HMAC-SHA256 over the payload
text. The payload names the key that signed it (`k`), so keys can be rotated: a
`SigningKeys` ring signs with one key and verifies with every key it holds. Tokens
without a key id (made before key ids) verify against `LIFECYCLE_SIGNING_SECRET`.
Signing is deterministic: the same payload and key always give the same token. Tokens
do not expire: an unsubscribe link must keep working for as long as the email exists,
which is why a retired key must stay in the ring until its emails are old enough.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from lifecycle.settings import SIGNING_SECRET_KEY_ID, Settings, parse_signing_keys

# Payload key naming the token's purpose, so a token minted for one use is refused by another.
PURPOSE_KEY: Final = "p"
# Payload key naming the signing key; part of the signed payload, so it cannot be swapped.
KEY_ID_KEY: Final = "k"
UNSUBSCRIBE_PURPOSE: Final = "unsubscribe"
CONFIRM_PURPOSE: Final = "confirm"
_MAX_TOKEN_LENGTH: Final = 4096
# The shape of every token: a base64url payload, a dot, the 43 characters of a base64url HMAC-SHA256.
# Documented on every route that takes a token; a token of this shape that does not verify is
# refused as not ours (403 or 404), one of another shape as damaged (400).
TOKEN_PATTERN: Final = r"^[A-Za-z0-9_-]{1,4000}\.[A-Za-z0-9_-]{43}$"
_TOKEN_SHAPE: Final = re.compile(TOKEN_PATTERN)
# How the routes document a token in their path (not enforced there: a damaged link gets a page, not a 422).
TOKEN_SCHEMA: Final = {"pattern": TOKEN_PATTERN, "maxLength": _MAX_TOKEN_LENGTH}


class InvalidToken(ValueError):
    """The token was forged, altered or is not a token at all."""


class MalformedToken(InvalidToken):
    """The token is not even shaped like one of ours (garbled, truncated, too long)."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Only the canonical spelling: the decoder ignores stray low bits in the last character, which
    would give one token several valid spellings. A token of the right shape that fails here was
    not made by us: refused like a forged one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not base64url") from None
    if _b64encode(raw) != text:
        raise InvalidToken("token is not canonical base64url")
    return raw


def _mac(secret: str, body: str) -> bytes:
    return hmac.digest(secret.encode("utf-8"), body.encode("ascii"), "sha256")  # one call into OpenSSL


@dataclass(frozen=True)
class SigningKeys:
    """The key ring: `signing_id` names the key that signs, `secrets` holds every key that verifies,
    `legacy_secret` verifies tokens that carry no key id (None: such tokens are refused).

    Build it once (`from_settings`) and pass it around: parsing the settings per link would be waste.
    """

    signing_id: str
    secrets: Mapping[str, str]
    legacy_secret: str | None = None

    def __post_init__(self) -> None:
        if not all(self.secrets.values()) or self.legacy_secret == "":
            raise ValueError("a signing secret must not be empty")
        if self.signing_id not in self.secrets:
            raise ValueError(f"the signing key {self.signing_id!r} is not in the ring")

    @classmethod
    def from_settings(cls, settings: Settings) -> SigningKeys:
        """The first of LIFECYCLE_SIGNING_KEYS signs; without any, LIFECYCLE_SIGNING_SECRET does (id `secret`)."""
        secrets = dict(parse_signing_keys(settings.signing_keys))
        legacy = settings.signing_secret or None
        if legacy is not None:
            secrets[SIGNING_SECRET_KEY_ID] = legacy
        if not secrets:
            raise ValueError("no signing key: set LIFECYCLE_SIGNING_KEYS or LIFECYCLE_SIGNING_SECRET")
        signing_id = next(iter(secrets))  # dicts keep order: the first entry of signing_keys, else `secret`
        return cls(signing_id, secrets, legacy)

    @classmethod
    def from_secret(cls, secret: str) -> SigningKeys:
        """One secret, as with only LIFECYCLE_SIGNING_SECRET set."""
        return cls(SIGNING_SECRET_KEY_ID, {SIGNING_SECRET_KEY_ID: secret}, secret)

    @property
    def signing_secret(self) -> str:
        return self.secrets[self.signing_id]

    def secret_for(self, key_id: object) -> str | None:
        """The secret that verifies a token with this key id (None: no key id); None if the ring lacks it."""
        if key_id is None:
            return self.legacy_secret
        return self.secrets.get(key_id) if isinstance(key_id, str) else None


def sign(keys: SigningKeys, payload: dict[str, str]) -> str:
    """A URL-safe token carrying `payload`, signed with the ring's signing key (whose id it carries)."""
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items()):
        raise TypeError("token payload must map str to str")
    if KEY_ID_KEY in payload:
        raise ValueError(f"{KEY_ID_KEY!r} is the key id; a payload cannot use it")
    signed = {**payload, KEY_ID_KEY: keys.signing_id}
    body = _b64encode(json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{_b64encode(_mac(keys.signing_secret, body))}"


def verify(keys: SigningKeys, token: str) -> dict[str, str]:
    """The payload (without its key id) of a token signed by a key of the ring; InvalidToken otherwise.

    A token naming a key the ring does not hold (retired, or made up) is refused like a forged one.
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH or not _TOKEN_SHAPE.fullmatch(token):
        raise MalformedToken("token is malformed")
    body, signature = token.split(".")
    given = _b64decode(signature)
    # The payload is read before the MAC only to learn which key to check it with; the length
    # limit above bounds that work, and nothing in it is trusted until the MAC matches.
    payload = _read_payload(_b64decode(body))
    secret = keys.secret_for(payload.get(KEY_ID_KEY) if isinstance(payload, dict) else None)
    # Constant time, so the signature cannot be guessed byte by byte.
    if secret is None or not hmac.compare_digest(given, _mac(secret, body)):
        raise InvalidToken("token signature does not match")
    if payload is None:
        raise InvalidToken("token payload is not JSON")
    if not isinstance(payload, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in payload.items()):
        raise InvalidToken("token payload is not a string map")
    payload.pop(KEY_ID_KEY, None)
    return payload


def _read_payload(raw: bytes) -> object:
    """The decoded JSON, or None when it is not JSON (then only a forged token can carry it)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return None


@dataclass(frozen=True)
class UnsubscribeClaim:
    customer_id: str
    message_id: str


def unsubscribe_token(keys: SigningKeys, customer_id: str, message_id: str) -> str:
    return sign(keys, {PURPOSE_KEY: UNSUBSCRIBE_PURPOSE, "c": customer_id, "m": message_id})


def read_unsubscribe_token(keys: SigningKeys, token: str) -> UnsubscribeClaim:
    """Who and which email an unsubscribe token is for; InvalidToken if it is not one."""
    payload = verify(keys, token)
    if payload.get(PURPOSE_KEY) != UNSUBSCRIBE_PURPOSE or "c" not in payload or "m" not in payload:
        raise InvalidToken("not an unsubscribe token")
    return UnsubscribeClaim(customer_id=payload["c"], message_id=payload["m"])


def unsubscribe_url(settings: Settings, keys: SigningKeys, customer_id: str, message_id: str) -> str:
    """The one-click unsubscribe link (RFC 8058) for one email to one customer."""
    token = unsubscribe_token(keys, customer_id, message_id)
    return f"{settings.public_url.rstrip('/')}/v1/unsubscribe/{token}"


class OutdatedToken(InvalidToken):
    """Validly signed, but of a form no longer accepted (a confirmation link without its address)."""


@dataclass(frozen=True)
class ConfirmClaim:
    customer_id: str
    email: str  # the address the link was sent to, lower-cased


def confirm_token(keys: SigningKeys, customer_id: str, email: str) -> str:
    """Bound to the address it is sent to: confirming proves this address is theirs, not a later one."""
    return sign(keys, {PURPOSE_KEY: CONFIRM_PURPOSE, "c": customer_id, "e": email.strip().lower()})


def read_confirm_token(keys: SigningKeys, token: str) -> ConfirmClaim:
    """The customer and address a double opt-in confirmation token is for; InvalidToken if it is not one.

    Confirmation tokens made before they carried the address (with or without a purpose key)
    raise OutdatedToken: they cannot say which address they confirm.
    """
    payload = verify(keys, token)
    if (not {"c"} <= set(payload) <= {PURPOSE_KEY, "c", "e"}
            or payload.get(PURPOSE_KEY, CONFIRM_PURPOSE) != CONFIRM_PURPOSE):
        raise InvalidToken("not a confirmation token")
    if not payload.get("e"):
        raise OutdatedToken("a confirmation token without its address")
    return ConfirmClaim(customer_id=payload["c"], email=payload["e"])


def confirm_url(settings: Settings, keys: SigningKeys, customer_id: str, email: str) -> str:
    """The double opt-in confirmation link for one customer at one address."""
    return f"{settings.public_url.rstrip('/')}/v1/confirm/{confirm_token(keys, customer_id, email)}"
