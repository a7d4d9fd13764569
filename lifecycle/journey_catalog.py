"""Journey versions in PostgreSQL: every definition ever used, immutable, so a run finishes on the
version it started on while new runs take the newest.

A version is the definition's text (YAML) under a `version_id` that is never reused. The journey
files (built-in and `LIFECYCLE_JOURNEYS_DIR`) are registered when a service starts: a file whose
text changed becomes a new version, a file that disappeared retires its journey. `apply` adds a
version from the admin API or `lifecycle journeys apply`; the newest version of a name is the
current one, whatever its source. See docs/journeys.md.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.core.campaigns import Campaign, CampaignError, parse_campaign
from lifecycle.core.journeys import Journey
from lifecycle.journey_files import JourneyError, JourneyFile, Problem, parse_journey
from lifecycle.templates import Templates
from lifecycle.yamlio import load_plain

CAMPAIGN_SOURCE = "campaign"  # a campaign's journey version (lifecycle/campaign_catalog.py)
CATALOG_LOCK = 727_002  # one registration or apply at a time keeps version numbers dense
MAX_DEFINITION_BYTES = 64 * 1024
RunsPolicy = Literal["keep", "migrate"]


def digest(definition: str) -> str:
    return hashlib.sha256(definition.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    version_id: int
    journey: str
    version: int
    source: str  # file | api
    origin: str  # the file, or who applied it
    digest: str
    retired: bool
    created_at: datetime
    definition: str

    def as_json(self, with_definition: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.version, "version_id": self.version_id, "source": self.source, "origin": self.origin,
            "digest": self.digest, "retired": self.retired,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }
        if with_definition:
            data["definition"] = self.definition
        return data


@dataclass(frozen=True)
class Applied:
    version: VersionInfo
    created: bool  # False: the same definition was already the current version
    runs_migrated: int = 0
    runs_ended: int = 0


def definition_text(body: object) -> str:
    """A journey or a campaign posted as a JSON object (or read from a file), written as YAML: what versions
    and campaigns store, and what a journey's errors point into."""
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)


def campaign_from_definition(definition: str) -> Campaign:
    """A stored campaign definition's campaign (checked, templates included, when it was saved)."""
    return parse_campaign(load_plain(definition))


def parse_definition(definition: str, where: str, templates: Templates | None) -> Journey:
    """The journey of a definition, validated exactly like a file; JourneyError otherwise."""
    if len(definition.encode("utf-8")) > MAX_DEFINITION_BYTES:
        raise JourneyError([Problem(Path(where), 1, "(file)", f"larger than {MAX_DEFINITION_BYTES} bytes")])
    journey, problems = parse_journey(Path(where), definition, templates)
    if journey is None:
        raise JourneyError(problems or [Problem(Path(where), 1, "(file)", "not a journey")])
    return journey


class JourneyCatalog:
    """Reads versions; each is parsed once per process (a version never changes)."""

    def __init__(self, templates: Templates | None) -> None:
        self.templates = templates
        self._parsed: dict[int, Journey | None] = {}

    def _parse(self, row: Any) -> Journey | None:
        if row.version_id not in self._parsed:
            try:
                if row.source == CAMPAIGN_SOURCE:
                    self._parsed[row.version_id] = campaign_from_definition(row.definition).journey()
                else:
                    self._parsed[row.version_id] = parse_definition(
                        row.definition, f"<{row.journey} version {row.version}>", self.templates)
            except (JourneyError, CampaignError):
                self._parsed[row.version_id] = None  # runs on it end as failed, with the reason
        return self._parsed[row.version_id]

    async def current(self, conn: AsyncConnection) -> dict[str, tuple[int, Journey]]:
        """The journey that starts new runs, per name: (version_id, journey). Retired names have none, and
        campaigns' journeys are not here: no trigger starts them."""
        rows = (await conn.execute(text(
            "SELECT DISTINCT ON (journey) version_id, journey, version, definition, retired, source"
            " FROM journey_versions WHERE source <> 'campaign' ORDER BY journey, version_id DESC"))).all()
        found: dict[str, tuple[int, Journey]] = {}
        for row in rows:
            journey = None if row.retired else self._parse(row)
            if journey is not None:
                found[row.journey] = (row.version_id, journey)
        return found

    async def versions(self, conn: AsyncConnection, version_ids: set[int]) -> dict[int, Journey | None]:
        """The journeys of these versions (None for a version that is unknown or no longer valid)."""
        missing = sorted(v for v in version_ids if v not in self._parsed)
        if missing:
            rows = (await conn.execute(
                text("SELECT version_id, journey, version, definition, source FROM journey_versions"
                     " WHERE version_id = ANY(:ids)"), {"ids": missing})).all()
            for row in rows:
                self._parse(row)
        return {v: self._parsed.get(v) for v in version_ids}


def _info(row: Any) -> VersionInfo:
    return VersionInfo(row.version_id, row.journey, row.version, row.source, row.origin, row.digest, row.retired,
                       row.created_at, row.definition)


async def _latest(conn: AsyncConnection, journey: str, source: str | None = None) -> VersionInfo | None:
    where = " AND source = :s" if source else ""
    row = (await conn.execute(
        text(f"SELECT * FROM journey_versions WHERE journey = :j{where} ORDER BY version_id DESC LIMIT 1"),
        {"j": journey, "s": source})).first()
    return _info(row) if row is not None else None


async def _insert(conn: AsyncConnection, journey: str, source: str, origin: str, definition: str) -> VersionInfo:
    row = (await conn.execute(text(
        "INSERT INTO journey_versions (journey, version, source, origin, digest, definition, created_at)"
        " SELECT :j, coalesce(max(version), 0) + 1, :s, :o, :d, :t, now() FROM journey_versions WHERE journey = :j"
        " RETURNING *"), {"j": journey, "s": source, "o": origin, "d": digest(definition), "t": definition})).one()
    return _info(row)


async def register_files(engine: AsyncEngine, files: list[JourneyFile]) -> list[VersionInfo]:
    """Make the journey files' current text known: a changed file is a new version, a removed one is
    retired. Safe from several services at once. Returns the versions added."""
    added: list[VersionInfo] = []
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CATALOG_LOCK})
        names = {found.journey.name for found in files}
        for found in files:
            last_file = await _latest(conn, found.journey.name, "file")
            if last_file is None or last_file.digest != digest(found.text):
                added.append(await _insert(conn, found.journey.name, "file", str(found.path), found.text))
            elif last_file.retired:
                await conn.execute(text("UPDATE journey_versions SET retired = false WHERE version_id = :v"),
                                   {"v": last_file.version_id})
        # a journey whose current version came from a file that is gone: no new runs
        await conn.execute(text(
            "UPDATE journey_versions v SET retired = true FROM ("
            " SELECT DISTINCT ON (journey) version_id, journey, source FROM journey_versions"
            " ORDER BY journey, version_id DESC) cur"
            " WHERE v.version_id = cur.version_id AND cur.source = 'file' AND NOT (cur.journey = ANY(:names))"),
            {"names": sorted(names)})
    return added


async def apply(engine: AsyncEngine, definition: str, templates: Templates | None, origin: str,
                runs: RunsPolicy = "keep", where: str = "<request>") -> Applied:
    """Validate `definition` like a journey file and make it the current version of its journey.

    `runs`: keep (runs in flight finish on their version) or migrate (they move to this version at
    the step with the same id; those whose step is gone end with exit reason `step_removed:<id>`).
    Applying the current definition again changes nothing. Raises JourneyError.
    """
    journey = parse_definition(definition, where, templates)
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CATALOG_LOCK})
        current = await _latest(conn, journey.name)
        if current is not None and current.digest == digest(definition) and not current.retired:
            return Applied(current, created=False)
        version = await _insert(conn, journey.name, "api", origin, definition)
        migrated = ended = 0
        if runs == "migrate":
            migrated, ended = await _migrate_runs(conn, journey, version.version_id)
    return Applied(version, created=True, runs_migrated=migrated, runs_ended=ended)


async def _migrate_runs(conn: AsyncConnection, journey: Journey, version_id: int) -> tuple[int, int]:
    rows = (await conn.execute(text(
        "SELECT run_id, step_id FROM journey_runs WHERE journey = :j AND status = 'active' FOR UPDATE"),
        {"j": journey.name})).all()
    moved: list[dict[str, Any]] = []
    gone: list[dict[str, Any]] = []
    for row in rows:
        index = journey.index_of(row.step_id) if row.step_id else None
        if index is None:
            gone.append({"r": row.run_id, "why": f"step_removed:{row.step_id or 'unknown'}"})
        else:
            moved.append({"r": row.run_id, "v": version_id, "i": index})
    if moved:
        await conn.execute(text("UPDATE journey_runs SET version_id = :v, step_index = :i WHERE run_id = :r"), moved)
    if gone:
        await conn.execute(text(
            "UPDATE journey_runs SET status = 'exited', exit_reason = :why, ended_at = now(), due_at = NULL,"
            " step_index = NULL WHERE run_id = :r"), gone)
    return len(moved), len(gone)


async def list_versions(engine: AsyncEngine, journey: str | None = None) -> list[VersionInfo]:
    where = " AND journey = :j" if journey else ""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(f"SELECT * FROM journey_versions WHERE source <> 'campaign'{where}"
                                        " ORDER BY journey, version"),
                                   {"j": journey})).all()
    return [_info(row) for row in rows]


def catalog_view(versions: list[VersionInfo], with_definition: bool = False) -> list[dict[str, Any]]:
    """Per journey: its current version (None when retired) and every version, oldest first."""
    by_name: dict[str, list[VersionInfo]] = {}
    for info in versions:
        by_name.setdefault(info.journey, []).append(info)
    view: list[dict[str, Any]] = []
    for name, infos in sorted(by_name.items()):
        newest = max(infos, key=lambda i: i.version_id)
        view.append({
            "name": name,
            "current_version": None if newest.retired else newest.version,
            "versions": [info.as_json(with_definition) for info in infos],
        })
    return view
