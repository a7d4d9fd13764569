"""Signed tracking URLs: the open pixel and click redirects served by the ingest API.

A click token names a message, a customer and the index of a link of that message;
the redirect goes only to the link stored with the message, never to a URL taken
from the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from lifecycle.settings import Settings
from lifecycle.tokens import sign, verify

OPEN_PURPOSE = "open"
CLICK_PURPOSE = "click"


@dataclass(frozen=True)
class TrackingClaim:
    purpose: str
    message_id: str
    customer_id: str
    link_index: int | None


def open_pixel_url(settings: Settings, message_id: str, customer_id: str) -> str:
    token = sign(settings.signing_secret, {"p": OPEN_PURPOSE, "m": message_id, "c": customer_id})
    return f"{settings.public_url}/t/o/{token}.gif"


def click_url(settings: Settings, message_id: str, customer_id: str, link_index: int) -> str:
    token = sign(settings.signing_secret, {"p": CLICK_PURPOSE, "m": message_id, "c": customer_id,
                                           "i": str(link_index)})
    return f"{settings.public_url}/t/c/{token}"


def read_tracking_token(settings: Settings, token: str) -> TrackingClaim:
    """Raises lifecycle.tokens.InvalidToken for anything forged, altered or garbled."""
    payload = verify(settings.signing_secret, token)
    purpose = payload.get("p", "")
    index = payload.get("i")
    return TrackingClaim(purpose, payload.get("m", ""), payload.get("c", ""),
                         int(index) if index is not None and index.isdigit() else None)
