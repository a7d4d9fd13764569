"""The vocabulary of events: their types, consent states and email categories."""

from __future__ import annotations

from enum import StrEnum
from typing import Final, Literal


class EventType(StrEnum):
    CUSTOMER_SIGNED_UP = "customer_signed_up"
    CUSTOMER_UPDATED = "customer_updated"
    # a profile as the shop knows it now (Segment's identify): the first one signs the customer up, the
    # next ones update, so a library that identifies at every login starts no sign-up journey again
    CUSTOMER_IDENTIFIED = "customer_identified"
    # the profile under properties.previous_id (an anonymous visitor, an old id) is this customer (Segment's
    # alias): what it did joins this profile, and its later events apply here
    CUSTOMER_MERGED = "customer_merged"
    CONSENT_CONFIRMED = "consent_confirmed"
    UNSUBSCRIBED = "unsubscribed"
    PAGE_VIEWED = "page_viewed"
    PRODUCT_VIEWED = "product_viewed"
    CART_UPDATED = "cart_updated"
    CART_LINE_CHANGED = "cart_line_changed"  # one product added to or removed from a cart (Segment's Product Added)
    CHECKOUT_STARTED = "checkout_started"
    ORDER_PLACED = "order_placed"
    ORDER_CANCELLED = "order_cancelled"
    ORDER_REFUNDED = "order_refunded"
    EMAIL_OPENED = "email_opened"
    EMAIL_CLICKED = "email_clicked"
    EMAIL_BOUNCED = "email_bounced"
    EMAIL_COMPLAINED = "email_complained"
    TRACK = "track"  # any other thing the customer did, by name (Segment's track): activity, and a trigger


# Only these types describe the customer themselves, so only they carry traits.
CUSTOMER_TYPES: Final = frozenset({EventType.CUSTOMER_SIGNED_UP, EventType.CUSTOMER_UPDATED,
                                   EventType.CUSTOMER_IDENTIFIED})


class Consent(StrEnum):
    OPTED_IN = "opted_in"
    PENDING = "pending"
    OPTED_OUT = "opted_out"


# The kinds of marketing email a customer can leave one by one on the preference page;
# every journey belongs to one of them (its `category`).
EmailCategory = Literal["cart_reminders", "offers", "news"]
EMAIL_CATEGORIES: Final[tuple[EmailCategory, ...]] = ("cart_reminders", "offers", "news")
