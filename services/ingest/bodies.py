"""Request bodies as the ingest API reads them: within a size limit, and as strict JSON (money as Decimal),
each failure an HTTP error that says what is wrong."""

from __future__ import annotations

import json
import re
from decimal import Decimal

from fastapi import HTTPException, Request


def _reject_constant(name: str) -> object:
    # Python's json would otherwise accept NaN and Infinity, which are not JSON.
    raise ValueError(f"{name} is not valid JSON")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


EMPTY_EVENTS = 'the request body is empty; send one event or {"events": [...]} as JSON'


def decode_json(body: bytes, empty: str = EMPTY_EVENTS) -> object:
    """The body as JSON; an HTTP 400 saying why not (`empty`: what to say of an empty body)."""
    if not body.strip():
        raise HTTPException(400, empty)
    try:
        # Decimal keeps money exact; utf-8-sig tolerates a byte order mark.
        payload = json.loads(body.decode("utf-8-sig"), parse_float=Decimal, parse_constant=_reject_constant)
        # "\ud800" alone is valid JSON but no text: it could never be written to Kafka or PostgreSQL. Only
        # a \u escape of a surrogate makes one (UTF-8 cannot carry them): only then is the payload encoded
        if _SURROGATE_ESCAPE.search(body):
            json.dumps(payload, ensure_ascii=False, default=str).encode("utf-8")
        return payload
    except UnicodeEncodeError:
        raise HTTPException(400, "the request body holds a \\u escape that is no character (a lone surrogate)"
                            ) from None
    except UnicodeDecodeError:
        raise HTTPException(400, "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise HTTPException(
            400, f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "it is nested too deeply"
        raise HTTPException(400, f"the request body is not valid JSON: {detail}") from None


async def read_body(request: Request, limit: int) -> bytes:
    too_large = HTTPException(413, f"the request body is larger than {limit} bytes; split the batch")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise HTTPException(400, "the Content-Length header is not a number") from None
        if size > limit:
            raise too_large
    # Content-Length can lie or be absent (chunked): count what actually arrives.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
