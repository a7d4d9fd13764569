"""RFC 5322's dot-atom, the piece of address syntax the fast paths share: an everyday address checked
without email-validator (lifecycle/events/fields.py), a header written as given (services/dispatcher/
compose.py), an address quoted for MAIL and RCPT without parsing it (lifecycle/smtp_data.py)."""

from __future__ import annotations

from typing import Final

ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
DOT_ATOM: Final = rf"{ATEXT}(?:\.{ATEXT})*"
