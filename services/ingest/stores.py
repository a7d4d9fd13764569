"""The ingest API's PostgreSQL side: opt-out fences, journey versions (its SQL in sql.py), segment previews."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.clock import Clock
from lifecycle.core.segments import Filter
from lifecycle.db.segments import Preview, preview
from lifecycle.journey_catalog import Applied, RunsPolicy, VersionInfo, apply, list_versions
from lifecycle.templates import Templates
from services.ingest.app import Fence, FenceWriter
from services.ingest.segments_api import SegmentPreviewer
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


def make_segment_previewer(engine: AsyncEngine, clock: Clock, default_locale: str) -> SegmentPreviewer:
    async def run(chosen: Filter, category: str | None, sample: int) -> tuple[datetime, Preview]:
        now = await clock.now()
        async with engine.connect() as conn:
            return now, await preview(conn, chosen, now, default_locale, category, sample)

    return run
