"""The customer store, as the link pages use it: mostly to pick a language, and to check a confirmation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Final, Protocol

from sqlalchemy.exc import SQLAlchemyError

from services.ingest.pages.texts import Lang, lang_of

# The package's logger, so records keep the name they had before pages.py became a package.
log = logging.getLogger(__package__)

# The customer lookup only picks a language: never let a slow database hold the page.
LOOKUP_TIMEOUT_SECONDS: Final = 2.0


class CustomerReader(Protocol):
    """Looks a customer up for `GET /v1/customers/{id}`; None when unknown."""

    # A plain (not async) signature so both `async def` readers and
    # `Callable[[str], Awaitable[...]]` values satisfy it.
    def __call__(self, customer_id: str, /) -> Awaitable[dict[str, object] | None]: ...


class LookupFailed(Exception):
    """The customer store did not answer (or none is configured)."""


class CustomerLookup:
    """The customer behind a link, through `reader` (None when no store is configured)."""

    def __init__(self, reader: CustomerReader | None, default_lang: Lang) -> None:
        self._reader = reader
        self._default_lang = default_lang

    async def lookup(self, customer_id: str) -> dict[str, object] | None:
        """The stored customer (None when unknown); LookupFailed when the store does not answer."""
        if self._reader is None:
            raise LookupFailed("no customer store configured")
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                return await self._reader(customer_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise LookupFailed(str(exc) or type(exc).__name__) from exc

    async def customer(self, customer_id: str) -> dict[str, object] | None:
        """The stored customer for what only shapes a page (language, ticks): None when unknown or unreachable."""
        if self._reader is None:
            return None
        try:
            return await self.lookup(customer_id)
        except LookupFailed as exc:
            # Only the language or the ticks depend on it: show the page anyway.
            log.warning("customer lookup for a link page failed: %s", exc)
            return None

    async def lang_for(self, explicit: str | None, customer_id: str) -> Lang | None:
        chosen = lang_of(explicit)
        if chosen is not None:
            return chosen
        found = await self.customer(customer_id)
        return lang_of(found.get("locale")) if found is not None else None

    async def customer_and_lang(self, customer_id: str, explicit: str | None) -> tuple[dict[str, object] | None, Lang]:
        """The customer (None when unknown or the lookup failed) and the language to show them."""
        found = await self.customer(customer_id)
        return found, lang_of(explicit) or (lang_of(found.get("locale")) if found else None) or self._default_lang
