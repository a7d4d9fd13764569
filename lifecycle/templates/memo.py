"""Emails that differ only by their send's own links, rendered once.

A journey's email to thousands of customers is mostly one email: the template reads a first name
and the shop's name, and what differs from one customer to the next is the links, each carrying a
token of its send (click tracking, unsubscribe, preferences, confirmation). Rendering it anew for
each customer took most of the time of composing an email.

So a send's links are first given to the template as placeholders of the very shape of its own
URLs: the same text up to the token (scheme, host, path), then a token of the same length. The
rendered subject, HTML and text are kept under what the template reads of its context (`reads`:
`customer.first_name`, not the customer's address or id unless it shows them) and under the shape
of the links, and each email gets its own tokens put in place of the placeholder tokens. Whatever
the template does with a link (cut, wrap, test its length, change its scheme), it sees the URL's
length and everything of it but the token's characters, so it does the same with the URL itself.
A template that changed a token (encoded, cut into it, upper-cased it) leaves a piece of a
placeholder, which is looked for: that content is rendered with the send's own links, as is any
email whose template reads something that cannot be keyed (an object of another type) or a link
whose URL would be escaped in HTML.
"""

from __future__ import annotations

import html
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from lifecycle.templates.formatting import FORMAT_LOCALE_KEY
from lifecycle.templates.links import Links
from lifecycle.templates.reads import Reads

# rendered contents kept per process (an email's HTML and text, tens of kB each)
MEMO_SIZE = 256
# variables the render sets itself from the locale, or that hold the placeholder links
_DERIVED = frozenset({"links", "t", "locale", FORMAT_LOCALE_KEY, "subject", "preheader"})
_MIN_TOKEN = 24
# A template whose emails seldom repeat (a name or a cart of each customer's own) is rendered twice
# on a miss (with its own links, then with placeholders) for nothing: after _WARM_UP misses with
# fewer than one hit in _COLD_SHARE, one miss in _COLD_TRIES is still kept, so repeats are noticed.
_WARM_UP = 32
_COLD_SHARE = 8
_COLD_TRIES = 16


@dataclass(frozen=True)
class SendContent:
    """One email's content, with its own links."""

    subject: str
    locale: str
    text: str
    html: str  # without the open pixel
    links: list[dict[str, str]]  # tracked links in index order (name, target URL)


@dataclass(frozen=True)
class _Entry:
    content: SendContent  # rendered with placeholders
    token_lengths: tuple[int, ...]  # per slot: the untracked links, then each tracked link


class _NotKeyable(Exception):
    pass


class SendMemo:
    """`size` 0: every email rendered with its own links."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[Any, ...], _Entry | None] = OrderedDict()
        self._counts: dict[Hashable, list[int]] = {}  # per template: [hits, misses]
        # digits, which no change of case alters, between letters, which most do
        self._nonce = f"{secrets.randbelow(10 ** 16):016d}"
        self._placeholder = re.compile(rf"Lc{self._nonce}(\d{{4}})z*Y")

    def render(self, render: Callable[[Links], SendContent], reads: Reads | None,
               context_for: Callable[[Links], dict[str, Any]], template: Hashable, key: tuple[Any, ...],
               shop_url: str, untracked: Mapping[str, str], tracked: Callable[[int], str]) -> SendContent:
        """The content `render(links)` gives with the send's own links (`untracked` by name, `tracked(index)`),
        from the memo when an email of the same content was rendered before. `reads`: what the render
        reads of `context_for(links)` (None: unknown); `template`: what renders it (how often its emails
        repeat is counted by it); `key`: everything else the content depends on."""
        clicks: dict[int, str] = {}

        def click(index: int) -> str:
            url = clicks.get(index)
            if url is None:
                url = clicks[index] = tracked(index)
            return url

        def own_links() -> SendContent:
            return render(Links(shop_url, untracked, click))

        if self.size == 0 or reads is None:
            return own_links()
        names = sorted(untracked)
        real = [untracked[name] for name in names]
        shapes = [_shape(url) for url in [*real, click(0)]]
        if any(shape is None for shape in shapes):
            return own_links()
        slots: list[str] = []  # per slot (the untracked links, then each tracked link): its placeholder

        def placeholder(url: str) -> str:
            cut = _token_start(url)
            token = f"Lc{self._nonce}{len(slots):04d}{'z' * (len(url) - cut - len(self._nonce) - 7)}Y"
            slots.append(url[:cut] + token)
            return slots[-1]

        def own_url(slot: int) -> str:
            return real[slot] if slot < len(real) else click(slot - len(real))

        placed = Links(shop_url, {name: placeholder(url) for name, url in zip(names, real, strict=True)},
                       lambda index: placeholder(click(index)))
        try:
            full_key = (*key, shop_url, tuple(names), tuple(shapes), _context_key(reads, context_for(placed)))
            hash(full_key)
        except (_NotKeyable, TypeError):
            return own_links()
        counts = self._counts.setdefault(template, [0, 0])
        entry = self._entries.get(full_key, _MISSING)
        if entry is _MISSING:
            own = own_links()
            self.misses += 1
            counts[1] += 1
            if counts[1] >= _WARM_UP and counts[0] * _COLD_SHARE < counts[1] and counts[1] % _COLD_TRIES:
                return own  # this template's emails seldom repeat: rendered once, not twice
            self._entries[full_key] = self._entry(render, placed, slots, own, own_url)
            if len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return own
        self.hits += 1
        counts[0] += 1
        self._entries.move_to_end(full_key)
        filled = None if entry is None else self._filled(entry, own_url)
        return own_links() if filled is None else filled

    def _entry(self, render: Callable[[Links], SendContent], placed: Links, slots: list[str], own: SendContent,
               own_url: Callable[[int], str]) -> _Entry | None:
        """What is kept of the content rendered with placeholders; None when the template did anything
        with a token but copy it whole: filled with this send's own tokens, the placeholders must give
        the very email its own links gave."""
        try:
            content = render(placed)
        except Exception:
            return None
        nonce = self._nonce
        for text in (content.subject, content.text, content.html):
            found = self._placeholder.findall(text)
            if text.count(nonce) != len(found) or any(int(slot) >= len(slots) for slot in found):
                return None
        if any(nonce in value for link in content.links for value in link.values()):
            return None
        entry = _Entry(content, tuple(len(url) - _token_start(url) for url in slots))
        return entry if self._filled(entry, own_url) == own else None

    def _filled(self, entry: _Entry, own_url: Callable[[int], str]) -> SendContent | None:
        """The entry with the send's own tokens; None when one has another length or needs escaping."""
        urls = [own_url(slot) for slot in range(len(entry.token_lengths))]
        tokens = [url[_token_start(url):] for url in urls]
        if tuple(map(len, tokens)) != entry.token_lengths or not all(map(_plain, urls)):
            return None

        def own(match: re.Match[str]) -> str:
            return tokens[int(match.group(1))]

        placed = entry.content
        return SendContent(subject=self._placeholder.sub(own, placed.subject), locale=placed.locale,
                           text=self._placeholder.sub(own, placed.text), html=self._placeholder.sub(own, placed.html),
                           links=[dict(link) for link in placed.links])


_MISSING: Any = object()


def _token_start(url: str) -> int:
    """Where a link's token starts: after the URL's last `/`."""
    return url.rfind("/") + 1


def _shape(url: str) -> tuple[str, int] | None:
    """A URL's text up to its token, and the token's length; None when the token is too short to
    hold a placeholder."""
    cut = _token_start(url)
    return (url[:cut], len(url) - cut) if len(url) - cut >= _MIN_TOKEN else None


def _plain(url: str) -> bool:
    """Written the same escaped or not: the placeholder's token was, so the URL's must be."""
    return html.escape(url) == url


def _context_key(reads: Reads, context: Mapping[str, Any]) -> tuple[Any, ...]:
    """What the template reads of `context`, as a hashable value."""
    found: list[Any] = []
    for name, keys in reads.ordered:
        if name in _DERIVED:
            continue
        value = context.get(name, _MISSING)
        if value is _MISSING:
            found.append((name, "missing"))
        elif keys is None or not isinstance(value, dict):
            found.append((name, _canonical(value)))
        else:
            found.append((name, tuple((key, _canonical(value[key]) if key in value else "missing")
                                      for key in keys)))
    return tuple(found)


def _canonical(value: Any) -> Any:
    """A hashable value equal for two values only if they render the same; their types included."""
    kind = type(value)
    if value is None or kind in (str, int, float, bool):
        return (kind, value)
    if kind is dict:
        return (dict, tuple((_canonical(k), _canonical(v)) for k, v in value.items()))
    if kind in (list, tuple):
        return (kind, tuple(_canonical(item) for item in value))
    if kind in (datetime, time):
        return (kind, value.isoformat(), repr(value.tzinfo))
    if kind in (date, Decimal):
        return (kind, str(value))
    raise _NotKeyable(kind.__name__)
