"""Today's end-to-end figures (the `pipeline_*` keys) and replicas_2_emails_per_s, replicas_2_duplicates.

Both play the same workload through the ingest API: N customers sign up (opted in: one prospect_welcome
email each) and view V products each, POSTed in batches of 100 by four clients, on a stack reset first.

- pipeline: one ingest API, one stager, one dispatcher. POST rate; events applied per second from the
  first POST (processed_events complete); emails per second from the first delivery to the last; due
  time (`sends.due_at`) to arrival in the sink, p50 and p99, while the burst queues behind the stager.
- replicas: one ingest API, two stagers, two dispatchers, each a process of its own (the fault
  harness's ChaosStack). Emails per second measured the same way, against the pipeline's one-of-each
  figure; duplicates are messages beyond the first with the same Message-ID, or with the same
  recipient, journey and step, counted once every send is recorded and no send is in flight.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from sqlalchemy import text

from bench.common import (
    Results,
    Row,
    Scale,
    count_duplicates,
    percentile,
    rate,
    ratio,
    say,
    spread_rate,
)
from bench.ingest import post_all
from bench.stack import BenchStack, deliveries, message_count, metric, reset, scalar, wait_until
from bench.workload import pipeline_events

APPLIED = "lifecycle_stager_events_applied_total"
ACCEPTED = "lifecycle_dispatcher_smtp_accepted_total"
SETTLE_SECONDS = 2.0  # after the last send is recorded: time for a late duplicate to arrive


@dataclass(frozen=True)
class Burst:
    events: int
    emails: int
    post_rate: float
    applied_rate: float
    emails_rate: float | None
    delays: list[float]
    duplicates: int


async def burst(stack: BenchStack, prefix: str, customers: int, views: int) -> Burst:
    engine = await stack.database()
    events = pipeline_events(prefix, customers, views)
    first_post, last_answer = await post_all(stack.settings, events)

    async def applied() -> tuple[bool, str]:
        done = await scalar(engine, "SELECT count(*) FROM processed_events")
        return done >= len(events), f"{done}/{len(events)} events applied"

    applied_at = await wait_until(applied, "stager", 1800, interval=0.2)

    async def delivered() -> tuple[bool, str]:
        arrived = message_count(stack.settings)
        sent = await scalar(engine, "SELECT count(*) FROM sends WHERE status = 'sent'")
        return arrived >= customers and sent >= customers, f"{arrived}/{customers} in the sink, {sent} recorded"

    await wait_until(delivered, "dispatcher", 1800, interval=0.2)

    async def quiet() -> tuple[bool, str]:
        busy = await scalar(engine, "SELECT count(*) FROM sends WHERE status = 'sending'")
        due = await scalar(engine, "SELECT count(*) FROM journey_runs WHERE status = 'active' AND due_at <= now()")
        return busy == 0 and due == 0, f"{busy} sends in flight, {due} steps due"

    await wait_until(quiet, "in flight", 120, interval=0.2)
    await asyncio.sleep(SETTLE_SECONDS)
    async with engine.connect() as conn:
        due = {str(row.message_id): row.due_at.timestamp() for row in
               (await conn.execute(text("SELECT message_id, due_at FROM sends"))).all()}
    found = deliveries(stack.settings)
    delays = [d.at - due[d.message_id] for d in found if d.message_id in due]
    return Burst(len(events), len(found), rate(len(events), last_answer - first_post),
                 rate(len(events), applied_at - first_post), spread_rate([d.at for d in found]), delays,
                 count_duplicates(found))


async def run_pipeline(stack: BenchStack, scale: Scale, results: Results, customers: int, views: int) -> None:
    customers = scale.count(customers, 4)
    say(f"pipeline (today's figures): one ingest API, stager and dispatcher; {customers} sign-ups and "
        f"{customers * views} product views POSTed in batches of 100 by four clients")
    stack.only((), phase="pipeline")
    await reset(stack)
    stack.only(("ingest", "stager", "dispatcher"), phase="pipeline")
    found = await burst(stack, "pipe", customers, views)
    p50, p99 = percentile(found.delays, 0.5), percentile(found.delays, 0.99)
    results.set("pipeline_ingest_events_per_s", found.post_rate)
    results.set("pipeline_stager_events_per_s", found.applied_rate)
    results.set("pipeline_emails_per_s", found.emails_rate)
    results.set("pipeline_delay_p50_s", p50)
    results.set("pipeline_delay_p99_s", p99)
    results.rows += [
        Row(f"pipeline: POST /v1/events, events/s ({found.events} events)", found.post_rate,
            results.get("ingest_raw_per_s"), "/s"),
        Row("pipeline: stager, events applied/s (from the first POST)", found.applied_rate, unit="/s"),
        Row(f"pipeline: emails/s, first delivery to last ({found.emails})", found.emails_rate,
            results.get("smtp_raw_per_s"), "/s"),
        Row("pipeline: delay due -> delivered, p50 (s)", p50, unit=" s"),
        Row("pipeline: delay due -> delivered, p99 (s)", p99, unit=" s"),
    ]
    if found.duplicates:
        results.notes.append(f"pipeline phase: {found.duplicates} duplicate messages in the sink")
    say(f"  POST {found.post_rate:,.0f} events/s, applied {found.applied_rate:,.0f}/s from the first POST, "
        f"{found.emails_rate or 0:.1f} emails/s, delay p50 {p50:.2f} s p99 {p99:.2f} s")


async def run_replicas(stack: BenchStack, scale: Scale, results: Results, customers: int, views: int) -> None:
    customers = scale.count(customers, 4)
    say(f"replicas: one ingest API, two stagers, two dispatchers; the same workload ({customers} sign-ups)")
    stack.only(("ingest",), phase="replicas")
    await reset(stack)
    stack.only(("ingest", "stager", "stager-2", "dispatcher", "dispatcher-2"), phase="replicas")
    found = await burst(stack, "repl", customers, views)
    shares: list[str] = []
    async with httpx.AsyncClient(timeout=5) as client:
        for name, counter in (("stager", APPLIED), ("stager-2", APPLIED), ("dispatcher", ACCEPTED),
                              ("dispatcher-2", ACCEPTED)):
            value = await metric(client, stack.url(name, "/metrics"), counter)
            shares.append(f"{name} {value or 0:.0f}")
    say(f"  work done by each: {', '.join(shares)} (events applied, emails accepted by the sink)")
    stack.only((), phase="replicas")
    results.set("replicas_2_emails_per_s", found.emails_rate)
    results.set("replicas_2_duplicates", found.duplicates)
    results.rows.append(Row("replicas x2: emails/s, first delivery to last (baseline: pipeline's)",
                            found.emails_rate, results.get("pipeline_emails_per_s"), "/s"))
    results.rows.append(Row("replicas x2: duplicate emails", found.duplicates))
    say(f"  {found.emails_rate or 0:.1f} emails/s, {found.duplicates} duplicates "
        f"(one of each: {ratio(found.emails_rate, results.get('pipeline_emails_per_s')) or 0:.2f}x)")
