"""VERP envelope senders: each send's own bounce address, `bounces+<send id>-<mac>@<bounce domain>`.

The dispatcher gives every send this address as its SMTP envelope sender (MAIL FROM); the receiving
MTA keeps it as `Return-Path`, and delivery reports (DSNs, RFC 3464) and auto-replies come back to it.
`lifecycle bounces` (services/bounces) takes mail only for addresses whose MAC verifies, so a report
names its send and nobody can forge one for a send of their choosing.

The MAC is HMAC-SHA256 of `verp:<send id>` under the signing key ring of the links (lifecycle.tokens),
its first 96 bits in lower-case hex. The address carries no key id: key ids are case-sensitive and up
to 32 characters, while a local part must stay within 64 characters and survive an MTA that changes
its case. The receiver tries each key of the ring instead (a handful of HMACs), so a key that signed
emails still in flight must stay in the ring, as for the links.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Final

from lifecycle.tokens import SigningKeys

LOCAL_PREFIX: Final = "bounces+"
_MAC_HEX_DIGITS: Final = 24
# A send id (a bigint: at most 19 digits), a dash, the MAC: "bounces+" and this stay within 64 characters.
_SIGNED_SEND: Final = re.compile(rf"([1-9][0-9]{{0,18}})-([0-9a-f]{{{_MAC_HEX_DIGITS}}})")


def _mac(secret: str, send_id: int) -> str:
    # "verp:" keeps this MAC apart from the tokens', which sign base64url text (never a colon)
    return hmac.new(secret.encode("utf-8"), f"verp:{send_id}".encode("ascii"), hashlib.sha256).hexdigest()[
        :_MAC_HEX_DIGITS]


def bounce_address(keys: SigningKeys, send_id: int, domain: str) -> str:
    """The envelope sender of one send, signed with the ring's signing key."""
    if send_id <= 0:
        raise ValueError(f"a send id is positive, got {send_id}")
    return f"{LOCAL_PREFIX}{send_id}-{_mac(keys.signing_secret, send_id)}@{domain.lower()}"


def read_bounce_address(keys: SigningKeys, address: str, domain: str) -> int | None:
    """The send id of a bounce address of `domain` signed by a key of the ring; None for any other address
    (another domain, not a VERP address, a MAC that no key of the ring made). Case does not matter."""
    local, at, address_domain = address.strip().strip("<>").rpartition("@")
    if not at or address_domain.lower().rstrip(".") != domain.lower():
        return None
    local = local.lower()
    if not local.startswith(LOCAL_PREFIX):
        return None
    match = _SIGNED_SEND.fullmatch(local[len(LOCAL_PREFIX):])
    if match is None:
        return None
    send_id = int(match.group(1))
    given = match.group(2)
    # every key is tried (no early exit): the time taken says nothing about which one matched
    found = [hmac.compare_digest(given, _mac(secret, send_id)) for secret in keys.secrets.values()]
    return send_id if any(found) else None
