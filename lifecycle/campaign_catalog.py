"""Campaigns in PostgreSQL: saved (from a file of LIFECYCLE_CAMPAIGNS_DIR or the admin API), started
once, listed, shown and cancelled. The definition is pure (lifecycle/core/campaigns.py); see
docs/campaigns.md.

A campaign is `scheduled` until its start: its `send_at`, or for a local `send_at` the moment it is
that time somewhere on Earth (14 hours before it is in UTC). A dispatcher then starts it in one
transaction (REPEATABLE READ, so every statement sees the same customers): the campaign's journey
version `campaign:<name>` is written, and its audience becomes journey runs by one INSERT … SELECT,
each due at the customer's own moment (and throttled if asked), then the campaign is marked
`started`. A million customers never pass through this process's memory; what is in memory is one
due time per time zone of the audience. The dispatchers' claim path then sends the runs like any
journey's steps: once per customer, frequency cap, quiet hours, the check before SMTP.

Cancelling ends every run not yet sent (`exit_reason = campaign_cancelled`); an email already claimed
is dropped by the check right before SMTP, which sees its run ended.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from lifecycle.core.campaigns import CAMPAIGN_STEP, Campaign, CampaignError, due_for, parse_campaign
from lifecycle.core.journeys import SendPolicy, zone_of
from lifecycle.core.segments import Filter, SegmentProblem
from lifecycle.db.segments import audience_condition, compile_filter
from lifecycle.journey_catalog import campaign_from_definition, definition_text, digest
from lifecycle.segment_files import SegmentFileError, named_segment, read_yaml
from lifecycle.templates import Templates

MAX_CAMPAIGN_BYTES = 64 * 1024
# the seasonal templates that ship, in fr and en (lifecycle/templates/*/)
DEFAULT_CAMPAIGN_TEMPLATES = ("new_year", "winter_sales", "summer_sales", "black_friday", "christmas")
CAMPAIGNS_LOCK = 727_003  # saving and registering campaigns, one at a time
CANCELLED = "campaign_cancelled"  # the exit reason of the runs a cancellation ended
# campaigns' runs: the predicate of their index (migration 0007), said in every query that should use it
CAMPAIGN_RUNS = "journey LIKE 'campaign:%'"
# the customer's time zone as the campaign reads it ('' when they have none: the shop's applies)
ZONE_SQL = "coalesce(c.state -> 'traits' ->> 'timezone', '')"


class CampaignFileError(ValueError):
    """Problems of campaign files, each `file: field: message`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class CampaignConflict(Exception):
    """A campaign of that name has started or was cancelled: it cannot be replaced."""


def check_campaign(value: Any, templates: Templates | None, segments_dir: Path | None) -> Campaign:
    """The campaign, checked as a whole: fields, templates, and that a named segment exists and is valid.
    CampaignError lists every problem."""
    names = set(templates.names()) if templates is not None else None
    campaign = parse_campaign(value, names)
    if isinstance(campaign.segment, str):
        try:
            found = named_segment(campaign.segment, segments_dir)
        except SegmentFileError as exc:
            raise CampaignError([SegmentProblem("segment", p) for p in exc.problems]) from None
        if found is None:
            raise CampaignError([SegmentProblem("segment", f"no segment named {campaign.segment!r}")])
    return campaign


def _segment_filter(campaign: Campaign, segments_dir: Path | None) -> Filter | None:
    if not isinstance(campaign.segment, str):
        return campaign.segment
    try:
        found = named_segment(campaign.segment, segments_dir)
    except SegmentFileError:
        return None
    return found.filter if found is not None else None


@dataclass(frozen=True)
class CampaignInfo:
    name: str
    source: str  # file | api
    origin: str
    status: str  # scheduled | started | cancelled
    start_at: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    cancelled_at: datetime | None
    audience: int | None
    passed: int | None
    definition: str
    progress: dict[str, int] = field(default_factory=dict)  # pending runs, sends by status

    @property
    def campaign(self) -> Campaign:
        return campaign_from_definition(self.definition)

    @property
    def state(self) -> str:
        """scheduled | sending | done | cancelled: `started` split by whether runs are still pending."""
        if self.status == "started":
            return "sending" if self.progress.get("pending", 0) else "done"
        return self.status

    def as_json(self, with_definition: bool = False) -> dict[str, Any]:
        campaign = self.campaign
        send_at = campaign.send_at
        data: dict[str, Any] = {
            "name": self.name, "status": self.state, "category": campaign.category,
            "send_at": _iso(send_at.instant) if send_at.instant is not None else send_at.local.isoformat()
            if send_at.local is not None else None,
            "local_time": send_at.local is not None, "start_at": _iso(self.start_at),
            "source": self.source, "origin": self.origin, "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at), "started_at": _iso(self.started_at),
            "cancelled_at": _iso(self.cancelled_at), "audience": self.audience, "passed": self.passed,
            "progress": {k: self.progress.get(k, 0) for k in PROGRESS_KEYS},
        }
        if with_definition:
            data["definition"] = self.definition
        return data


PROGRESS_KEYS = ("pending", "sending", "sent", "skipped", "failed", "cancelled")


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _info(row: Any, progress: dict[str, int] | None = None) -> CampaignInfo:
    return CampaignInfo(row.name, row.source, row.origin, row.status, row.start_at, row.created_at, row.updated_at,
                        row.started_at, row.cancelled_at, row.audience, row.passed, row.definition, progress or {})


@dataclass(frozen=True)
class Saved:
    info: CampaignInfo
    outcome: str  # created | replaced | unchanged


async def save(conn: AsyncConnection, campaign: Campaign, definition: str, source: str, origin: str,
               now: datetime) -> Saved:
    """Add the campaign, or replace a scheduled one of the same name (CampaignConflict once it started
    or was cancelled). The same definition again changes nothing."""
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": CAMPAIGNS_LOCK})
    row = (await conn.execute(text("SELECT * FROM campaigns WHERE name = :n FOR UPDATE"),
                              {"n": campaign.name})).first()
    values = {"n": campaign.name, "s": source, "o": origin, "d": definition, "h": digest(definition),
              "start": campaign.send_at.earliest(), "now": now}
    if row is None:
        row = (await conn.execute(text(
            "INSERT INTO campaigns (name, source, origin, definition, digest, status, start_at, created_at,"
            " updated_at) VALUES (:n, :s, :o, :d, :h, 'scheduled', :start, :now, :now) RETURNING *"),
            values)).one()
        return Saved(_info(row), "created")
    if row.digest == digest(definition) and row.status != "cancelled":
        return Saved(_info(row), "unchanged")
    if row.status != "scheduled":
        raise CampaignConflict(f"campaign {campaign.name!r} is {row.status}: it can no longer be changed;"
                               " give the new one another name")
    row = (await conn.execute(text(
        "UPDATE campaigns SET source = :s, origin = :o, definition = :d, digest = :h, start_at = :start,"
        " updated_at = :now WHERE name = :n RETURNING *"), values)).one()
    return Saved(_info(row), "replaced")


@dataclass(frozen=True)
class CampaignFile:
    path: Path
    campaign: Campaign
    definition: str


def load_campaign_file(path: Path, templates: Templates | None, segments_dir: Path | None) -> CampaignFile:
    """One campaign file, checked; CampaignFileError lists its problems, each `file: field: message`."""
    try:
        value = read_yaml(path)
        campaign = check_campaign(value, templates, segments_dir)
    except SegmentFileError as exc:
        raise CampaignFileError(exc.problems) from None
    except CampaignError as exc:
        raise CampaignFileError([f"{path}: {problem}" for problem in exc.problems]) from None
    return CampaignFile(path, campaign, definition_text(value))


def load_campaign_files(directory: Path | None, templates: Templates | None,
                        segments_dir: Path | None) -> list[CampaignFile]:
    """Every campaign file of `directory` (*.yaml, one campaign each); CampaignFileError lists every
    problem of every file. No directory: no campaigns."""
    if directory is None:
        return []
    if not directory.is_dir():
        raise CampaignFileError([f"{directory}: campaigns directory not found"])
    found: list[CampaignFile] = []
    problems: list[str] = []
    names: dict[str, Path] = {}
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            loaded = load_campaign_file(path, templates, segments_dir)
        except CampaignFileError as exc:
            problems.extend(exc.problems)
            continue
        name = loaded.campaign.name
        if name in names:
            problems.append(f"{path}: name: {name!r} is also the name of {names[name]}")
            continue
        names[name] = path
        found.append(loaded)
    if problems:
        raise CampaignFileError(problems)
    return found


async def register_files(engine: AsyncEngine, files: list[CampaignFile], now: datetime) -> list[str]:
    """Make the campaign files known: a new file is scheduled, a changed one replaces its scheduled
    campaign; a campaign that started keeps what it started with. A scheduled campaign whose file is
    gone is cancelled. Returns what it could not apply, to log."""
    refused: list[str] = []
    async with engine.begin() as conn:
        for found in files:
            try:
                async with conn.begin_nested():
                    await save(conn, found.campaign, found.definition, "file", str(found.path), now)
            except CampaignConflict as exc:
                refused.append(f"{found.path}: {exc}")
        await conn.execute(text(
            "UPDATE campaigns SET status = 'cancelled', cancelled_at = :now, updated_at = :now"
            " WHERE source = 'file' AND status = 'scheduled' AND NOT (name = ANY(:names))"),
            {"now": now, "names": [f.campaign.name for f in files]})
    return refused


async def progress(conn: AsyncConnection, names: list[str]) -> dict[str, dict[str, int]]:
    """Per campaign: its runs still to send (`pending`), cancelled, and its sends by status."""
    journeys = [f"campaign:{n}" for n in names]
    found: dict[str, dict[str, int]] = {n: {} for n in names}
    runs = (await conn.execute(text(
        "SELECT journey, count(*) FILTER (WHERE status = 'active') AS pending,"
        " count(*) FILTER (WHERE exit_reason = :why) AS cancelled"
        f" FROM journey_runs WHERE journey = ANY(:j) AND {CAMPAIGN_RUNS} GROUP BY journey"),
        {"j": journeys, "why": CANCELLED})).all()
    for row in runs:
        found[row.journey.split(":", 1)[1]].update(pending=int(row.pending), cancelled=int(row.cancelled))
    sends = (await conn.execute(text(
        f"SELECT journey, status, count(*) AS n FROM sends WHERE journey = ANY(:j) AND {CAMPAIGN_RUNS}"
        " GROUP BY journey, status"),
        {"j": journeys})).all()
    for row in sends:
        found[row.journey.split(":", 1)[1]][row.status] = int(row.n)
    return found


async def list_campaigns(engine: AsyncEngine, name: str | None = None) -> list[CampaignInfo]:
    where = " WHERE name = :n" if name is not None else ""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(f"SELECT * FROM campaigns{where} ORDER BY start_at, name"),
                                   {"n": name})).all()
        counts = await progress(conn, [r.name for r in rows]) if rows else {}
    return [_info(row, counts.get(row.name)) for row in rows]


async def cancel(engine: AsyncEngine, name: str, now: datetime) -> CampaignInfo | None:
    """Stop the campaign: nothing more of it is sent. None when there is no such campaign; cancelling
    twice is the same as once."""
    async with engine.begin() as conn:
        row = (await conn.execute(text("SELECT * FROM campaigns WHERE name = :n FOR UPDATE"), {"n": name})).first()
        if row is None:
            return None
        if row.status != "cancelled":
            await conn.execute(text(
                "UPDATE campaigns SET status = 'cancelled', cancelled_at = :now, updated_at = :now WHERE name = :n"),
                {"n": name, "now": now})
            await conn.execute(text(
                "UPDATE journey_runs SET status = 'exited', exit_reason = :why, ended_at = :now, due_at = NULL"
                f" WHERE journey = :j AND status = 'active' AND {CAMPAIGN_RUNS}"),
                {"j": f"campaign:{name}", "why": CANCELLED, "now": now})
    found = await list_campaigns(engine, name)
    return found[0] if found else None


# --- starting -----------------------------------------------------------------------------------

# The audience as runs, each due at its zone's moment (`:zones`, `:dues`; a NULL due: skipped), in one
# statement. `{condition}` is the segment and the audience rules over `customers c`; `{paced}` the due
# times as they go out (throttled or not).
_AUDIENCE_SQL = (
    "WITH audience AS ("
    " SELECT c.customer_id, z.due FROM customers c"
    " JOIN unnest(CAST(:zones AS text[]), CAST(:dues AS timestamptz[])) AS z(zone, due)"
    f" ON z.zone = {ZONE_SQL}"
    " WHERE {condition} AND z.due IS NOT NULL),"
    " paced AS ({paced}),"
    " written AS ("
    "  INSERT INTO journey_runs (customer_id, journey, status, entry_key, step_index, due_at, started_at,"
    "  context, clicks, version_id, step_id)"
    "  SELECT customer_id, :journey, 'active', 'campaign', 0, due, :now, CAST(:context AS jsonb), '[]'::jsonb,"
    f"  :version, '{CAMPAIGN_STEP}' FROM paced"
    "  ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT count(*) FROM written"
)
_UNPACED = "SELECT customer_id, due FROM audience"
# t_i = i * gap + max over j <= i of (due_j - j * gap): each at its due time, or one gap after the
# previous send if that is later (lifecycle/core/campaigns.py: throttled)
_PACED = (
    "SELECT customer_id, pos * make_interval(secs => :gap)"
    " + max(due - pos * make_interval(secs => :gap)) OVER (ORDER BY due, customer_id ROWS UNBOUNDED PRECEDING)"
    " AS due FROM (SELECT customer_id, due, row_number() OVER (ORDER BY due, customer_id) - 1 AS pos"
    " FROM audience) ranked"
)


@dataclass(frozen=True)
class Started:
    name: str
    audience: int  # runs written
    passed: int  # of the audience, customers whose moment had passed at the start
    cancelled_reason: str | None = None  # not started: why it was cancelled instead


async def start_due(engine: AsyncEngine, now: datetime, policy: SendPolicy, default_locale: str,
                    segments_dir: Path | None) -> Started | None:
    """Start the first scheduled campaign whose start has come, if any (several dispatchers: each takes
    another one, or none)."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            row = (await conn.execute(text(
                "SELECT * FROM campaigns WHERE status = 'scheduled' AND start_at <= :now"
                " ORDER BY start_at, name LIMIT 1 FOR UPDATE SKIP LOCKED"), {"now": now})).first()
            if row is None:
                return None
            campaign = campaign_from_definition(row.definition)
            segment = _segment_filter(campaign, segments_dir)
            if segment is None:
                await conn.execute(text(
                    "UPDATE campaigns SET status = 'cancelled', cancelled_at = :now, updated_at = :now"
                    " WHERE name = :n"), {"n": row.name, "now": now})
                return Started(row.name, 0, 0, f"segment {campaign.segment!r} is missing or invalid")
            # what "already passed" is measured against: when the campaign was due to start, or when it was
            # saved if that is later; not when this dispatcher got to it (it looks once a second)
            reference = min(max(row.start_at, row.updated_at), now)
            started = await _write_audience(conn, campaign, row.definition, row.origin, segment, now, reference,
                                            policy, default_locale)
            await conn.execute(text(
                "UPDATE campaigns SET status = 'started', started_at = :now, updated_at = :now, audience = :a,"
                " passed = :p, version_id = :v WHERE name = :n"),
                {"n": row.name, "now": now, "a": started[0], "p": started[1], "v": started[2]})
            return Started(row.name, started[0], started[1])


async def _write_audience(conn: AsyncConnection, campaign: Campaign, definition: str, origin: str,
                          segment: Filter, now: datetime, reference: datetime, policy: SendPolicy,
                          default_locale: str) -> tuple[int, int, int]:
    """(runs written, customers whose moment had passed at `reference`, the journey version's id). A due
    time between `reference` and now is in the past: its send goes at once."""
    version_id = (await conn.execute(text(
        "INSERT INTO journey_versions (journey, version, source, origin, digest, definition, retired, created_at)"
        " SELECT :j, coalesce(max(version), 0) + 1, 'campaign', :o, :d, :t, false, now()"
        " FROM journey_versions WHERE journey = :j RETURNING version_id"),
        {"j": campaign.journey_name, "o": origin, "d": digest(definition), "t": definition})).scalar_one()
    condition, params = compile_filter(segment, now, default_locale)
    allowed, audience_params = audience_condition(campaign.category)
    where = f"{condition} AND {allowed}"
    params = {**params, **audience_params}
    zones = (await conn.execute(text(
        f"SELECT {ZONE_SQL} AS zone, count(*) AS n FROM customers c WHERE {where} GROUP BY 1"), params)).all()
    dues: list[datetime | None] = []
    passed = 0
    for zone in zones:
        local = zone_of(zone.zone or None, policy)
        if campaign.send_at.moment_in(local) < reference:
            passed += int(zone.n)
        dues.append(due_for(campaign.send_at, local, reference, campaign.if_passed))
    if not zones:
        return 0, 0, int(version_id)
    paced = _PACED if campaign.max_per_minute else _UNPACED
    statement = _AUDIENCE_SQL.replace("{condition}", where).replace("{paced}", paced)
    written = (await conn.execute(text(statement), {
        **params, "zones": [z.zone for z in zones], "dues": dues, "journey": campaign.journey_name, "now": now,
        "context": json.dumps({"campaign": campaign.name}), "version": version_id,
        "gap": 60.0 / campaign.max_per_minute if campaign.max_per_minute else 0.0,
    })).scalar_one()
    return int(written), passed, int(version_id)
