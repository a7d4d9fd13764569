"""From a due send step to the email itself: template, links, headers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from lifecycle.settings import Settings
from lifecycle.templates import Templates
from lifecycle.tokens import confirm_url, unsubscribe_url


@dataclass(frozen=True)
class MessageSpec:
    """Everything one email is made of, decided by the dispatcher before rendering."""

    journey: str
    step: int  # send step number, from 1
    template: str
    message_id: str
    to_address: str
    customer: dict[str, Any]  # the profile at send time, with customer_id
    context: dict[str, Any]  # the data of the trigger that started the run
    extras: dict[str, Any]  # per-send additions (offers, recommendations, ...)
    date: datetime


def compose_email(settings: Settings, templates: Templates, spec: MessageSpec) -> EmailMessage:
    customer_id = str(spec.customer["customer_id"])
    unsubscribe = unsubscribe_url(settings, customer_id, spec.message_id)
    customer: dict[str, Any] = {"first_name": None, **spec.customer, "email": spec.to_address}
    context = {
        "customer": customer,
        "shop": {"name": settings.shop_name, "url": settings.shop_url},
        "journey": spec.journey,
        "step": spec.step,
        "context": spec.context,
        "links": {
            "unsubscribe": unsubscribe,
            "confirm": confirm_url(settings, customer_id),
            "cart": f"{settings.shop_url}/cart",
            "satisfied": f"{settings.shop_url}/feedback?answer=satisfied",
            "not_satisfied": f"{settings.shop_url}/feedback?answer=not_satisfied",
        },
        **spec.extras,
    }
    rendered = templates.render(spec.template, context)
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = spec.to_address
    # an A/B variant may try another subject line (a Jinja string, same context)
    variant_subject = (spec.extras.get("variant") or {}).get("subject")
    subject = templates.render_string(variant_subject, context) if variant_subject else rendered.subject
    message["Subject"] = subject
    message["Date"] = format_datetime(spec.date)
    message["Message-ID"] = spec.message_id
    message["X-Lifecycle-Journey"] = spec.journey
    message["X-Lifecycle-Step"] = str(spec.step)
    message["List-Unsubscribe"] = f"<{unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(rendered.body + f"\n--\nUnsubscribe: {unsubscribe}\n")
    return message
