"""Every metric of `lifecycle bounces`, declared once."""

from __future__ import annotations

from prometheus_client import Counter

REPORTS = Counter(
    "lifecycle_bounces_reports_total",
    "Reports received at a signed bounce address, per send named, by outcome: hard_bounce, soft_bounce, complaint "
    "(each published as an event), ignored (delivered, relayed, an auto-reply, feedback that is no complaint), "
    "unreadable, unknown_send (signed, but the send is no longer known), address_changed (the customer has another "
    "address since the send: nothing published), deferred (answered 451: PostgreSQL or "
    "Kafka did not answer; the reporting server tries again).",
    ["outcome"],
)
REFUSED = Counter(
    "lifecycle_bounces_refused_recipients_total",
    "Recipients refused at RCPT TO: not a bounce address this deployment signed (forged, unsigned, altered, "
    "another domain).",
)
