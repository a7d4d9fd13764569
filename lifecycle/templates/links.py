"""The links of one message: every link a template uses goes through the click tracker.

Templates write `links.cart`, `links["product:" ~ id]` or `track(url, name)`; each
distinct (name, URL) gets the next index and its tracked URL. The list, in index
order, is stored with the send: the click redirect goes to `links[index].url` and
nowhere else. The unsubscribe, preferences and confirmation links are not tracked:
they must work as they are (RFC 8058 one-click, consent proof), and a click on them
is no engagement.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote, urlsplit

from jinja2.exceptions import UndefinedError

UNTRACKED = ("unsubscribe", "preferences", "confirm")
PRODUCT_PREFIX = "product:"
# what str.isspace() calls whitespace (the same test as `\s`), control characters, DEL
_UNREADABLE = re.compile(r"[\s\x00-\x1f\x7f]")
# href="..." or href='...' in rendered MJML; values come out of autoescaped Jinja, so quotes are escaped
# `\bhref` in any case. Spelled with classes rather than IGNORECASE and \b (the look-behind) so that the
# search skips to each h or H: the other spelling tried every position of the markup (0.2 ms an email).
# No character outside ASCII matches h, r, e or f when case is ignored (a test checks every one).
_HREF = re.compile(r"""([hH](?<!\w[hH])[rR][eE][fF]\s*=\s*)(["'])(.*?)\2""", re.DOTALL)


def url_segment(value: object) -> str:
    """`value` as one URL path segment: `/`, `?`, `#`, `%`, spaces and non-ASCII are percent-encoded,
    so data from events (a product id) cannot leave its segment or change the URL's meaning."""
    return quote(str(value), safe="")


def product_url(shop_url: str, product_id: str) -> str:
    """The shop's page of a product: `{shop}/products/{id}`, the id encoded as one segment."""
    base = shop_url.rstrip("/")
    segment = url_segment(product_id)
    if segment in (".", ".."):
        # Browsers resolve a dot segment (/products/.. is the site root): no product page can be
        # named so, and the link goes to the shop instead.
        return shop_url
    return f"{base}/products/{segment}"


def product_image_url(shop_url: str, product_id: str) -> str:
    """The shop's picture of a product: `{shop}/images/{id}.jpg`, the id encoded as one segment."""
    return f"{shop_url.rstrip('/')}/images/{url_segment(product_id)}.jpg"


def is_web_url(value: object) -> bool:
    """An absolute http(s) URL with a host and nothing a browser would read differently (spaces, controls)."""
    if not isinstance(value, str) or not value or _UNREADABLE.search(value):
        return False
    try:
        parts = urlsplit(value)
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed port or IPv6 literal
        return False


def shop_links(shop_url: str) -> dict[str, str]:
    """The named links back to the shop, from `LIFECYCLE_SHOP_URL`."""
    base = shop_url.rstrip("/")
    return {
        "shop": shop_url,
        "cart": f"{base}/cart",
        "satisfied": f"{base}/feedback?answer=satisfied",
        "not_satisfied": f"{base}/feedback?answer=not_satisfied",
        "review": f"{base}/review",
        "support": f"{base}/support",
        "account": f"{base}/account",
        "referral": f"{base}/referral",
    }


class Links:
    """Named links (`links.cart`) and any URL (`track(url)`), each resolved to its tracked URL.

    `tracker(index)` makes the tracked URL of link `index`; None leaves URLs as they are
    (a preview without tracking).
    """

    def __init__(self, shop_url: str, untracked: Mapping[str, str],
                 tracker: Callable[[int], str] | None) -> None:
        self._shop = shop_url.rstrip("/")
        self._named = shop_links(shop_url)
        self._untracked = dict(untracked)
        self._tracker = tracker
        self._collected: list[dict[str, str]] = []
        self._by_key: dict[tuple[str, str], str] = {}
        # tracked URLs and untracked ones are left alone when hrefs are rewritten
        self._final: set[str] = set(self._untracked.values())

    def __getitem__(self, name: str) -> str:
        if name in self._untracked:
            return self._untracked[name]
        if name in self._named:
            return self.track(self._named[name], name)
        if name.startswith(PRODUCT_PREFIX) and len(name) > len(PRODUCT_PREFIX):
            return self.track(product_url(self._shop, name[len(PRODUCT_PREFIX):]), name)
        known = ", ".join([*sorted(self._named), *UNTRACKED, "product:<id>"])
        raise UndefinedError(f"no link named {name!r}; links are {known}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._untracked or name in self._named
                                          or name.startswith(PRODUCT_PREFIX))

    def track(self, url: str, name: str | None = None) -> str:
        """The tracked URL for `url`, recorded under `name` (default: the URL itself).

        Only web links: the click redirect follows nothing else, so anything else would be a dead link.
        """
        if url in self._final:
            return url
        if not is_web_url(url):
            raise UndefinedError(f"track() takes an absolute http(s) URL without spaces, got {url[:80]!r}")
        key = (name or url, url)
        found = self._by_key.get(key)
        if found is not None:
            return found
        index = len(self._collected)
        self._collected.append({"name": key[0], "url": url})
        tracked = self._tracker(index) if self._tracker is not None else url
        self._by_key[key] = tracked
        self._final.add(tracked)
        return tracked

    def track_hrefs(self, markup: str) -> str:
        """Every http(s) href not already tracked (a URL written in the template) goes through the tracker."""

        def replace(match: re.Match[str]) -> str:
            url = html.unescape(match.group(3)).strip()
            if url in self._final or not is_web_url(url):
                return match.group(0)
            return f"{match.group(1)}{match.group(2)}{html.escape(self.track(url))}{match.group(2)}"

        return _HREF.sub(replace, markup)

    def issued(self) -> set[str]:
        """Every URL this message's links resolved to: tracked URLs and the untracked ones."""
        return set(self._final)

    def collected(self) -> list[dict[str, str]]:
        """The message's tracked links in index order: what `sends.links` stores."""
        return [dict(link) for link in self._collected]
