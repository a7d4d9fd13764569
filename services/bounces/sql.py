"""The one statement of `lifecycle bounces`: which customer and message a send was."""

from __future__ import annotations

from sqlalchemy import text

SEND_OF = text("SELECT send_id, customer_id, message_id FROM sends WHERE send_id = ANY(CAST(:ids AS bigint[]))")
