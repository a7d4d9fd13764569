"""The ingest API's PostgreSQL side: opt-out fences, journey versions (its SQL in sql.py), segment previews,
campaigns, the orders Shopify's refunds name."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.campaign_catalog import (
    CampaignInfo,
    Saved,
    cancel,
    check_campaign,
    list_campaigns,
    save,
)
from lifecycle.clock import Clock
from lifecycle.core.segments import Filter
from lifecycle.db.schema import orders
from lifecycle.db.segments import Preview, preview
from lifecycle.journey_catalog import Applied, RunsPolicy, VersionInfo, apply, definition_text, list_versions
from lifecycle.privacy import erase_customer, export_customer, shopify_customers
from lifecycle.shopify import KnownOrder
from lifecycle.templates import Templates
from services.ingest.app import Fence, FenceWriter
from services.ingest.segments_api import SegmentPreviewer
from services.ingest.shopify_routes import OrderReader
from services.ingest.sql import INSERT_FENCES


def make_fence_writer(engine: AsyncEngine) -> FenceWriter:
    async def write(fences: list[Fence]) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                INSERT_FENCES,
                {"c": [f.customer_id for f in fences], "e": [f.event_id for f in fences],
                 "k": [f.category for f in fences]},
            )

    return write


class PgJourneyStore:
    def __init__(self, engine: AsyncEngine, templates: Templates) -> None:
        self.engine = engine
        self.templates = templates

    async def apply(self, definition: str, runs: RunsPolicy, origin: str) -> Applied:
        return await apply(self.engine, definition, self.templates, origin, runs)

    async def versions(self, journey: str | None) -> list[VersionInfo]:
        return await list_versions(self.engine, journey)


def make_order_reader(engine: AsyncEngine) -> OrderReader:
    """The order as the stager keeps it (whose it is, its value, whether it is void): a Shopify refund
    names only its order."""

    async def read(order_id: str) -> KnownOrder | None:
        async with engine.connect() as conn:
            row = (await conn.execute(select(orders.c.customer_id, orders.c.value, orders.c.voided)
                                      .where(orders.c.order_id == order_id))).first()
        return None if row is None else KnownOrder(row.customer_id, Decimal(row.value), bool(row.voided))

    return read


def make_segment_previewer(engine: AsyncEngine, clock: Clock, default_locale: str) -> SegmentPreviewer:
    async def run(chosen: Filter, category: str | None, sample: int) -> tuple[datetime, Preview]:
        now = await clock.now()
        async with engine.connect() as conn:
            return now, await preview(conn, chosen, now, default_locale, category, sample)

    return run


class PgCampaignStore:
    def __init__(self, engine: AsyncEngine, clock: Clock, templates: Templates, segments_dir: Path | None) -> None:
        self.engine = engine
        self.clock = clock
        self.templates = templates
        self.segments_dir = segments_dir

    async def save(self, value: dict[str, Any], origin: str) -> Saved:
        campaign = check_campaign(value, self.templates, self.segments_dir)
        now = await self.clock.now()
        async with self.engine.begin() as conn:
            return await save(conn, campaign, definition_text(value), "api", origin, now)

    async def campaigns(self, name: str | None) -> list[CampaignInfo]:
        return await list_campaigns(self.engine, name)

    async def cancel(self, name: str) -> CampaignInfo | None:
        return await cancel(self.engine, name, await self.clock.now())


class PgPrivacyStore:
    def __init__(self, engine: AsyncEngine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    async def erase(self, customer_id: str) -> dict[str, int]:
        return await erase_customer(self.engine, customer_id, await self.clock.now())

    async def export(self, customer_id: str) -> dict[str, Any] | None:
        return await export_customer(self.engine, customer_id, await self.clock.now())

    async def shopify_customers(self, limit: int) -> list[str]:
        return await shopify_customers(self.engine, limit)
