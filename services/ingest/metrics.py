"""Prometheus metrics of the ingest API (default registry, served on /metrics of LIFECYCLE_INGEST_METRICS_PORT).

Labels are bounded: `route` is the route template (never a customer id or token),
`type` an EventType, `reason` one of the REFUSED_* constants, `kind` open or click and
`outcome` one of the TRACKING_* constants.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "lifecycle_ingest_requests_total",
    "HTTP requests answered, by route template and status",
    ["route", "status"],
)
REQUEST_DURATION = Histogram("lifecycle_ingest_request_duration_seconds", "Time to answer an HTTP request", ["route"])
EVENTS_ACCEPTED = Counter(
    "lifecycle_ingest_events_accepted_total", "Events acknowledged by Kafka, by event type", ["type"]
)
EVENTS_REFUSED = Counter("lifecycle_ingest_events_refused_total", "Events not accepted, by reason", ["reason"])
PRODUCE_DURATION = Histogram(
    "lifecycle_ingest_produce_duration_seconds", "Time from handing a batch to Kafka to all acknowledgements"
)
TRACKING = Counter(
    "lifecycle_ingest_tracking_total",
    "Open-pixel and click-redirect hits, by kind (open, click) and outcome",
    ["kind", "outcome"],
)
SEGMENT_CALLS = Counter(
    "lifecycle_ingest_segment_calls_total",
    "Segment API calls (/v1/identify, /v1/track, /v1/page, /v1/batch), by outcome: accepted (per call),"
    " invalid, overloaded, unavailable (per request)",
    ["outcome"],
)
SEGMENT_LEFT_OUT = Counter(
    "lifecycle_ingest_segment_left_out_total",
    "Parts of accepted Segment calls not kept as sent: a refused trait (traits.<name>), a replaced timestamp,"
    " an e-commerce event read as a track event (its type)",
    ["what"],
)
SHOPIFY_WEBHOOKS = Counter(
    "lifecycle_ingest_shopify_webhooks_total",
    "Shopify webhooks (/v1/webhooks/shopify), by topic (other: a topic without a handler) and outcome: accepted,"
    " nothing_kept, duplicate, ignored, unauthorized, invalid, unavailable, not_enabled",
    ["topic", "outcome"],
)
SHOPIFY_LEFT_OUT = Counter(
    "lifecycle_ingest_shopify_left_out_total",
    "Parts of accepted Shopify webhooks not kept: no_customer, refund (partial, or of an unknown order), cart,"
    " order_placed, a refused trait (traits.<name>), consent_state, checkout_url, timestamp...",
    ["what"],
)

# Every event of a batch with any invalid event is refused (nothing is published).
REFUSED_INVALID: Final = "invalid"
# Kafka failed or did not acknowledge in time.
REFUSED_UNAVAILABLE: Final = "unavailable"

# Label for requests that matched no route, so scanners cannot inflate label cardinality.
UNMATCHED_ROUTE: Final = "unmatched"

# Tracking outcomes. recorded: the event is in Kafka. not_recorded: a valid hit whose event
# Kafka did not take (the pixel or redirect was still answered). invalid_token: forged,
# altered or garbled. unknown_message: no such email, link or customer for a valid token.
# lookup_failed: the email store did not answer (a click cannot be redirected then).
# limited: a valid hit beyond the per-token or per-address rate limit, answered but not recorded.
TRACKING_RECORDED: Final = "recorded"
TRACKING_NOT_RECORDED: Final = "not_recorded"
TRACKING_INVALID_TOKEN: Final = "invalid_token"
TRACKING_UNKNOWN_MESSAGE: Final = "unknown_message"
TRACKING_LOOKUP_FAILED: Final = "lookup_failed"
TRACKING_LIMITED: Final = "limited"
