"""Run `lifecycle bounces`: the SMTP (or LMTP) receiver of the bounce domain, until SIGTERM.

SIGTERM stops taking connections, lets the reports being recorded finish (their servers get their
250), then closes the Kafka producer and the database pool. A report cut off earlier got no answer:
its server sends it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Final

from lifecycle.clock import make_clock
from lifecycle.db.engine import make_engine
from lifecycle.events import Event
from lifecycle.kafka import ensure_topics, make_renewing_producer, publish_events
from lifecycle.probes import start_probe_server
from lifecycle.runtime import (
    StartupError,
    dependencies_ready,
    retry_until,
    run_service,
    settle_heap,
    stop_on_signals,
    wait_for_clock,
    wait_for_database,
)
from lifecycle.seal import Seal
from lifecycle.settings import Settings
from lifecycle.tokens import SigningKeys
from services.bounces.receiver import MAX_REPORT_BYTES, BounceHandler, SentMessage
from services.bounces.sql import SEND_OF

log = logging.getLogger("lifecycle.bounces")

# How long a stop waits for the reports being recorded (below Kubernetes' grace period).
DRAIN_SECONDS: Final = 20.0


async def serve(settings: Settings, host: str, port: int, lmtp: bool = False) -> None:
    from aiosmtpd.lmtp import LMTP
    from aiosmtpd.smtp import SMTP

    keys = SigningKeys.from_settings(settings)
    engine = make_engine(settings, "bounces", pool_size=2)
    clock = make_clock(settings.clock, engine)
    await wait_for_database(engine)
    await retry_until("Kafka", lambda: ensure_topics(settings))
    producer = make_renewing_producer(settings)
    await retry_until("Kafka producer", producer.start)
    seal = Seal.from_settings(settings)  # the events are validated here: the stager reads them as written

    async def publish(events: list[Event]) -> None:
        await publish_events(producer, settings.events_topic, events, seal)

    async def look_up(send_ids: Sequence[int]) -> Mapping[int, SentMessage]:
        async with engine.connect() as conn:
            rows = (await conn.execute(SEND_OF, {"ids": list(send_ids)})).all()
        return {row.send_id: SentMessage(row.customer_id, row.message_id, row.to_address, row.email)
                for row in rows}

    domain = settings.bounce_domain_name
    handler = BounceHandler(keys, domain, look_up, publish, clock, lmtp=lmtp)
    protocol = LMTP if lmtp else SMTP
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            # the bounce domain as the greeting's name: no DNS lookup per connection
            lambda: protocol(handler, hostname=domain, data_size_limit=MAX_REPORT_BYTES, enable_SMTPUTF8=True),
            host=host, port=port)
    except OSError as exc:
        await producer.stop()
        await engine.dispose()
        raise StartupError(f"cannot listen on {host}:{port}: {exc}") from None

    async def ready() -> bool:
        return await dependencies_ready(engine, producer.client.fetch_all_metadata)

    probes, probes_task = start_probe_server(host, settings.bounces_metrics_port, ready, settings.clock)
    stop = stop_on_signals()
    await wait_for_clock(clock, stop)
    settle_heap()
    log.info("bounces: %s on %s:%d for bounces+...@%s, metrics on port %d", "LMTP" if lmtp else "SMTP", host, port,
             domain, settings.bounces_metrics_port)
    try:
        await stop.wait()
    finally:
        log.info("bounces stopping: no new connections, finishing the reports in hand")
        server.close()
        deadline = time.monotonic() + DRAIN_SECONDS
        while handler.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await producer.stop()
        probes.should_exit = True
        await probes_task
        await engine.dispose()


def run(settings: Settings, host: str | None = None, port: int | None = None, lmtp: bool = False) -> None:
    run_service(serve(settings, host or settings.ingest_host, port or settings.bounces_port, lmtp))
