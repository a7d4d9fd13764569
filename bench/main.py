"""Throughput, latency and scaling of the pipeline on a private local stack (system clock), each figure
against a raw baseline measured in the same run. docs/performance.md says how each one is measured.

    python bench/run.py [--json FILE] [--scale F] [--phases ingest,stager,...] [--profile DIR]

Phases, each with the services it needs and the state reset first:
  ingest      the API alone vs a plain idempotent producer
  stager      100,000 events already in Kafka, first poll to last commit
  dispatcher  5,000 due sends, vs a plain SMTP loop; the same again with DKIM signing
  latency     due time to delivery at 70% of the dispatcher's throughput, open loop, 60 s
  tick        one time-driven pass, 1,000 changes due over 10,000 and 1,000,000 customers
  pipeline    today's end-to-end burst: sign-ups and views through the API, all services
  replicas    the same burst with two stagers and two dispatchers: emails/s and duplicates
  campaign    a campaign to 100,000 customers, its start to the last send, vs a plain SMTP loop
`--scale 0.02` makes every count and duration 50 times smaller (a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench import campaign, dispatcher, dkim_sign, ingest, latency, replicas, stager, tick
from bench.common import PHASES, PIPELINE_CUSTOMERS, PIPELINE_VIEWS, Results, Scale, machine, say, table
from bench.stack import BenchStack, bench_settings, reset, summarize_profiles
from devstack import StackError, down, processes, up
from lifecycle.runtime import settle_heap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure into one JSON object")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every count and duration (0 < F <= 1)")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of: {', '.join(PHASES)}")
    parser.add_argument("--customers", type=int, default=PIPELINE_CUSTOMERS,
                        help="sign-ups of the pipeline and replicas bursts (each one welcome email)")
    parser.add_argument("--views-per-customer", type=int, default=PIPELINE_VIEWS,
                        help="product views per customer in those bursts")
    parser.add_argument("--no-dkim", action="store_true", help="skip the dispatcher's DKIM run")
    parser.add_argument("--dkim-only", action="store_true",
                        help="only time DKIM signing in-process against dkimpy (no stack), then exit")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the services under cProfile and write DIR/<phase>-<service>.prof and .txt "
                             "(slower: the figures of such a run are not the figures)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running and its run directory")
    parser.add_argument("--cleanup", type=Path, metavar="RUN_DIR",
                        help="stop what a killed run left behind in RUN_DIR, then exit")
    args = parser.parse_args(argv)
    try:
        args.scale_ = Scale(args.scale)
    except ValueError as exc:
        parser.error(str(exc))
    chosen = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = sorted(set(chosen) - set(PHASES))
    if unknown or not chosen:
        parser.error(f"--phases: unknown {', '.join(unknown) or '(none given)'}; choose among {', '.join(PHASES)}")
    if "latency" in chosen and "dispatcher" not in chosen:
        chosen.append("dispatcher")  # the load is a share of the dispatcher's measured throughput
    args.chosen = [p for p in PHASES if p in chosen]
    return args


async def measure(stack: BenchStack, args: argparse.Namespace, results: Results) -> None:
    scale: Scale = args.scale_
    try:
        say("stack: topics, and the consumer groups' coordinator (Kafka makes it on first use)")
        await reset(stack)
        for phase in args.chosen:
            # the benchmark's own process holds every phase's workload: its collector keeps off the cores
            # the services are measured on, as theirs does (settle_heap)
            settle_heap()
            if phase == "ingest":
                await ingest.run(stack, scale, results)
            elif phase == "stager":
                await stager.run(stack, scale, results)
            elif phase == "dispatcher":
                await dispatcher.run(stack, scale, results, dkim=not args.no_dkim)
            elif phase == "latency":
                capacity = results.get("dispatcher_emails_per_s")
                assert capacity is not None
                await latency.run(stack, scale, results, capacity)
            elif phase == "tick":
                await tick.run(stack, scale, results)
            elif phase == "pipeline":
                await replicas.run_pipeline(stack, scale, results, args.customers, args.views_per_customer)
            elif phase == "replicas":
                await replicas.run_replicas(stack, scale, results, args.customers, args.views_per_customer)
            elif phase == "campaign":
                await campaign.run(stack, scale, results)
        stack.only(())
    finally:
        await stack.close()


def cleanup(run_dir: Path) -> int:
    """Stop every process recorded under run_dir/pids (services first), then the infrastructure."""
    settings = bench_settings(run_dir)
    for pid_file in sorted(processes.pid_dir(run_dir).glob("*.pid")):
        name = pid_file.stem
        if name not in ("kafka", "postgres", "smtp_sink") and processes.stop(run_dir, name):
            print(f"{name}: stopped")
    down(settings)
    return 0


def report(results: Results, args: argparse.Namespace) -> None:
    if not results.rows:
        return
    print()
    scale = "" if args.scale == 1 else f" (smoke run at --scale {args.scale:g}: counts and durations x{args.scale:g})"
    print(f"machine: {machine()}{scale}")
    print(table(results.rows))
    for note in results.notes:
        print(f"note: {note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the Kafka client logs every retry while the broker warms up; failures that matter raise
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.cleanup is not None:
        return cleanup(args.cleanup.resolve())
    if args.dkim_only:
        return dkim_sign.report()
    run_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    os.chmod(run_dir, 0o755)  # PostgreSQL runs as its own user when we are root
    settings = bench_settings(run_dir)
    stack = BenchStack(settings, args.profile.resolve() if args.profile else None)
    results = Results()
    say(f"benchmark: phases {', '.join(args.chosen)}, scale {args.scale:g}, run directory {run_dir}")
    status = 0
    try:
        say("stack: Kafka, PostgreSQL, the SMTP sink and migrations")
        up(settings, services=False)
        asyncio.run(measure(stack, args, results))
    except StackError as exc:
        print(f"benchmark: the stack failed: {exc}", file=sys.stderr)
        status = 1
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("benchmark: interrupted", file=sys.stderr)
        status = 130
    finally:
        say("stopping everything this run started")
        try:
            stack.stop_services()
            if not args.keep:
                down(settings)
        finally:
            if args.keep:
                print(f"stack left running in {run_dir}; stop it with: python bench/run.py --cleanup {run_dir}")
            elif status == 0:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:  # the logs the error names stay; the data goes
                for child in run_dir.iterdir():
                    if child.is_dir() and child.name != "logs":
                        shutil.rmtree(child, ignore_errors=True)
                    elif not child.is_dir():
                        child.unlink(missing_ok=True)
                print(f"logs kept in {run_dir / 'logs'}", file=sys.stderr)
    report(results, args)
    if args.profile is not None:
        summarize_profiles(args.profile.resolve())
        print(f"profiles: {args.profile}/*.prof, summaries in *.txt")
    if args.json is not None and status == 0:
        args.json.write_text(json.dumps(results.as_json(), indent=2) + "\n")
        print(f"figures written to {args.json}")
    return status
