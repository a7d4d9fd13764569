"""Rendered MJML to its HTML (MJML, CSS inlining) and text part, converted once per distinct content.

Most of an email's cost is converting its MJML, and two emails of a template often differ only by
the URLs of their send: tracked links and unsubscribe links carry a token per send. Those URLs are
swapped for placeholders before the conversion, which is cached under the swapped MJML, and put
back after it. The conversion copies a URL as it is, so the result is the one converting the
original would give; a conversion that did anything else with a URL (encoded or cut it) leaves a
piece of a placeholder behind, and that content is converted without the cache instead.
"""

from __future__ import annotations

import html
import re
import secrets
from collections import OrderedDict
from pathlib import Path

from lifecycle.templates.errors import TemplateError
from lifecycle.templates.html import compile_mjml
from lifecycle.templates.text import mjml_to_text

# converted emails kept per process: each is an email's HTML and text (tens of kB)
CACHE_SIZE = 256


class ConvertedCache:
    """`size` 0: every email converted on its own."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Path, bool, str], tuple[str, str | None]] = OrderedDict()
        # a nonce per process, so no template text contains a placeholder by chance; digits, which
        # no change of case or escaping alters
        self._nonce = f"{secrets.randbelow(10 ** 16):016d}"
        self._placeholder = re.compile(rf"https://(\d+)\.{self._nonce}\.invalid/")

    def convert(self, path: Path, mjml: str, urls: set[str], with_text: bool) -> tuple[str, str | None]:
        """The HTML of `mjml`, and its text part when `with_text`; `urls` are the send's own URLs."""
        if self.size == 0 or self._nonce in mjml:
            return _convert(path, mjml, with_text)
        swapped, order = self._swap(mjml, urls)
        key = (path, with_text, swapped)
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            try:
                found = _convert(path, swapped, with_text)
            except TemplateError:
                return _convert(path, mjml, with_text)  # the error as the original content gives it
            self._entries[key] = found
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
        else:
            self.hits += 1
            self._entries.move_to_end(key)
        if not order:
            return found
        html_part, text_part = found
        try:
            html_part = self._unswap(html_part, order)
            text_part = self._unswap(text_part, order) if text_part is not None else None
        except IndexError:  # a placeholder the swap did not make: a converter wrote one of its own
            html_part = self._nonce
        if self._nonce in html_part or (text_part is not None and self._nonce in text_part):
            self._entries.pop(key, None)
            return _convert(path, mjml, with_text)
        return html_part, text_part

    def _swap(self, mjml: str, urls: set[str]) -> tuple[str, list[str]]:
        # numbered by first appearance, so two emails with the same content get the same placeholders
        present = sorted(((at, url) for url in urls
                          if _plain(url) and self._nonce not in url and (at := mjml.find(url)) != -1),
                         key=lambda item: (item[0], -len(item[1])))
        order = [url for _, url in present]
        # longest first: a URL inside another is not cut out of it
        for index in sorted(range(len(order)), key=lambda i: -len(order[i])):
            mjml = mjml.replace(order[index], f"https://{index}.{self._nonce}.invalid/")
        return mjml, order

    def _unswap(self, text: str, order: list[str]) -> str:
        return self._placeholder.sub(lambda match: order[int(match.group(1))], text)


def _plain(url: str) -> bool:
    """Written the same escaped or not, in HTML and in text: no conversion can read it differently."""
    return bool(url) and html.escape(url) == url


def _convert(path: Path, mjml: str, with_text: bool) -> tuple[str, str | None]:
    return compile_mjml(path, mjml), mjml_to_text(mjml) if with_text else None
