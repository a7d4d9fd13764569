"""`lifecycle campaigns list|show|cancel|apply|validate`: campaigns from the command line (docs/campaigns.md).

    lifecycle campaigns apply campaigns/black_friday.yaml    # schedule it (or replace it, not started yet)
    lifecycle campaigns list                                 # each with its status and progress
    lifecycle campaigns show black_friday
    lifecycle campaigns cancel black_friday                  # nothing more of it is sent
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lifecycle.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from lifecycle.campaign_catalog import CampaignFile
    from lifecycle.core.campaigns import SendAt

Work = Callable[["AsyncEngine", datetime], Awaitable[int]]


def add_campaigns_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    campaigns = subparsers.add_parser("campaigns", help="campaigns: one email to a segment (docs/campaigns.md)")
    sub = campaigns.add_subparsers(dest="campaigns_command", required=True)
    listing = sub.add_parser("list", help="every campaign, its status and progress (PostgreSQL)")
    listing.add_argument("--json", action="store_true")
    show = sub.add_parser("show", help="one campaign, its progress and its definition")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel a campaign: every send not yet started stops")
    cancel.add_argument("name")
    apply = sub.add_parser("apply", help="schedule a campaign file, or replace the campaign of that name if it"
                                         " has not started")
    apply.add_argument("file", type=Path)
    validate = sub.add_parser("validate", help="check campaign files (LIFECYCLE_CAMPAIGNS_DIR by default)")
    validate.add_argument("dir", nargs="?", type=Path)


def run_campaigns_command(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle.campaign_catalog import CampaignFileError, load_campaign_file, load_campaign_files
    from lifecycle.templates import Templates

    templates = Templates(settings.journeys_dir, settings.default_locale)
    if args.campaigns_command in ("validate", "apply"):
        directory = args.dir if args.campaigns_command == "validate" else None
        try:
            if args.campaigns_command == "apply":
                found = [load_campaign_file(args.file, templates, settings.segments_dir)]
            else:
                found = load_campaign_files(directory or settings.campaigns_dir, templates, settings.segments_dir)
        except CampaignFileError as exc:
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
            return 1
        if args.campaigns_command == "validate":
            if not found and directory is None and settings.campaigns_dir is None:
                print("no campaigns directory: set LIFECYCLE_CAMPAIGNS_DIR or name one", file=sys.stderr)
            for item in found:
                print(f"ok  {item.campaign.name:<24} send_at={_send_at(item.campaign.send_at)}")
            return 0
        return asyncio.run(_with_engine(settings, lambda engine, now: _apply(engine, now, found[0])))
    if args.campaigns_command == "cancel":
        return asyncio.run(_with_engine(settings, lambda engine, now: _cancel(engine, now, args.name)))
    name = args.name if args.campaigns_command == "show" else None
    return asyncio.run(_with_engine(settings, lambda engine, now: _show(engine, name, args.json)))


def _send_at(send_at: SendAt) -> str:
    if send_at.instant is not None:
        return str(send_at.instant.isoformat())
    assert send_at.local is not None
    return f"{send_at.local.isoformat()} (each customer's local time)"


async def _with_engine(settings: Settings, work: Work) -> int:
    from lifecycle.clock import make_clock
    from lifecycle.db.engine import make_engine

    engine = make_engine(settings, "cli", pool_size=1)
    try:
        now = await make_clock(settings.clock, engine).now()
        return await work(engine, now)
    finally:
        await engine.dispose()


async def _apply(engine: AsyncEngine, now: datetime, found: CampaignFile) -> int:
    from lifecycle.campaign_catalog import CampaignConflict, save

    try:
        async with engine.begin() as conn:
            saved = await save(conn, found.campaign, found.definition, "api", f"cli:{found.path}", now)
    except CampaignConflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{saved.info.name}: {saved.outcome}; it starts at {saved.info.start_at.isoformat()}")
    return 0


async def _cancel(engine: AsyncEngine, now: datetime, name: str) -> int:
    from lifecycle.campaign_catalog import cancel

    found = await cancel(engine, name, now)
    if found is None:
        print(f"error: no campaign named {name!r}", file=sys.stderr)
        return 1
    progress = found.progress
    print(f"{name}: cancelled; {progress.get('sent', 0)} sent before, {progress.get('cancelled', 0)} not sent")
    return 0


async def _show(engine: AsyncEngine, name: str | None, as_json: bool) -> int:
    from lifecycle.campaign_catalog import list_campaigns

    found = await list_campaigns(engine, name)
    if name is not None and not found:
        print(f"error: no campaign named {name!r}", file=sys.stderr)
        return 1
    if as_json:
        views = [info.as_json(with_definition=name is not None) for info in found]
        print(json.dumps(views[0] if name is not None else views, indent=2, ensure_ascii=False))
        return 0
    if not found:
        print("no campaigns")
    for info in found:
        view = info.as_json()
        done = view["progress"]
        local = " (local)" if view["local_time"] else ""
        print(f"{info.name:<24} {view['status']:<10} send_at={view['send_at']}{local}"
              f"  audience={view['audience'] if view['audience'] is not None else '-'}"
              f"  sent={done['sent']} pending={done['pending']} skipped={done['skipped']}"
              f" failed={done['failed']} cancelled={done['cancelled']}")
    if name is not None:
        print(found[0].definition, end="")
    return 0
