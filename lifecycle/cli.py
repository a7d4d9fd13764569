"""The `lifecycle` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from lifecycle.cli_campaigns import add_campaigns_parser, run_campaigns_command
from lifecycle.cli_customers import add_customers_parser, run_customers_command
from lifecycle.cli_segments import add_segments_parser, run_segments_command
from lifecycle.cli_templates import add_templates_parser, run_templates_command
from lifecycle.settings import Settings, load_settings


def _settings(**overrides: object) -> Settings:
    base = load_settings()
    return base.model_copy(update=overrides) if overrides else base


def _virtual_settings() -> Settings:
    return _settings(clock="virtual")


def _workers(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of workers from 1 to 64")
    return int(value)


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number from 1 to 65535")
    return int(value)


def cmd_service(name: str, workers: int | None = None, listen: argparse.Namespace | None = None) -> int:
    from lifecycle.campaign_catalog import CampaignFileError
    from lifecycle.journey_files import JourneyError
    from lifecycle.runtime import StartupError, setup_logging
    from lifecycle.settings import startup_problems

    settings = _settings()
    refused = startup_problems(settings, name)
    if refused:
        for problem in refused:
            print(f"{name}: not starting: {problem}", file=sys.stderr)
        return 1
    setup_logging(settings.log_format, settings.log_level)
    try:
        if name == "ingest":
            from services.ingest.main import run as run_ingest

            run_ingest(settings, workers)
        elif name == "stager":
            from services.stager.main import run as run_stager

            run_stager(settings)
        elif name == "bounces":
            from services.bounces.main import run as run_bounces

            run_bounces(settings, getattr(listen, "host", None), getattr(listen, "port", None),
                        bool(getattr(listen, "lmtp", False)))
        else:
            from services.dispatcher.main import run as run_dispatcher

            run_dispatcher(settings)
    except StartupError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except JourneyError as exc:
        print(f"{name}: invalid journeys, not starting:\n{exc}", file=sys.stderr)
        return 1
    except CampaignFileError as exc:
        print(f"{name}: invalid campaigns, not starting:\n{exc}", file=sys.stderr)
        return 1
    return 0


def cmd_migrate() -> int:
    from lifecycle.migrations import upgrade

    upgrade(_settings())
    print("database migrated to the latest revision", file=sys.stderr)
    return 0


def cmd_stack(action: str, clock: str = "virtual") -> int:
    import devstack as stack

    settings = _settings(clock=clock)
    if action == "up":
        stack.up(settings)
        print(f"stack up: API on http://127.0.0.1:{settings.ingest_port}, logs in {settings.run_dir}/logs")
    elif action == "down":
        stack.down(settings)
        print("stack down")
    else:
        rows = stack.status(settings)
        width = max(len(name) for name, _, _ in rows)
        for name, running, detail in rows:
            print(f"{name:<{width}}  {'up  ' if running else 'down'}  {detail}")
        return 0 if all(running for _, running, _ in rows) else 3
    return 0


def ensure_virtual_stack(settings: Settings) -> None:
    """Start what is missing; refuse a running stack whose services are not on the virtual clock."""
    import devstack as stack

    stack.up(settings)
    for port in (settings.stager_port, settings.dispatcher_port):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            clock = json.load(response).get("clock")
        if clock != "virtual":
            raise stack.StackError(
                f"the running services use the {clock} clock; run `lifecycle stack down` first so that "
                "they restart on the virtual clock"
            )


async def _run_scenarios(settings: Settings, files: list[Path]) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from lifecycle.idle import NotIdle, PipelineWatch
    from lifecycle.scenario import ScenarioError, ScenarioRunner

    engine = create_async_engine(settings.database_url)
    watch = PipelineWatch(settings, engine)
    await watch.start()
    runner = ScenarioRunner(settings, engine, watch)
    failed = 0
    try:
        for path in files:
            try:
                outcome = await runner.run(path)
            except (ScenarioError, NotIdle) as exc:
                print(f"FAIL {path}\n  {exc}")
                failed += 1
                continue
            if outcome.passed:
                print(f"PASS {path}  ({outcome.name})")
            else:
                failed += 1
                print(f"FAIL {path}  ({outcome.name})")
                for failure in outcome.failures:
                    print(f"  {failure}")
    finally:
        await runner.close()
        await watch.stop()
        await engine.dispose()
    print(f"{len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_scenario(files: list[str]) -> int:
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"no such scenario file: {', '.join(missing)}", file=sys.stderr)
        return 2
    settings = _virtual_settings()
    ensure_virtual_stack(settings)
    return asyncio.run(_run_scenarios(settings, paths))


def cmd_journeys_validate(directory: str | None) -> int:
    from lifecycle.journey_files import JourneyError, load_journeys
    from lifecycle.templates import Templates

    settings = _settings()
    extra = Path(directory) if directory else settings.journeys_dir
    try:
        journeys = load_journeys(extra, Templates(extra, settings.default_locale))
    except JourneyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    for journey in sorted(journeys, key=lambda j: j.name):
        sends = sum(1 for s in journey.steps if hasattr(s, "template"))
        print(f"ok  {journey.name:<22} entry={journey.entry.trigger.value if journey.entry else '-':<16} sends={sends} "
              f"reentry={journey.reentry}")
    return _campaign_templates_validate(settings, extra)


def _campaign_templates_validate(settings: Settings, extra: Path | None) -> int:
    """The default campaign templates and those of the campaign files, rendered like journeys' templates."""
    from lifecycle.campaign_catalog import DEFAULT_CAMPAIGN_TEMPLATES, CampaignFileError, load_campaign_files
    from lifecycle.templates import Templates

    templates = Templates(extra, settings.default_locale)
    try:
        files = load_campaign_files(settings.campaigns_dir, templates, settings.segments_dir)
    except CampaignFileError as exc:
        for message in exc.problems:
            print(message, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    names = dict.fromkeys([*DEFAULT_CAMPAIGN_TEMPLATES,
                           *(t for f in files for t in f.campaign.journey().send_step(0).templates())])
    problems = [problem for name in names for problem in templates.problems(name)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for name in names:
        print(f"ok  campaign template {name:<12} locales={','.join(templates.locales(name))}")
    for found in files:
        print(f"ok  campaign {found.campaign.name:<13} {found.path}")
    return 0


async def _journeys_apply(settings: Settings, path: Path, runs: str) -> int:
    from lifecycle.db.engine import make_engine
    from lifecycle.journey_catalog import apply
    from lifecycle.journey_files import JourneyError
    from lifecycle.templates import Templates

    try:
        definition = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    engine = make_engine(settings, "cli", pool_size=1)
    try:
        applied = await apply(engine, definition, Templates(settings.journeys_dir, settings.default_locale),
                              f"cli:{path}", "migrate" if runs == "migrate" else "keep", where=str(path))
    except JourneyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; nothing was applied", file=sys.stderr)
        return 1
    finally:
        await engine.dispose()
    version = applied.version
    if not applied.created:
        print(f"{version.journey}: version {version.version} is already this definition; nothing changed")
    else:
        moved = (f"; {applied.runs_migrated} run(s) moved to it, {applied.runs_ended} ended (step removed)"
                 if runs == "migrate" else "; runs in flight finish on their version")
        print(f"{version.journey}: version {version.version} applied, new runs take it{moved}")
    return 0


async def _journeys_list(settings: Settings, name: str | None, as_json: bool) -> int:
    from lifecycle.db.engine import make_engine
    from lifecycle.journey_catalog import catalog_view, list_versions

    engine = make_engine(settings, "cli", pool_size=1)
    try:
        view = catalog_view(await list_versions(engine, name), with_definition=as_json and name is not None)
    finally:
        await engine.dispose()
    if as_json:
        print(json.dumps(view, indent=2, ensure_ascii=False))
        return 0
    if not view:
        print(f"no journey named {name!r}" if name else "no journeys registered yet (start a service once)")
        return 1 if name else 0
    for journey in view:
        current = journey["current_version"]
        print(f"{journey['name']:<24} current: {current if current is not None else 'retired'}")
        for version in journey["versions"]:
            print(f"  v{version['version']:<4} {version['created_at']}  {version['source']:<4} {version['origin']}")
    return 0


def cmd_dlq(action: str, selectors: list[str], everything: bool, as_json: bool) -> int:
    from lifecycle.dlq import DlqError, read_entries, render, replay

    settings = _settings()
    if action == "list":
        print(render(asyncio.run(read_entries(settings)), as_json))
        return 0
    if not selectors and not everything:
        print("name the dead letters to replay (<partition>:<offset>, as `lifecycle dlq list` shows) or --all",
              file=sys.stderr)
        return 2
    try:
        replayed = asyncio.run(replay(settings, selectors, everything))
    except DlqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for entry in replayed:
        assert entry.letter is not None
        print(f"replayed {entry.name} to {entry.letter.topic}")
    print(f"{len(replayed)} replayed")
    return 0


async def _report(settings: Settings, since_text: str, journey: str | None, fmt: str) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from lifecycle.clock import make_clock
    from lifecycle.core.durations import parse_duration
    from lifecycle.report import build_report, render

    engine = create_async_engine(settings.database_url)
    try:
        try:
            since = datetime.fromisoformat(since_text.replace("Z", "+00:00"))
            if since.tzinfo is None:
                since = since.replace(tzinfo=UTC)
        except ValueError:
            try:
                since = await make_clock(settings.clock, engine).now() - parse_duration(since_text)
            except ValueError:
                print(f"--since: expected a date (2026-01-31) or a duration (30d), got {since_text!r}",
                      file=sys.stderr)
                return 2
        rows = await build_report(engine, since, journey)
    finally:
        await engine.dispose()
    print(render(rows, fmt))
    return 0


def cmd_report(since: str, journey: str | None, fmt: str) -> int:
    return asyncio.run(_report(_settings(), since, journey, fmt))


def cmd_demo() -> int:
    from lifecycle.demo import run_demo

    settings = _virtual_settings()
    ensure_virtual_stack(settings)
    return asyncio.run(run_demo(settings))


def cmd_doctor(services: list[str] | None, nameserver: str | None, timeout: float, smtp: bool) -> int:
    from lifecycle.doctor import DnsLookupError, diagnose, resolver_lookup, smtp_findings, summary
    from lifecycle.settings import SERVICE_SECRETS

    try:
        lookup = resolver_lookup(nameserver, timeout)
    except (DnsLookupError, ValueError) as exc:
        print(f"doctor: {exc}", file=sys.stderr)
        return 1
    settings = _settings()
    findings = diagnose(settings, lookup, services or list(SERVICE_SECRETS))
    if smtp:
        findings += smtp_findings(settings)
    for finding in findings:
        print(finding.line())
    print(summary(findings))
    return 1 if any(finding.level == "fail" for finding in findings) else 0


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 60:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds from 0 to 60")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lifecycle", description="Lifecycle email automation for e-commerce.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("ingest", "stager", "dispatcher"):
        service = sub.add_parser(name, help=f"run the {name} service")
        if name == "ingest":
            service.add_argument("--workers", type=_workers, default=None, metavar="N",
                                 help="processes serving the API on its one port (default: "
                                 "LIFECYCLE_INGEST_WORKERS, 1)")
    bounces = sub.add_parser("bounces", help="run the receiver of bounces and complaints (SMTP or LMTP) of the "
                             "bounce domain (docs/sending.md)")
    bounces.add_argument("--host", help="address to listen on (default: LIFECYCLE_INGEST_HOST, as every service)")
    bounces.add_argument("--port", type=_port, help="port to listen on (default: LIFECYCLE_BOUNCES_PORT, 2526)")
    bounces.add_argument("--lmtp", action="store_true",
                         help="speak LMTP (RFC 2033), for an MTA that hands the bounce domain's mail over by LMTP")
    sub.add_parser("migrate", help="apply database migrations (Alembic)")
    doctor = sub.add_parser("doctor", help="check the configuration as a mailbox provider would: SPF, DKIM and "
                            "DMARC in DNS, the https public URL, the postal address, development secrets, "
                            "the SMTP relay")
    doctor.add_argument("--service", action="append", choices=["ingest", "stager", "dispatcher", "bounces"],
                        help="check only the secrets this service holds (repeatable; default: every service), "
                        "e.g. in a pod that mounts only its own")
    doctor.add_argument("--nameserver", metavar="IP[:PORT]",
                        help="ask this DNS server rather than the system's resolver (/etc/resolv.conf)")
    doctor.add_argument("--timeout", type=_seconds, default=5.0, metavar="SECONDS",
                        help="how long one DNS question may take (default 5)")
    doctor.add_argument("--skip-smtp", action="store_true",
                        help="do not connect to the SMTP relay (by default: connected with TLS and AUTH as "
                        "configured, then QUIT; nothing is sent)")
    stack_parser = sub.add_parser("stack", help="the local stack: Kafka, PostgreSQL, SMTP sink, services")
    stack_parser.add_argument("action", choices=["up", "down", "status"])
    stack_parser.add_argument("--clock", choices=["virtual", "system"], default="virtual",
                              help="clock of the services started by `up` (default: virtual, which the demo, "
                              "the scenario runner and the tests need)")
    sub.add_parser("demo", help="play a shop's traffic on the virtual clock and show every email sent")
    scenario = sub.add_parser("scenario", help="play scenario files through the real pipeline")
    scenario_sub = scenario.add_subparsers(dest="scenario_command", required=True)
    scenario_run = scenario_sub.add_parser("run", help="run scenario files; exits non-zero on any failure")
    scenario_run.add_argument("files", nargs="+")
    report = sub.add_parser("report", help="sends, engagement, conversions and revenue per journey, step, variant")
    report.add_argument("--since", default="30d", help="a date (2026-01-31) or a duration back from now (30d)")
    report.add_argument("--journey", help="only this journey")
    report.add_argument("--campaign", help="only this campaign")
    report.add_argument("--format", choices=["table", "json", "csv"], default="table")
    add_templates_parser(sub)
    add_segments_parser(sub)
    add_campaigns_parser(sub)
    add_customers_parser(sub)
    journeys = sub.add_parser("journeys", help="journey definitions")
    journeys_sub = journeys.add_subparsers(dest="journeys_command", required=True)
    validate = journeys_sub.add_parser("validate", help="validate journeys and templates")
    validate.add_argument("--dir", help="extra journeys directory (default: LIFECYCLE_JOURNEYS_DIR)")
    apply_parser = journeys_sub.add_parser(
        "apply", help="add or replace a journey while the services run (validated like the files)")
    apply_parser.add_argument("file", help="one journey in the journey file format (YAML)")
    apply_parser.add_argument("--runs", choices=["keep", "migrate"], default="keep",
                              help="keep: runs in flight finish on their version (default); migrate: they move "
                              "to the new one at the step with the same id, and end if it has none")
    list_parser = journeys_sub.add_parser("list", help="journeys and their versions")
    list_parser.add_argument("name", nargs="?", help="only this journey")
    list_parser.add_argument("--json", action="store_true", help="as JSON (with the definitions for one journey)")
    chaos = sub.add_parser("chaos", help="the fault harness: a private stack, a seeded workload, random faults, "
                           "and a count of every broken promise (docs/reliability.md)")
    chaos.add_argument("--runs", type=int, default=1, help="runs of workload and faults (default 1)")
    chaos.add_argument("--seed", type=int, default=1, help="seed of the workload and the faults (default 1)")
    chaos.add_argument("--replicas", type=int, default=2, help="stagers and dispatchers each (default 2)")
    chaos.add_argument("--json", dest="json_path", help="write the totals to this file as JSON")
    chaos.add_argument("--faults", help="only these fault kinds, comma-separated (default: all; "
                       "docs/reliability.md lists them)")
    chaos.add_argument("--port-offset", type=int, default=300,
                       help="the harness's ports are the local stack's plus this (default 300); another offset "
                            "and another checkout run a second harness beside the first")
    dlq = sub.add_parser("dlq", help="the dead-letter topic: events and triggers that could not be handled")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="every dead letter, with its error")
    dlq_list.add_argument("--json", action="store_true")
    dlq_replay = dlq_sub.add_parser("replay", help="publish dead letters to their original topic again")
    dlq_replay.add_argument("ids", nargs="*", help="<partition>:<offset> as `lifecycle dlq list` shows")
    dlq_replay.add_argument("--all", action="store_true", help="every dead letter")
    return parser


# the commands that run the local stack (devstack, beside the runtime package: not in the image)
LOCAL_STACK_COMMANDS = ("stack", "demo", "scenario", "chaos")


def _with_local_stack(args: argparse.Namespace) -> int:
    try:
        from devstack import StackError
    except ModuleNotFoundError:
        print(f"error: `lifecycle {args.command}` needs the local stack tools (the devstack package), which this "
              "installation does not include; run it from a clone of the repository (README.md)", file=sys.stderr)
        return 1
    try:
        if args.command == "stack":
            return cmd_stack(args.action, args.clock)
        if args.command == "demo":
            return cmd_demo()
        if args.command == "scenario":
            return cmd_scenario(args.files)
        from devstack._util import absolute
        from devstack.chaos.harness import main as chaos_main

        return chaos_main(args.runs, args.seed, args.replicas, args.json_path,
                          absolute(_settings().run_dir) / "chaos", args.faults, args.port_offset)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from lifecycle.settings import describe_invalid_settings

    args = build_parser().parse_args(argv)
    try:
        if args.command in ("ingest", "stager", "dispatcher", "bounces"):
            return cmd_service(args.command, getattr(args, "workers", None), args)
        if args.command == "migrate":
            return cmd_migrate()
        if args.command == "doctor":
            return cmd_doctor(args.service, args.nameserver, args.timeout, not args.skip_smtp)
        if args.command in LOCAL_STACK_COMMANDS:
            return _with_local_stack(args)
        if args.command == "report":
            if args.journey and args.campaign:
                print("report: --journey or --campaign, not both", file=sys.stderr)
                return 2
            return cmd_report(args.since, f"campaign:{args.campaign}" if args.campaign else args.journey, args.format)
        if args.command == "templates":
            return run_templates_command(args, _settings())
        if args.command == "segments":
            return run_segments_command(args, _settings())
        if args.command == "campaigns":
            return run_campaigns_command(args, _settings())
        if args.command == "customers":
            return run_customers_command(args, _settings())
        if args.command == "dlq":
            return cmd_dlq(args.dlq_command, getattr(args, "ids", []), getattr(args, "all", False),
                           getattr(args, "json", False))
        if args.journeys_command == "apply":
            return asyncio.run(_journeys_apply(_settings(), Path(args.file), args.runs))
        if args.journeys_command == "list":
            return asyncio.run(_journeys_list(_settings(), args.name, args.json))
        return cmd_journeys_validate(args.dir)
    except ValidationError as exc:
        # LIFECYCLE_* values that cannot be used: say which and why, no traceback
        for line in describe_invalid_settings(exc):
            print(f"error: {line}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        print(f"error: database: {detail} (is PostgreSQL up and migrated? `lifecycle stack status`, "
              "`lifecycle migrate`)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
