"""Every SQL statement of the ingest API, in one place.

The rest of its PostgreSQL work goes through lifecycle (journey_catalog for journey versions,
db/queries for the customer and message lookups). Each statement here is a ready `text()` clause.
"""

from __future__ import annotations

from sqlalchemy import text

# Opt-outs recorded before the API answers: from then on the dispatcher sends nothing they cover, even
# before the stager applied them; a fence already there (a retried request) stays as it is.
INSERT_FENCES = text(
    "INSERT INTO consent_fences (customer_id, event_id, category, acknowledged_at)"
    " SELECT * FROM unnest(CAST(:c AS text[]), CAST(:e AS text[]), CAST(:k AS text[]))"
    " AS f(customer_id, event_id, category), now() ON CONFLICT DO NOTHING"
)
