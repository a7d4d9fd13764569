"""Field types: the checks and normalisations every event field goes through."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Final
from zoneinfo import available_timezones

import email_validator
from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, PlainSerializer, WithJsonSchema
from pydantic_core import PydanticCustomError

from lifecycle.addresses import DOT_ATOM
from lifecycle.events.kinds import EmailCategory

# What str.strip() strips (str.isspace()), spelled out so that the OpenAPI document's patterns mean
# exactly what the checks below accept, in any regular expression dialect.
_SPACE = "\\t\\n\\x0b\\x0c\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
WHITESPACE: Final = _SPACE
_CONTROLS = "\\x00-\\x1f\\x7f"
# no control character, and no whitespace at either end
IDENTIFIER_PATTERN: Final = f"^[^{_SPACE}{_CONTROLS}](?:[^{_CONTROLS}]*[^{_SPACE}{_CONTROLS}])?$"
# Text: no control character but tab, line feed and carriage return (PostgreSQL keeps no NUL), and at
# least one character that is not whitespace
_TEXT_CONTROLS = "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f"
TEXT_PATTERN: Final = f"^[^{_TEXT_CONTROLS}]*[^{_SPACE}{_TEXT_CONTROLS}][^{_TEXT_CONTROLS}]*$"
_TEXT = re.compile(TEXT_PATTERN.removeprefix("^").removesuffix("$"), re.DOTALL)
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN.removeprefix("^").removesuffix("$"))


def _check_identifier(value: str) -> str:
    # " 42" and "42" would silently become two customers; refuse rather than strip.
    if not _IDENTIFIER.fullmatch(value):
        raise PydanticCustomError("identifier", "must not start or end with whitespace or contain control characters")
    return value


def _check_text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    if not _TEXT.fullmatch(value):
        raise PydanticCustomError("control", "must not contain control characters (tab and line breaks aside)")
    return value


_HEX = "[0-9A-Fa-f]{1,4}"
_IPV4 = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}"
_IPV6 = "|".join([
    f"(?:{_HEX}:){{7}}{_HEX}", f"(?:{_HEX}:){{1,7}}:", f"(?:{_HEX}:){{1,6}}:{_HEX}",
    f"(?:{_HEX}:){{1,5}}(?::{_HEX}){{1,2}}", f"(?:{_HEX}:){{1,4}}(?::{_HEX}){{1,3}}",
    f"(?:{_HEX}:){{1,3}}(?::{_HEX}){{1,4}}", f"(?:{_HEX}:){{1,2}}(?::{_HEX}){{1,5}}",
    f"{_HEX}:(?::{_HEX}){{1,6}}", f":(?:(?::{_HEX}){{1,7}}|:)"])
# an IPv4 address in dotted decimal, or an IPv6 address in hex groups (no zone, no embedded IPv4): the
# OpenAPI document says exactly this
IP_PATTERN: Final = f"^(?:{_IPV4}|{_IPV6})$"
_IP = re.compile(IP_PATTERN.removeprefix("^").removesuffix("$"))


def _check_ip(value: str) -> str:
    if not _IP.fullmatch(value):
        raise PydanticCustomError("ip", "must be an IPv4 address (dotted decimal) or an IPv6 address (hex groups)")
    return str(ipaddress.ip_address(value))


def ip_text(value: str) -> str | None:
    """An address as events keep it (an IPv4-mapped IPv6 address as its IPv4 one); None for what they do not
    take (a zone, a unix socket's name)."""
    try:
        found = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        found = found.ipv4_mapped
    text = str(found)
    return text if _IP.fullmatch(text) else None


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


_CURRENCY = re.compile(r"[A-Z]{3}")


def _check_currency(value: str) -> str:
    if not _CURRENCY.fullmatch(value):
        raise PydanticCustomError("currency", "must be a 3-letter ISO 4217 currency code such as EUR")
    return value


# The everyday address, all ASCII: a dot-atom local part and letter-digit-hyphen labels under a
# letter TLD. Checked by this expression alone (a full check costs ~0.5 ms); anything else, or a
# punycode label, goes through email-validator. Every address it takes, email-validator takes too,
# with the same result (tests/unit/test_events.py holds it to that).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PLAIN_EMAIL = re.compile(rf"({DOT_ATOM})@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})")


def _plain_email(value: str) -> str | None:
    """The normalized address when it is an everyday one; None when it needs the full check."""
    match = _PLAIN_EMAIL.fullmatch(value)
    if match is None or len(value) > 254 or len(match.group(1)) > 64:
        return None
    domain = match.group(2).lower()
    labels = domain.split(".")
    if any(label[2:4] == "--" for label in labels):
        return None  # xn-- (IDNA) and other reserved label forms
    special = email_validator.SPECIAL_USE_DOMAIN_NAMES
    if any(domain == name or domain.endswith("." + name) for name in special):
        return None
    return f"{match.group(1)}@{domain}"


def _check_email(value: str) -> str:
    # syntax only: whether the mailbox exists is the SMTP server's answer, not ours
    plain = _plain_email(value)
    if plain is not None:
        return plain
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise PydanticCustomError("email", "must be an email address like name@example.com: {reason}",
                                  {"reason": str(exc)}) from None
    return checked.normalized


_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


def _check_locale(value: str) -> str:
    if not _LOCALE.fullmatch(value):
        raise PydanticCustomError("locale", "must be a language tag such as en, en-GB or pt_BR")
    return value


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    # The IANA names known to zoneinfo (tzdata is a dependency, so this is never empty).
    return frozenset(available_timezones())


def _check_timezone(value: str) -> str:
    if value not in _timezones():
        raise PydanticCustomError(
            "timezone", "{value} is not an IANA time zone name such as Europe/Paris", {"value": repr(value)}
        )
    return value


def _check_birthday(value: str) -> str:
    # Full date, or month and day only (RFC 6350 style) for people who keep their year.
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            date.fromisoformat(value)
            return value
        if re.fullmatch(r"--\d{2}-\d{2}", value):
            date.fromisoformat("2000" + value[1:])  # a leap year, so --02-29 is allowed
            return value
    except ValueError:
        pass
    raise PydanticCustomError("birthday", "must be a real date as YYYY-MM-DD or --MM-DD")


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")


def _check_datetime_input(value: object) -> object:
    # pydantic would also take Unix timestamps and bare dates; the contract is RFC 3339.
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        match = _RFC3339.fullmatch(value)
        if match and match.group(1) is None:
            raise PydanticCustomError(
                "datetime_naive",
                "must include a UTC offset (Z or +hh:mm); date-times without one are ambiguous",
            )
        if match:
            return value
    raise PydanticCustomError(
        "datetime_format", "must be an RFC 3339 date-time with offset, such as 2024-05-01T12:00:00+02:00"
    )


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _sorted_unique(values: list[EmailCategory]) -> list[EmailCategory]:
    # One spelling per choice, so equal preferences compare and hash equal everywhere.
    return sorted(set(values))


STEP_PATTERN: Final = "^[1-9][0-9]{0,5}$"


def _whole_number(value: object) -> object:
    # 3.0 is the integer 3 in JSON (and in JSON Schema); true is not 1 (bool is neither type below)
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _coerce_step(value: object) -> object:
    # The send step number, as a JSON number or as text; kept as text.
    value = _whole_number(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_step(value: str) -> str:
    if not re.fullmatch(STEP_PATTERN.strip("^$"), value):
        raise PydanticCustomError("step", "must be the number of a send step of the journey: 1, 2, 3 ...")
    return value


Identifier = Annotated[
    str, Field(min_length=1, max_length=128, pattern=None, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
    AfterValidator(_check_identifier),
]
Text = Annotated[str, Field(min_length=1, max_length=512, json_schema_extra={"pattern": TEXT_PATTERN}),
                 AfterValidator(_check_text)]
Link = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
                 AfterValidator(_check_identifier)]
# an absolute http(s) URL with a host (no user part), nothing a browser would read otherwise (spaces,
# controls): the one pattern is both the document's and the check
WEB_LINK_PATTERN: Final = (f"^[Hh][Tt][Tt][Pp][Ss]?://[^{_SPACE}{_CONTROLS}/?#@:\\[\\]]+(?::[0-9]{{1,5}})?"
                           f"(?:[/?#][^{_SPACE}{_CONTROLS}]*)?$")
_WEB_LINK = re.compile(WEB_LINK_PATTERN)


def is_web_link(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 2048 and _WEB_LINK.fullmatch(value) is not None


def _check_web_link(value: str) -> str:
    if not _WEB_LINK.fullmatch(value):
        raise PydanticCustomError("web_link", "must be an absolute http(s) URL such as https://shop.example/cart,"
                                              " without spaces")
    return value


WebLink = Annotated[str, Field(min_length=1, max_length=2048, json_schema_extra={"pattern": WEB_LINK_PATTERN}),
                    AfterValidator(_check_web_link)]
MONEY_LIMIT: Final = Decimal("100000000000000")  # 10^14: fourteen digits before the point


def _round_money(value: Decimal) -> Decimal:
    # 4 places: a client's float arithmetic (0.1 + 0.2 = 0.30000000000000004) is not an error
    if not value.is_finite() or not 0 <= value < MONEY_LIMIT:
        raise PydanticCustomError("money", "must be a positive amount below 10^14 (0 allowed)")
    exponent = value.as_tuple().exponent
    return value.quantize(Decimal("0.0001")) if isinstance(exponent, int) and exponent < -4 else value


Money = Annotated[
    Decimal,
    Field(allow_inf_nan=False),
    AfterValidator(_round_money),
    WithJsonSchema({"anyOf": [
        {"type": "number", "minimum": 0, "exclusiveMaximum": 100_000_000_000_000},
        {"type": "string", "pattern": "^[0-9]{1,14}(?:\\.[0-9]+)?$"},
    ], "description": "An amount, rounded to 4 decimal places"}),
]
Currency = Annotated[
    str,
    BeforeValidator(_upper),
    Field(description="ISO 4217 code, e.g. EUR", json_schema_extra={"pattern": "^[A-Za-z]{3}$"}),
    AfterValidator(_check_currency),
]
Quantity = Annotated[int, Field(strict=True, ge=1, le=1_000_000), BeforeValidator(_whole_number)]
Email = Annotated[str, Field(min_length=3, max_length=254, json_schema_extra={"format": "email"}),
                  AfterValidator(_check_email)]
Locale = Annotated[str, Field(min_length=2, max_length=35, json_schema_extra={"pattern": f"^{_LOCALE.pattern}$"}),
                   AfterValidator(_check_locale)]
TimeZoneName = Annotated[
    str,
    Field(description="IANA name, e.g. Europe/Paris",
          json_schema_extra=lambda schema: schema.update(enum=sorted(_timezones()))),
    AfterValidator(_check_timezone),
]
# a month and a day that exist in some year (29 February included)
_MONTH_DAY = "(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-9])|(?:0[13-9]|1[0-2])-30|(?:0[13578]|1[02])-31)"
Birthday = Annotated[
    str,
    Field(description="YYYY-MM-DD or --MM-DD", json_schema_extra=lambda schema: schema.update(anyOf=[
        {"type": "string", "format": "date", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        {"type": "string", "pattern": f"^--{_MONTH_DAY}$"},
    ])),
    AfterValidator(_check_birthday),
]
Code = Annotated[str, Field(min_length=1, max_length=64, json_schema_extra={"pattern": IDENTIFIER_PATTERN}),
                 AfterValidator(_check_identifier)]
UnsubscribedCategories = Annotated[
    list[EmailCategory],
    Field(description="Kinds of email the customer left; sorted, without duplicates; empty: receives everything"),
    AfterValidator(_sorted_unique),
]
Step = Annotated[
    str, BeforeValidator(_coerce_step),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999_999},
                              {"type": "string", "pattern": STEP_PATTERN}],
                    "description": "The send step number (from 1), as a number or as text"}),
    AfterValidator(_check_step),
]
UtcDatetime = Annotated[
    AwareDatetime,
    BeforeValidator(_check_datetime_input),
    AfterValidator(_to_utc),
    # Explicit "+00:00" rather than "Z" so any ISO 8601 reader sees the offset.
    PlainSerializer(lambda moment: moment.isoformat(), return_type=str, when_used="json"),
]
