"""latency_p50_s, latency_p99_s: due time to delivery at a steady, open-loop load of 70% of the measured
dispatcher throughput (dispatcher_emails_per_s), for 60 s.

The runs are made beforehand as in the dispatcher phase (the services' own code) and parked a day
ahead. With the dispatcher running, a clock in this process makes them due at the planned rate,
whatever the dispatcher does (open loop): every 20 ms, the runs the schedule owes by then get
`due_at = clock_timestamp()` in one UPDATE. The due time is thus stamped when the work becomes due;
the dispatcher copies it into `sends.due_at`. Latency is the message's arrival in the sink (its file's
modification time, set before the sink answers 250) minus that due time, both on this machine's clock.
"""

from __future__ import annotations

import asyncio
import math
import time

from sqlalchemy import text

from bench.common import LATENCY_LOAD, LATENCY_MIN_SECONDS, LATENCY_SECONDS, Results, Row, Scale, percentile, say
from bench.dispatcher import seed_due_runs
from bench.stack import BenchStack, deliveries, message_count, reset, scalar, wait_until

TICK = 0.02


async def run(stack: BenchStack, scale: Scale, results: Results, capacity: float) -> None:
    load = LATENCY_LOAD * capacity
    seconds = scale.seconds(LATENCY_SECONDS, LATENCY_MIN_SECONDS)
    count = max(1, math.floor(load * seconds))
    say(f"latency: {load:.1f} sends/s made due (70% of {capacity:.1f} emails/s), open loop, for {seconds:.0f} s "
        f"({count} sends)")
    stack.only((), phase="latency")
    await reset(stack)
    run_ids = await seed_due_runs(stack, "lat", count)
    engine = await stack.database()
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE journey_runs SET due_at = now() + interval '1 day' WHERE status = 'active'"))
    stack.start("dispatcher", phase="latency")
    flipped = 0
    async with engine.connect() as conn:
        started = time.monotonic()
        while flipped < count:
            owed = min(count, math.floor(load * (time.monotonic() - started)) + 1)
            if owed > flipped:
                await conn.execute(text("UPDATE journey_runs SET due_at = clock_timestamp() WHERE run_id = ANY(:ids)"),
                                   {"ids": run_ids[flipped:owed]})
                await conn.commit()
                flipped = owed
            await asyncio.sleep(TICK)
        offered_seconds = time.monotonic() - started

    async def done() -> tuple[bool, str]:
        arrived = message_count(stack.settings)
        return arrived >= count, f"{arrived}/{count} in the sink"

    await wait_until(done, "latency", 600 + seconds)

    async def recorded() -> tuple[bool, str]:
        sent = await scalar(engine, "SELECT count(*) FROM sends WHERE status = 'sent'")
        return sent >= count, f"{sent}/{count} recorded as sent"

    await wait_until(recorded, "latency records", 120)
    stack.stop("dispatcher")
    async with engine.connect() as conn:
        due = {str(row.message_id): row.due_at.timestamp() for row in
               (await conn.execute(text("SELECT message_id, due_at FROM sends"))).all()}
    delays = [d.at - due[d.message_id] for d in deliveries(stack.settings) if d.message_id in due]
    if len(delays) != count:
        raise RuntimeError(f"latency phase: {len(delays)} messages matched their sends, expected {count}")
    p50, p99 = percentile(delays, 0.5), percentile(delays, 0.99)
    results.set("latency_p50_s", p50)
    results.set("latency_p99_s", p99)
    label = f"{load:.1f} sends/s for {offered_seconds:.0f} s"
    results.rows.append(Row(f"due time to delivery, p50 (s) ({label}, open loop)", p50, unit=" s"))
    results.rows.append(Row("due time to delivery, p99 (s)", p99, unit=" s"))
    say(f"  p50 {p50:.3f} s, p99 {p99:.3f} s, max {max(delays):.3f} s over {len(delays)} emails")
