"""dispatcher_emails_per_s, smtp_raw_per_s, dispatcher_ratio, dispatcher_distinct_ratio,
dispatcher_dkim_ratio: 5,000 due sends already in PostgreSQL, delivered to the sink by one dispatcher,
against a plain aiosmtplib loop sending the same messages to the same sink over as many connections
(smtp_pool_size).

The due sends are made by the services' own code, in this process, with every service stopped: the
stager's StagerStore.apply_events takes one opted-in sign-up per customer (customers rows, outbox
triggers), and the dispatcher's DispatcherStore.handle_triggers takes those triggers as its consumer
would, which starts one prospect_welcome run per customer whose first email is due at once. A due
send is such a run: the dispatcher claims it, composes and records the message in `sends`, and hands
it to SMTP.

The dispatcher figure runs from the moment the started dispatcher first answers /healthz (polled every
20 ms; its loop starts right after) to the arrival of the last message in the sink (file times), so it
counts claiming and composing the first batch; the table also gives first delivery to last, and the
progress line the rate from the process start (imports and connections included). The raw loop sends the very
messages the dispatcher composed (from `sends`), unsigned, right after each round.

The plain and the DKIM figures are medians of DISPATCHER_ROUNDS rounds, each a dispatcher run then the
raw loop, as the ingest phase takes turns: one run lasts about ten seconds, and on a shared machine a
single pair of runs moved the ratio by 0.2 either way with the same code.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiosmtplib
import httpx
from sqlalchemy import text

from bench.common import (
    DISPATCHER_ROUNDS,
    DISPATCHER_SENDS,
    Results,
    Row,
    Scale,
    count_duplicates,
    rate,
    ratio,
    say,
    spread_rate,
)
from bench.stack import BenchStack, deliveries, message_count, reset, scalar, wait_until
from bench.workload import batches, parsed, signup
from devstack import postgres, smtp_sink
from devstack.smtp_sink import clear_messages, mail_dir
from lifecycle.clock import SystemClock
from lifecycle.core.triggers import Trigger
from lifecycle.journey_catalog import JourneyCatalog, register_files
from lifecycle.journey_files import load_journey_files
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.dispatcher.rendering import Renderer
from services.dispatcher.worker import DispatcherStore
from services.stager.worker import StagerStore, rule_config


async def seed_due_runs(stack: BenchStack, prefix: str, count: int, distinct: bool = False) -> list[int]:
    """`count` customers, each with one journey run whose first email is due now; their run ids.

    The customers share one first name, so their emails differ only by their links; `distinct` gives
    each a name of its own, so that no two emails have the same content."""
    settings = stack.settings
    engine = await stack.database()
    templates = Templates(settings.journeys_dir, settings.default_locale)
    await register_files(engine, load_journey_files(settings.journeys_dir, templates))
    stager = StagerStore(engine, SystemClock(), rule_config(settings), settings.attribution_days)
    dispatcher = DispatcherStore(settings, engine, SystemClock(), JourneyCatalog(templates),
                                 Renderer(settings, workers=0, templates=templates))
    signed_up = datetime.now(UTC) - timedelta(seconds=30)
    for chunk in batches(parsed([signup(f"{prefix}-{n}", signed_up, first_name=f"Bench {n}" if distinct else "Bench")
                                     for n in range(count)]), settings.batch_size):
        await stager.apply_events(chunk)
    # the outbox in id order, as the relay publishes it, handed to the dispatcher as its consumer would
    while True:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, payload FROM outbox ORDER BY id LIMIT :n"),
                                       {"n": settings.batch_size})).all()
        if not rows:
            break
        await dispatcher.handle_triggers([Trigger.from_json(row.payload) for row in rows])
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM outbox WHERE id = ANY(:ids)"), {"ids": [row.id for row in rows]})
    async with engine.connect() as conn:
        run_ids = list((await conn.execute(text(
            "SELECT run_id FROM journey_runs WHERE status = 'active' AND due_at <= now() ORDER BY run_id"))).scalars())
    if len(run_ids) != count:
        raise RuntimeError(f"seeding made {len(run_ids)} due runs, expected {count}")
    return run_ids


@dataclass(frozen=True)
class Delivered:
    count: int
    # CPU time an email from ready to the last record (ms): the dispatcher's process, its render workers,
    # PostgreSQL (every process of the server), the SMTP sink
    cpu_ms: tuple[float, float, float, float] | None
    from_ready: float  # emails/s from the moment the dispatcher answers /healthz to the last arrival
    from_spawn: float  # the same from the process start (imports and connections included)
    first_to_last: float | None
    duplicates: int


async def deliver_all(stack: BenchStack, count: int, settings: Settings | None, phase: str) -> Delivered:
    """Start the dispatcher on `count` due sends and wait until the sink holds them all and every send
    is recorded as sent."""
    engine = await stack.database()
    spawned = time.time()
    stack.start("dispatcher", wait=False, settings=settings, phase=phase)
    async with httpx.AsyncClient(timeout=2) as client:
        async def healthy() -> tuple[bool, str]:
            if not stack.pid("dispatcher"):
                raise RuntimeError(f"the dispatcher exited; see {stack.run_dir / 'logs' / 'dispatcher.log'}")
            try:
                return (await client.get(stack.url("dispatcher", "/healthz"))).status_code == 200, "starting"
            except httpx.HTTPError:
                return False, "starting"

        ready = await wait_until(healthy, "dispatcher start", 120, interval=0.02)
    pid, server = stack.pid("dispatcher"), postgres.server_pid(stack.settings)
    sink = smtp_sink.server_pid(stack.settings)
    cpu_at_ready = _cpu_seconds(pid, server, sink) if pid and server and sink else None

    async def done() -> tuple[bool, str]:
        if not stack.pid("dispatcher"):
            raise RuntimeError(f"the dispatcher exited; see {stack.run_dir / 'logs' / 'dispatcher.log'}")
        arrived = message_count(stack.settings)
        return arrived >= count, f"{arrived}/{count} in the sink"

    # the last arrival is read from the sink's file times, not from this look: a look every half second
    # leaves the cores to the dispatcher (listing the sink's folder is not free)
    await wait_until(done, "dispatcher", 1800, interval=0.5)

    async def recorded() -> tuple[bool, str]:
        sent = await scalar(engine, "SELECT count(*) FROM sends WHERE status = 'sent'")
        return sent >= count, f"{sent}/{count} recorded as sent"

    await wait_until(recorded, "dispatcher records", 120)
    cpu_ms = None
    if pid and server and sink and cpu_at_ready is not None:
        own, workers, database, sink_ms = (1000 * (now - then) / count for now, then in zip(
            _cpu_seconds(pid, server, sink), cpu_at_ready, strict=True))
        cpu_ms = (own, workers, database, sink_ms)
    stack.wait_healthy("dispatcher")
    found = deliveries(stack.settings)
    times = [d.at for d in found]
    result = Delivered(len(found), cpu_ms, rate(len(found), max(times) - ready), rate(len(found), max(times) - spawned),
                       spread_rate(times), count_duplicates(found))
    stack.stop("dispatcher")
    return result


def _cpu_seconds(pid: int, server: int, sink: int) -> tuple[float, float, float, float]:
    """CPU seconds, user and system, from one pass over /proc: of `pid`, of its children together (the
    render workers), of the PostgreSQL `server` with its children (backends, background workers), and
    of the SMTP `sink`."""
    own = children = database = sink_cpu = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        found = _process_cpu(entry)
        if found is None:
            continue  # gone meanwhile
        used, parent = found
        process = int(entry.name)
        if process == pid:
            own = used
        elif parent == pid:
            children += used
        elif server in (process, parent):
            database += used
        elif process == sink:
            sink_cpu = used
    return own, children, database, sink_cpu


def _process_cpu(entry: Path) -> tuple[float, int] | None:
    """CPU seconds (user and system) and parent pid of the process at `entry` (/proc/<pid>); None if gone."""
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[1])


def _sink_cpu_seconds(settings: Settings) -> float | None:
    pid = smtp_sink.server_pid(settings)
    found = _process_cpu(Path(f"/proc/{pid}")) if pid is not None else None
    return found[0] if found is not None else None


async def raw_smtp(stack: BenchStack, connections: int, total: int | None = None,
                   sample: int | None = None) -> tuple[int, float]:
    """(messages, seconds): the messages the dispatcher sent, again, by a plain aiosmtplib loop over
    `connections` connections to the same sink (connecting included). With `total` and `sample`: `total`
    messages, cycling over the first `sample` the dispatcher sent (a large campaign's bodies are not
    all held in memory)."""
    settings = stack.settings
    engine = await stack.database()
    limit = " LIMIT :n" if sample is not None else ""
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            f"SELECT to_address, message FROM sends WHERE status = 'sent' ORDER BY send_id{limit}"),
            {"n": sample})).all()
    messages = [(str(row.to_address), bytes(row.message)) for row in rows]
    wanted = total if total is not None else len(messages)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    for index in range(wanted):
        queue.put_nowait(messages[index % len(messages)])
    sender = settings.mail_from_address

    async def worker() -> None:
        smtp = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port, timeout=30)
        await smtp.connect()
        try:
            while not queue.empty():
                to, message = queue.get_nowait()
                await smtp.sendmail(sender, [to], message)
        finally:
            await smtp.quit()

    clear_messages(mail_dir(settings))
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    arrived = message_count(settings)
    if arrived != wanted:
        raise RuntimeError(f"raw SMTP loop: {arrived} messages in the sink, expected {wanted}")
    clear_messages(mail_dir(settings))
    return wanted, elapsed


def dkim_key(run_dir: Path) -> Path:
    """A fresh RSA 2048 key (PKCS#8 PEM) in the run directory."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = run_dir / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def dkim_signed(stack: BenchStack) -> int:
    return sum(1 for path in mail_dir(stack.settings).glob("*.eml") if b"DKIM-Signature:" in path.read_bytes())


async def run(stack: BenchStack, scale: Scale, results: Results, dkim: bool = True) -> None:
    settings = stack.settings
    count = scale.count(DISPATCHER_SENDS, 10)
    connections = settings.smtp_pool_size
    say(f"dispatcher: {count} due sends made with the dispatcher stopped (stager and dispatcher code, "
        f"in process), then one dispatcher delivers them; then the raw baseline, the same {count} messages by a "
        f"plain aiosmtplib loop over {connections} connections; {DISPATCHER_ROUNDS} rounds")
    stack.only((), phase="dispatcher")
    plain, raws = await _rounds(stack, "dispatcher", count, None, connections)
    first_to_last = [p.first_to_last for p in plain if p.first_to_last is not None]
    dispatched, raw = statistics.median(p.from_ready for p in plain), statistics.median(raws)
    say(f"  {dispatched:.1f} emails/s through the dispatcher, {raw:.1f} emails/s by the raw loop (medians)")
    results.set("dispatcher_emails_per_s", dispatched)
    results.set("smtp_raw_per_s", raw)
    results.set("dispatcher_ratio", ratio(dispatched, raw))
    results.rows.append(Row(f"dispatcher, emails/s ({count} due, from ready to the last arrival, median of "
                            f"{DISPATCHER_ROUNDS} rounds)", dispatched, raw, "/s"))
    results.rows.append(Row("dispatcher, emails/s, first delivery to last",
                            statistics.median(first_to_last) if first_to_last else None, raw, "/s"))
    _note_duplicates(results, "dispatcher phase", plain)
    say(f"dispatcher, every email's content its own (a first name per customer): {count} due sends again")
    distinct = await _again(stack, "distinct", count, None, distinct=True)
    results.set("dispatcher_distinct_ratio", ratio(distinct.from_ready, raw))
    results.rows.append(Row("dispatcher, emails/s, every email's content its own (no render shared)",
                            distinct.from_ready, raw, "/s"))
    _note_duplicates(results, "distinct-content phase", [distinct])
    if not dkim:
        return
    key = dkim_key(stack.run_dir)
    signing = settings.model_copy(update={"dkim_selector": "bench", "dkim_domain": "shop.example",
                                          "dkim_private_key_file": key})
    say(f"dispatcher with DKIM (RSA 2048, relaxed/relaxed): {count} due sends again, each round followed by "
        "the raw loop")
    signed, signed_raws = await _rounds(stack, "dkim", count, signing, connections)
    dkim_rate, dkim_raw = statistics.median(s.from_ready for s in signed), statistics.median(signed_raws)
    say(f"  {dkim_rate:.1f} emails/s signed by the dispatcher, {dkim_raw:.1f} emails/s by the raw loop (medians)")
    results.set("dispatcher_dkim_ratio", ratio(dkim_rate, dkim_raw))
    results.rows.append(Row(f"dispatcher with DKIM signing, emails/s (from ready to the last arrival, median of "
                            f"{DISPATCHER_ROUNDS} rounds)", dkim_rate, dkim_raw, "/s"))
    _note_duplicates(results, "DKIM phase", signed)


async def _rounds(stack: BenchStack, phase: str, count: int, settings: Settings | None,
                  connections: int) -> tuple[list[Delivered], list[float]]:
    """DISPATCHER_ROUNDS turns of the dispatcher on `count` fresh due sends, then the raw loop on the
    messages it sent: each figure is then the median of its rounds, so a burst of the machine's other
    load (it is shared) moves one round, not the figure."""
    delivered: list[Delivered] = []
    raws: list[float] = []
    for round_number in range(1, DISPATCHER_ROUNDS + 1):
        found = await _again(stack, f"{phase}{round_number}", count, settings)
        if settings is not None and settings.dkim_private_key_file is not None:
            unsigned = count - dkim_signed(stack)
            if unsigned:
                raise RuntimeError(f"DKIM phase: {unsigned} of {count} messages arrived without a DKIM-Signature")
        sink_before = _sink_cpu_seconds(stack.settings)
        sent, seconds = await raw_smtp(stack, connections)
        sink_after = _sink_cpu_seconds(stack.settings)
        raws.append(rate(sent, seconds))
        delivered.append(found)
        raw_sink = (f" (the raw loop's: {1000 * (sink_after - sink_before) / sent:.2f} ms)"
                    if sink_before is not None and sink_after is not None and sent else "")
        say(f"  round {round_number}: raw loop {raws[-1]:.1f} emails/s, ratio {ratio(found.from_ready, raws[-1]):.2f}"
            f"{_cpu_note(found)}{raw_sink}")
    return delivered, raws


def _cpu_note(found: Delivered) -> str:
    if found.cpu_ms is None:
        return ""
    own, workers, database, sink = found.cpu_ms
    return (f"; CPU an email: dispatcher {own:.2f} ms, render workers {workers:.2f} ms, "
            f"PostgreSQL {database:.2f} ms, the sink {sink:.2f} ms")


def _note_duplicates(results: Results, phase: str, runs: list[Delivered]) -> None:
    duplicates = sum(found.duplicates for found in runs)
    if duplicates:
        results.notes.append(f"{phase}: {duplicates} duplicate messages in the sink")


async def _again(stack: BenchStack, phase: str, count: int, settings: Settings | None,
                 distinct: bool = False) -> Delivered:
    """Another run of `count` due sends from empty state, reported as the first one is."""
    await reset(stack)
    await seed_due_runs(stack, phase, count, distinct=distinct)
    found = await deliver_all(stack, count, settings, phase)
    say(f"  {found.from_ready:.1f} emails/s from ready to the last arrival ({found.from_spawn:.1f}/s from the "
        f"process start, {found.first_to_last or 0:.1f}/s first delivery to last){_cpu_note(found)}")
    return found
