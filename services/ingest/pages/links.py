"""The signed token in a link's path: the authorisation, refused with a page before anything else happens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from fastapi import Path
from fastapi.responses import HTMLResponse

from lifecycle.tokens import (
    TOKEN_SCHEMA,
    ConfirmClaim,
    InvalidToken,
    SigningKeys,
    UnsubscribeClaim,
    read_confirm_token,
    read_unsubscribe_token,
)
from services.ingest.pages.render import refusal

# The signed token of a link in an email, as the OpenAPI document describes it.
LinkToken = Annotated[str, Path(description="The link's signed token", json_schema_extra=TOKEN_SCHEMA)]


def unsubscribe_claim(keys: SigningKeys, token: str, shop: str) -> UnsubscribeClaim | HTMLResponse:
    try:
        return read_unsubscribe_token(keys, token)
    except InvalidToken as exc:
        return refusal(exc, shop)


def confirm_claim(keys: SigningKeys, token: str, shop: str) -> ConfirmClaim | HTMLResponse:
    try:
        return read_confirm_token(keys, token)
    except InvalidToken as exc:
        return refusal(exc, shop)


def sent_to_current_address(found: Mapping[str, object], claim: ConfirmClaim) -> bool:
    stored = found.get("email")
    return isinstance(stored, str) and stored.strip().lower() == claim.email
