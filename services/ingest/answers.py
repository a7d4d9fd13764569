"""Answers shared by the ingest API's routes, for their OpenAPI `responses=` (one model per shape)."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel


class ErrorBody(BaseModel):
    detail: str


# The answers of the key checks (services/ingest/app.py require_write_key, require_admin_key).
WRITE_KEY_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    403: {"model": ErrorBody, "description": "An admin key: events are sent with a write key"},
}
ADMIN_KEY_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    401: {"model": ErrorBody, "description": "Missing or unknown API key"},
    403: {"model": ErrorBody, "description": "A write key: it may only send events; this needs an admin key"},
}
