"""Runs of the fault harness: the stack once, then per run a workload, faults, idle, a verdict."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import create_async_engine

from devstack.chaos.faults import BACKEND_TERMINATE, KINDS, FaultRecord, Faults
from devstack.chaos.judge import Verdict, judge
from devstack.chaos.sink import ChaosSink
from devstack.chaos.stack import ADMIN_KEY, PORT_OFFSET, WRITE_KEY, ChaosStack, chaos_settings
from devstack.chaos.workload import JOURNEYS, Api, Workload, WorkloadError
from lifecycle.clock import SystemClock
from lifecycle.idle import NotIdle, PipelineWatch

log = logging.getLogger("devstack.chaos")

CUSTOMERS_PER_RUN = 22  # every story twice
ARRIVAL_WINDOW = 12.0  # seconds over which a run's customers arrive
FAULTS_PER_RUN = 4
FAULTS_FROM = 3.0  # seconds into a run
IDLE_TIMEOUT = 180.0


@dataclass(frozen=True)
class Options:
    runs: int
    seed: int
    replicas: int
    json_path: Path | None
    run_dir: Path
    kinds: tuple[str, ...] = KINDS
    port_offset: int = PORT_OFFSET


MAX_PORT_OFFSET = 6_000  # the highest port moved, Kafka's controller (59093 + offset), stays below 65536


def say(message: str) -> None:
    print(message, flush=True)


def fault_plan(seed: int, runs: int, kinds_allowed: tuple[str, ...] = KINDS) -> list[list[str]]:
    """The faults of each run: every kind in turn, in an order drawn from the seed."""
    rng = random.Random(f"plan:{seed}")
    cycle: list[str] = []
    while len(cycle) < runs * FAULTS_PER_RUN:
        kinds = list(kinds_allowed)
        rng.shuffle(kinds)
        cycle.extend(kinds)
    return [cycle[i * FAULTS_PER_RUN:(i + 1) * FAULTS_PER_RUN] for i in range(runs)]


async def run_chaos(options: Options) -> int:
    settings = chaos_settings(options.run_dir, options.port_offset)
    shutil.rmtree(options.run_dir, ignore_errors=True)  # every invocation starts from nothing
    options.run_dir.mkdir(parents=True)
    options.run_dir.chmod(0o755)
    stack = ChaosStack(settings)
    sink = ChaosSink(settings.smtp_host, settings.smtp_port)
    api = Api(settings.public_url, WRITE_KEY)
    engine = create_async_engine(settings.database_url, pool_pre_ping=True,
                                 connect_args={"server_settings": {"application_name": "chaos"}})
    watch = PipelineWatch(settings, engine, SystemClock())
    total = Verdict()
    done = 0
    harness_failed = False
    try:
        await sink.start()
        say(f"chaos: starting a private stack with {options.replicas} stager(s) and {options.replicas} "
            f"dispatcher(s) in {options.run_dir} (logs in {options.run_dir / 'logs'})")
        await asyncio.to_thread(stack.start_infrastructure)
        for name in ["ingest"] + [f"{kind}-{i}" for kind in ("stager", "dispatcher")
                                  for i in range(1, options.replicas + 1)]:
            await asyncio.to_thread(stack.start, name)
        for journey in JOURNEYS:
            await api.apply_journey(journey, ADMIN_KEY)
        await watch.start()
        plan = fault_plan(options.seed, options.runs, options.kinds)
        for run in range(options.runs):
            verdict = await one_run(run, options, stack, sink, api, watch, plan[run])
            say(f"run {run + 1}/{options.runs}: {verdict.line()}")
            for finding in verdict.findings + verdict.notes:
                say(f"  {finding}")
            total.add(verdict)
            done += 1
    except WorkloadError as exc:
        say(f"chaos: the harness itself failed: {exc}")
        harness_failed = True
    finally:
        await api.close()
        await watch.stop()
        await engine.dispose()
        await stack.close()
        await sink.stop()
        await asyncio.to_thread(stack.stop_all)
    # the runs judged before the harness failed still count: their total and JSON are written too
    say(f"total, {done} run(s) of {options.runs}, seed {options.seed}: {total.line()}")
    if options.json_path is not None:
        options.json_path.write_text(json.dumps(total.as_json(done), indent=2) + "\n")
    if harness_failed:
        return 2
    return 1 if total.broken else 0


async def one_run(run: int, options: Options, stack: ChaosStack, sink: ChaosSink, api: Api, watch: PipelineWatch,
                  kinds: list[str]) -> Verdict:
    rng = random.Random(f"{options.seed}:{run}")
    workload = Workload(api, sink, rng, run, CUSTOMERS_PER_RUN, ARRIVAL_WINDOW)
    faults = Faults(stack, sink, rng, options.replicas)
    stop_terminating = asyncio.Event()
    terminated: list[float] = []
    background = asyncio.create_task(faults.terminate_backends(stop_terminating, terminated))
    play = asyncio.create_task(workload.play())
    records: list[FaultRecord] = []
    windows_before = len(sink.mode.killed_message_ids)
    try:
        await asyncio.sleep(FAULTS_FROM)
        for kind in kinds:
            records.append(await faults.inject(kind))
            await asyncio.sleep(rng.uniform(1.0, 3.0))
    finally:
        stop_terminating.set()
        await background
        await play
    settle = max(c.settle_at for c in workload.customers)
    if settle > time.time():
        await asyncio.sleep(settle - time.time())
    stuck = 0
    try:
        await watch.wait_idle(IDLE_TIMEOUT)
    except NotIdle as exc:
        say(f"  not idle: {exc}")
        stuck = watch.last.pending if watch.last is not None else 1
    verdict = judge(workload.customers, sink.arrivals, records, sink.mode.killed_message_ids[windows_before:], stuck)
    start = min(r.started for r in records) if records else time.time()
    verdict.notes.extend(f"fault at +{r.started - start:.0f} s for {r.ended - r.started:.1f} s: {r.kind}"
                         f"{' (not injected)' if not r.injected else ''} {r.detail}".rstrip() for r in records)
    if terminated:
        verdict.faults[BACKEND_TERMINATE] += len(terminated)
    return verdict


async def _until_stopped(options: Options) -> int:
    """run_chaos, ended by SIGTERM or SIGINT as by its own end: everything it started is stopped."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await run_chaos(options)
    except asyncio.CancelledError:
        say("chaos: stopped before the end; what it started is stopped")
        return 130


def main(runs: int, seed: int, replicas: int, json_path: str | None, run_dir: Path, faults: str | None = None,
         port_offset: int = PORT_OFFSET) -> int:
    if runs < 1 or replicas < 1:
        print("--runs and --replicas must be at least 1", file=sys.stderr)
        return 2
    kinds = tuple(k.strip() for k in faults.split(",") if k.strip()) if faults else KINDS
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        print(f"--faults: unknown kind(s) {', '.join(unknown) or '(none given)'}; kinds are {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the broker restarts on purpose
    if not 0 <= port_offset <= MAX_PORT_OFFSET:
        print(f"--port-offset must be between 0 and {MAX_PORT_OFFSET}", file=sys.stderr)
        return 2
    options = Options(runs, seed, replicas, Path(json_path) if json_path else None, run_dir.absolute(), kinds,
                      port_offset)
    return asyncio.run(_until_stopped(options))
