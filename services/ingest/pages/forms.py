"""Reading the forms the link pages post, and RFC 8058 one-click bodies from mail clients."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qs

from fastapi import Request

# A form from these pages is a few hundred bytes; anything bigger is not one of ours.
MAX_FORM_BYTES: Final = 16 * 1024


async def read_form(request: Request) -> dict[str, list[str]] | None:
    """The fields of a url-encoded form body; {} for another body; None if it is too big or garbled.

    RFC 8058 mail clients may post multipart bodies: their only field says nothing the
    token does not, so such bodies are not read at all.
    """
    if not request.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return None


def field(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None
