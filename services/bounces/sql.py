"""The one statement of `lifecycle bounces`: which customer, message and address a send was, and the
customer's address now."""

from __future__ import annotations

from sqlalchemy import text

SEND_OF = text(
    "SELECT s.send_id, s.customer_id, s.message_id, s.to_address, c.email FROM sends s"
    " LEFT JOIN customers c ON c.customer_id = s.customer_id WHERE s.send_id = ANY(CAST(:ids AS bigint[]))")
