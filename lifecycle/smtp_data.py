"""SMTP transactions without work aiosmtplib repeats on every message: three passes of regular
expressions over a message already in wire form, and four parses of two addresses.

aiosmtplib makes every message's line endings CRLF with a regular expression (twice when the
server offers SIZE: once to measure, once to send) and stuffs the dots of lines starting with one
with another, each a pass over the whole message, about 0.6 ms an email of the dispatcher's own
CPU. A message the dispatcher composes is already in wire form: CRLF line endings only, ending
with one, and its lines rarely start with a dot. For such a message both expressions return it as
it is, which `bytes.count` and `in` (C, a fraction of the time) tell, and they are skipped; any
other message goes through them as before.

It also parses the sender and the recipient with `email.utils.parseaddr` (pure Python, 15 to 25 µs
each, a character at a time) twice per message, and every message now has an envelope sender of its
own (its VERP bounce address) and, mostly, a recipient of its own: a cache of the parses misses. A
plain address (a dot-atom local part at a domain of letters, digits and hyphens, ASCII only) is
what the parse returns unchanged and what its injection check lets through: it is taken as it is,
after one regular expression. Any other address goes through the parse, which is kept for the last
few thousand such addresses; one it refuses is refused again each time (an error is never kept).
tests/unit/test_smtp_data.py holds every fast path to aiosmtplib's own results.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import aiosmtplib.email
import aiosmtplib.protocol
import aiosmtplib.smtp

from lifecycle.addresses import DOT_ATOM

# addresses that are not plain whose parse is kept
PARSED_ADDRESSES = 4096
# RFC 5322's dot-atom at a domain name: `parseaddr` gives such an address back as it is
PLAIN_ADDRESS = re.compile(rf"{DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def in_wire_form(message: bytes) -> bool:
    """Every line ending is CRLF (no lone CR or LF), and the message ends with one."""
    pairs = message.count(b"\r\n")
    return message.endswith(b"\r\n") and pairs == message.count(b"\n") == message.count(b"\r")


def to_wire_form(message: bytes) -> bytes:
    """A message with LF line endings and no CR, as composed, with the CRLF endings SMTP sends."""
    if b"\r" in message:
        return message
    return message.replace(b"\n", b"\r\n")


def _fast_normalize(original: Callable[[bytes], bytes]) -> Callable[[bytes], bytes]:
    def normalize_message_line_endings(message: bytes) -> bytes:
        return message if in_wire_form(message) else original(message)

    normalize_message_line_endings.__wrapped__ = original  # type: ignore[attr-defined]
    return normalize_message_line_endings


class _PeriodStuffing:
    """`PERIOD_REGEX` (`(?m)^\\.`), whose `sub` returns a message without such a line untouched."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern

    def sub(self, replacement: bytes, message: bytes, count: int = 0) -> bytes:
        # (?m)^ matches at the start and after each LF only: what bytes.replace does in C, without
        # the regular expression's pass over every byte (an HTML email's <style> has lines that
        # start with a dot)
        if replacement != b".." or count:
            return self.pattern.sub(replacement, message, count)
        stuffed = message.replace(b"\n.", b"\n..")
        return b"." + stuffed if stuffed.startswith(b".") else stuffed

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern, name)


def _install_address_fast_path() -> bool:
    email: Any = aiosmtplib.email
    smtp: Any = aiosmtplib.smtp
    parse: Callable[[str], str] | None = getattr(email, "parse_address", None)
    if parse is None:
        return False
    original: Callable[[str], str] = parse
    if getattr(original, "cache_info", None) is not None:
        return True  # installed already
    if getattr(smtp, "parse_address", None) is not original:
        return False  # not the aiosmtplib this was written for
    fast = _fast_parse(original)
    email.parse_address = fast  # quote_address (MAIL, RCPT) looks it up there
    smtp.parse_address = fast  # sendmail's own checks
    return True


def _fast_parse(original: Callable[[str], str]) -> Callable[[str], str]:
    cached = functools.lru_cache(maxsize=PARSED_ADDRESSES)(original)
    plain = PLAIN_ADDRESS.fullmatch

    def parse_address(address: str) -> str:
        return address if plain(address) else cached(address)

    parse_address.__wrapped__ = original  # type: ignore[attr-defined]
    parse_address.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return parse_address


def install() -> bool:
    """Put the fast paths in aiosmtplib (once); False when its internals are not the ones expected."""
    addresses = _install_address_fast_path()
    protocol: Any = aiosmtplib.protocol
    smtp: Any = aiosmtplib.smtp
    normalize = getattr(protocol, "normalize_message_line_endings", None)
    period = getattr(protocol, "PERIOD_REGEX", None)
    if normalize is None or period is None:
        return False
    if isinstance(period, _PeriodStuffing):
        return addresses
    if not isinstance(period, re.Pattern) or period.pattern != rb"(?m)^\.":
        return False
    fast = _fast_normalize(normalize)
    protocol.normalize_message_line_endings = fast
    if getattr(smtp, "normalize_message_line_endings", None) is normalize:
        smtp.normalize_message_line_endings = fast
    protocol.PERIOD_REGEX = _PeriodStuffing(period)
    return addresses
