"""The ingest API's PostgreSQL side: opt-out fences and journey versions (its SQL in sql.py)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from lifecycle.journey_catalog import Applied, RunsPolicy, VersionInfo, apply, list_versions
from lifecycle.templates import Templates
from services.ingest.app import Fence, FenceWriter
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
