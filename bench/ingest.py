"""ingest_events_per_s, ingest_raw_per_s, ingest_ratio: the ingest API alone (the stager and dispatcher
stopped), batches of 100 from four concurrent clients, against the same events written by a plain
idempotent aiokafka producer (the API's producer settings, four concurrent batches, acks awaited)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.common import INGEST_BATCH, INGEST_CLIENTS, INGEST_EVENTS, Results, Row, Scale, rate, ratio, say
from bench.stack import BenchStack, reset
from bench.workload import batches, mixed_events, parsed
from lifecycle.kafka import make_producer
from lifecycle.scenario import first_plain_key
from lifecycle.settings import Settings


async def post_all(settings: Settings, events: list[dict[str, Any]], clients: int = INGEST_CLIENTS,
                   batch: int = INGEST_BATCH) -> tuple[float, float]:
    """POST `events` in batches from `clients` concurrent workers; (first POST sent, last answer) as
    time.time() readings. Any answer but 202 stops the run."""
    # the bodies written before the clock starts: the client's share of the two cores stays small
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for chunk in batches(events, batch):
        queue.put_nowait(json.dumps({"events": chunk}).encode())
    key = first_plain_key(settings.api_keys, "LIFECYCLE_API_KEYS")
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.ingest_port}", timeout=60, limits=limits,
                                 headers={"Authorization": f"Bearer {key}"}) as client:
        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                response = await client.post("/v1/events", content=body,
                                             headers={"Content-Type": "application/json"})
                if response.status_code != 202:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:200]}")

        started = time.time()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return started, time.time()


async def raw_produce(settings: Settings, messages: list[tuple[bytes, bytes]], topic: str,
                      clients: int = INGEST_CLIENTS, batch: int = INGEST_BATCH) -> float:
    """Seconds to write (key, value) `messages` with one idempotent producer, `clients` batches at a time,
    each batch's acks awaited, as the API does per request."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.topic_partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    producer = make_producer(settings)
    await producer.start()
    queue: asyncio.Queue[list[tuple[bytes, bytes]]] = asyncio.Queue()
    for chunk in batches(messages, batch):
        queue.put_nowait(chunk)

    async def worker() -> None:
        while not queue.empty():
            chunk = queue.get_nowait()
            futures = [await producer.send(topic, value, key=key) for key, value in chunk]
            await asyncio.gather(*futures)

    try:
        # one batch first, not timed: topic metadata and the producer id, as the API has them already
        await asyncio.gather(*[await producer.send(topic, value, key=key) for key, value in messages[:batch]])
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def run(stack: BenchStack, scale: Scale, results: Results) -> None:
    settings = stack.settings
    count = scale.count(INGEST_EVENTS, INGEST_BATCH)
    say(f"ingest: the API alone (stager and dispatcher stopped), {count} events of the stager's mix, "
        f"batches of {INGEST_BATCH}, {INGEST_CLIENTS} clients")
    stack.only(("ingest",), phase="ingest")
    await reset(stack)
    events = mixed_events("ing", count)[:count]
    wire = [(e.customer_id.encode(), e.to_message()) for e in parsed(events)]
    say(f"  raw baseline: one idempotent aiokafka producer, the same {len(wire)} messages "
        f"({sum(len(v) for _, v in wire) // len(wire)} bytes each on average)")
    raw_seconds = await raw_produce(settings, wire, settings.events_topic + ".raw")
    say(f"  POST /v1/events: {count} events (after one batch not timed, as for the producer)")
    await post_all(settings, mixed_events("ing-warm", INGEST_BATCH)[:INGEST_BATCH])
    started, ended = await post_all(settings, events)
    api = rate(count, ended - started)
    raw = rate(len(wire), raw_seconds)
    results.set("ingest_events_per_s", api)
    results.set("ingest_raw_per_s", raw)
    results.set("ingest_ratio", ratio(api, raw))
    results.rows.append(Row(f"ingest API alone, events/s ({count} events, batches of {INGEST_BATCH}, "
                            f"{INGEST_CLIENTS} clients)", api, raw, "/s"))
    say(f"  {api:,.0f} events/s through the API, {raw:,.0f} events/s with a plain producer")
