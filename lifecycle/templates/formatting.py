"""Locale-aware filters for templates: money, percentages, dates in the customer's time zone.

The render's locale and time zone come from the template context (`_format_locale`,
`customer.timezone`), so the same template formats "59,00 €" for a French reader and
"€59.00" for an English one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_time, get_datetime_format
from babel.numbers import format_currency, format_decimal, format_percent
from jinja2 import pass_context
from jinja2.runtime import Context

FORMAT_LOCALE_KEY = "_format_locale"
DateFormat = Literal["short", "medium", "long", "full"]
DATE_FORMATS: tuple[DateFormat, ...] = ("short", "medium", "long", "full")


@lru_cache(maxsize=256)
def babel_locale(tag: str) -> Locale | None:
    """`en-GB`, `en_GB` or `en` as a Babel locale; None when Babel does not know it."""
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        return None


def format_locale_for(template_locale: str, customer_locale: object) -> Locale:
    """The customer's own variant (en-GB) when it is of the template's language, else the template's locale."""
    fallback = babel_locale(template_locale) or Locale.parse("en")
    if isinstance(customer_locale, str) and customer_locale:
        wanted = babel_locale(customer_locale)
        if wanted is not None and wanted.language == fallback.language:
            return wanted
    return fallback


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")  # an unknown zone is no reason to drop the email


def _locale(ctx: Context) -> Locale:
    value = ctx.get(FORMAT_LOCALE_KEY)
    return value if isinstance(value, Locale) else Locale.parse("en")


# What these filters read of the context beside their arguments is declared in reads.IMPLICIT: the memo
# of rendered contents (memo.py) keys each email by it.
def _tz(ctx: Context) -> ZoneInfo:
    customer = ctx.get("customer")
    name = customer.get("timezone") if isinstance(customer, dict) else None
    return _zone(name) if isinstance(name, str) and name else _zone("UTC")


def _number(value: Any, what: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what}: expected a number, got {value!r}")
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what}: expected a number, got {value!r}") from None


@pass_context
def money(ctx: Context, amount: Any, currency: Any) -> str:
    """`{{ 59|money("EUR") }}`: 59,00 € in French, €59.00 in English."""
    if not isinstance(currency, str) or len(currency) != 3:
        raise ValueError(f"money: expected a 3-letter currency code, got {currency!r}")
    return str(format_currency(_number(amount, "money"), currency.upper(), locale=_locale(ctx)))


@pass_context
def percent(ctx: Context, amount: Any) -> str:
    """`{{ 15|percent }}`: 15 % in French, 15% in English (the amount is in percent, not a fraction)."""
    return str(format_percent(_number(amount, "percent") / 100, locale=_locale(ctx)))


@pass_context
def number(ctx: Context, amount: Any) -> str:
    return str(format_decimal(_number(amount, "number"), locale=_locale(ctx)))


@pass_context
def discount(ctx: Context, coupon: Any) -> str:
    """A coupon's value: `15 %` for a percent coupon, `10,00 €` for a fixed one."""
    if not isinstance(coupon, dict):
        raise ValueError(f"discount: expected a coupon, got {coupon!r}")
    if coupon.get("kind") == "fixed":
        return money(ctx, coupon.get("amount"), coupon.get("currency") or "EUR")
    return percent(ctx, coupon.get("amount"))


def _moment(value: Any, what: str) -> datetime | date:
    if isinstance(value, datetime | date):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
    raise ValueError(f"{what}: expected a date or time, got {value!r}")


def _local(ctx: Context, value: datetime) -> datetime:
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return aware.astimezone(_tz(ctx))


@pass_context
def datetime_filter(ctx: Context, value: Any, format: str = "long") -> str:
    """`{{ coupon.expires_at|datetime }}`: 10 juillet 2026, 23:59 in the customer's time zone.

    `format` is short, medium, long or full for the date part (the time is always hours and minutes).
    """
    moment = _moment(value, "datetime")
    if not isinstance(moment, datetime):
        return date_filter(ctx, moment, format)
    if format not in DATE_FORMATS:
        raise ValueError(f"datetime: format is one of {', '.join(DATE_FORMATS)}, got {format!r}")
    local, locale, width = _local(ctx, moment), _locale(ctx), format
    pattern = str(get_datetime_format(width, locale=locale)).replace("'", "")
    return pattern.replace("{0}", str(format_time(local, "short", locale=locale))).replace(
        "{1}", str(format_date(local, width, locale=locale))
    )


@pass_context
def date_filter(ctx: Context, value: Any, format: str = "long") -> str:
    """`{{ coupon.expires_at|date }}`: 10 juillet 2026, the day in the customer's time zone."""
    moment = _moment(value, "date")
    if format not in DATE_FORMATS:
        raise ValueError(f"date: format is one of {', '.join(DATE_FORMATS)}, got {format!r}")
    day = _local(ctx, moment).date() if isinstance(moment, datetime) else moment
    return str(format_date(day, format, locale=_locale(ctx)))


FILTERS = {
    "money": money,
    "percent": percent,
    "number": number,
    "discount": discount,
    "datetime": datetime_filter,
    "date": date_filter,
}
