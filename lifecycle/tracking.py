"""Signed tracking URLs: the open pixel and click redirects served by the ingest API.

A click token names a message, a customer and the index of a link of that message;
the redirect goes only to the link stored with the message, never to a URL taken
from the request. Tokens are signed like every other link token (`lifecycle.tokens`),
with their own purpose, so an open token is no click token and neither unsubscribes.
Every function takes the key ring (`SigningKeys.from_settings`, built once per process).

Opens are a weak signal: mail privacy proxies (Apple Mail Privacy Protection, Gmail's
image proxy) fetch the pixel without anyone reading. Clicks are the strong signal.
See docs/tracking.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from lifecycle.settings import Settings
from lifecycle.tokens import InvalidToken, SigningKeys, sign, unsubscribe_token, verify

OPEN_PURPOSE: Final = "open"
CLICK_PURPOSE: Final = "click"
# Links are numbered from 0 in the order the message stores them; no email has a million.
_INDEX: Final = re.compile(r"0|[1-9][0-9]{0,5}")


@dataclass(frozen=True)
class TrackingClaim:
    purpose: str
    message_id: str
    customer_id: str
    link_index: int | None


def _base(settings: Settings) -> str:
    return settings.public_url.rstrip("/")


def open_pixel_url(settings: Settings, keys: SigningKeys, message_id: str, customer_id: str) -> str:
    token = sign(keys, {"p": OPEN_PURPOSE, "m": message_id, "c": customer_id})
    return f"{_base(settings)}/t/o/{token}.gif"


def click_url(settings: Settings, keys: SigningKeys, message_id: str, customer_id: str, link_index: int) -> str:
    if link_index < 0:
        raise ValueError(f"link_index must be 0 or more, got {link_index}")
    token = sign(keys, {"p": CLICK_PURPOSE, "m": message_id, "c": customer_id, "i": str(link_index)})
    return f"{_base(settings)}/t/c/{token}"


def preferences_url(settings: Settings, keys: SigningKeys, customer_id: str, message_id: str) -> str:
    """The email-preferences page for one email to one customer.

    It takes the same token as the unsubscribe link: both let the customer narrow
    what they receive, and a template needs only one secret per message.
    """
    token = unsubscribe_token(keys, customer_id, message_id)
    return f"{_base(settings)}/v1/preferences/{token}"


def read_tracking_token(keys: SigningKeys, token: str) -> TrackingClaim:
    """Raises lifecycle.tokens.InvalidToken for anything forged, altered or garbled."""
    payload = verify(keys, token)
    purpose = payload.get("p", "")
    index = payload.get("i")
    return TrackingClaim(
        purpose,
        payload.get("m", ""),
        payload.get("c", ""),
        int(index) if index is not None and _INDEX.fullmatch(index) else None,
    )


def read_open_token(keys: SigningKeys, token: str) -> TrackingClaim:
    """The claim of an open-pixel token; InvalidToken for any other token."""
    claim = read_tracking_token(keys, token)
    if claim.purpose != OPEN_PURPOSE or not claim.message_id or not claim.customer_id:
        raise InvalidToken("not an open-tracking token")
    return claim


def read_click_token(keys: SigningKeys, token: str) -> TrackingClaim:
    """The claim of a click token (with its link index); InvalidToken for any other token."""
    claim = read_tracking_token(keys, token)
    if (
        claim.purpose != CLICK_PURPOSE
        or not claim.message_id
        or not claim.customer_id
        or claim.link_index is None
    ):
        raise InvalidToken("not a click-tracking token")
    return claim
