"""`lifecycle segments list|preview`: the segments there are, and whom one matches now."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from lifecycle.core.segments import Segment
from lifecycle.events.kinds import EMAIL_CATEGORIES
from lifecycle.settings import Settings

SAMPLE_DEFAULT = 10


def add_segments_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    segments = subparsers.add_parser("segments", help="segments: filters over customers (docs/segments.md)")
    sub = segments.add_subparsers(dest="segments_command", required=True)
    listing = sub.add_parser("list", help="the segments there are (built-in and LIFECYCLE_SEGMENTS_DIR)")
    listing.add_argument("--json", action="store_true")
    preview = sub.add_parser("preview", help="how many customers a segment matches now, and a sample (PostgreSQL)")
    preview.add_argument("segment", help="a segment file (.yaml) or a segment's name")
    preview.add_argument("--category", choices=EMAIL_CATEGORIES,
                         help="the campaign's category: its unsubscribers are left out of the audience")
    preview.add_argument("--sample", type=_sample_size, default=SAMPLE_DEFAULT, metavar="N",
                         help=f"customers shown, 0 to 100 (default {SAMPLE_DEFAULT})")
    preview.add_argument("--json", action="store_true")


def _sample_size(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 100, got {value!r}") from None
    if not 0 <= number <= 100:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 100, got {number}")
    return number


def run_segments_command(args: argparse.Namespace, settings: Settings) -> int:
    from lifecycle.segment_files import SegmentFileError, find_segment, load_segments

    try:
        if args.segments_command == "list":
            segments = load_segments(settings.segments_dir)
            if args.json:
                print(json.dumps([{"name": s.name, "description": s.description} for s in segments.values()],
                                 indent=2, ensure_ascii=False))
            else:
                for segment in segments.values():
                    print(f"{segment.name:<24} {segment.description}")
            return 0
        segment = find_segment(args.segment, settings.segments_dir)
    except SegmentFileError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    return asyncio.run(_preview(settings, segment, args.category, args.sample, args.json))


async def _preview(settings: Settings, segment: Segment, category: str | None, sample: int, as_json: bool) -> int:
    from lifecycle.clock import make_clock
    from lifecycle.db.engine import make_engine
    from lifecycle.db.segments import preview

    engine = make_engine(settings, "cli", pool_size=1)
    try:
        now = await make_clock(settings.clock, engine).now()
        async with engine.connect() as conn:
            found = await preview(conn, segment.filter, now, settings.default_locale, category, sample)
    finally:
        await engine.dispose()
    if as_json:
        print(json.dumps({"segment": segment.name, "at": now.isoformat(), "category": category, **found.to_json()},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"{segment.name}: {found.matched} customer(s) match at {now.isoformat()}; {found.audience} of them may get"
          f" a campaign{f' of category {category}' if category else ''} (opted in, not suppressed, not unsubscribed)")
    for row in found.sample:
        print(f"  {row['customer_id']:<24} {row['email'] or '':<32} {row['stage'] or '-':<12} {row['locale'] or '-'}")
    return 0
