"""ingest_events_per_s, ingest_raw_per_s, ingest_ratio: the ingest API alone (the stager and dispatcher
stopped), batches of 100 from four concurrent clients, against the same events written by a plain
idempotent aiokafka producer (the API's producer settings, four concurrent batches, acks awaited)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.common import (
    INGEST_BATCH,
    INGEST_CLIENTS,
    INGEST_EVENTS,
    INGEST_ROUNDS,
    Results,
    Row,
    Scale,
    rate,
    ratio,
    say,
)
from bench.stack import BenchStack, reset
from bench.workload import batches, keyed_messages, mixed_events, parsed
from lifecycle.kafka import make_producer
from lifecycle.scenario import first_plain_key
from lifecycle.settings import Settings


async def post_all(settings: Settings, events: list[dict[str, Any]], clients: int = INGEST_CLIENTS,
                   batch: int = INGEST_BATCH) -> tuple[float, float]:
    """POST `events` in batches from `clients` concurrent workers; (first POST sent, last answer) as
    time.time() readings. Any answer but 202 stops the run."""
    # Each request written before the clock starts, and sent over a kept-alive connection of its
    # own as bytes: the client's share of the two cores stays small (httpx took 30% of a core, which
    # the API then did not have).
    key = first_plain_key(settings.api_keys, "LIFECYCLE_API_KEYS")
    head = (f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{settings.ingest_port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n")
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for chunk in batches(events, batch):
        body = json.dumps({"events": chunk}).encode()
        queue.put_nowait(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    connections = [await asyncio.open_connection("127.0.0.1", settings.ingest_port) for _ in range(clients)]

    async def worker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while not queue.empty():
            writer.write(queue.get_nowait())
            status, answer = await _answer(reader)
            if status != 202:
                raise RuntimeError(f"ingest answered {status}: {answer[:200]!r}")

    try:
        started = time.time()
        await asyncio.wait_for(asyncio.gather(*(worker(*pair) for pair in connections)), timeout=600)
        return started, time.time()
    finally:
        for _, writer in connections:
            writer.close()


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer with a Content-Length (as uvicorn gives every JSON answer): status, body."""
    status_line = await reader.readline()
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise RuntimeError(f"ingest answered something that is not HTTP: {status_line[:200]!r}")
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise RuntimeError(f"ingest answered {int(parts[1])} without a Content-Length")
    return int(parts[1]), await reader.readexactly(length)


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
        f"batches of {INGEST_BATCH}, {INGEST_CLIENTS} clients, {INGEST_ROUNDS} rounds of the producer then the API")
    stack.only(("ingest",), phase="ingest")
    await reset(stack)
    # Kafka's JVM compiles its hot paths over the first few thousand records: the producer's first
    # 20,000 ran at about half the speed of the next ones, so the first round would flatter the API
    say(f"  warm-up, not timed: {count} messages by the producer, and one batch through the API")
    warm = keyed_messages(parsed(mixed_events("ing-warm", count)[:count]))
    await raw_produce(settings, warm, settings.events_topic + ".raw")
    await post_all(settings, mixed_events("ing-warm", INGEST_BATCH)[:INGEST_BATCH])
    # Each is a few seconds long, and this machine's speed moves from one second to the next: the two
    # take turns, and each figure is the median of its rounds.
    raws: list[float] = []
    apis: list[float] = []
    for round_number in range(1, INGEST_ROUNDS + 1):
        events = mixed_events(f"ing{round_number}", count)[:count]
        wire = keyed_messages(parsed(events))
        raws.append(rate(len(wire), await raw_produce(settings, wire, settings.events_topic + ".raw")))
        started, ended = await post_all(settings, events)
        apis.append(rate(count, ended - started))
        say(f"  round {round_number}: {apis[-1]:,.0f} events/s through the API, {raws[-1]:,.0f} events/s with a "
            f"plain producer (the same {len(wire)} messages, {sum(len(v) for _, v in wire) // len(wire)} bytes each "
            "on average)")
    api, raw = statistics.median(apis), statistics.median(raws)
    results.set("ingest_events_per_s", api)
    results.set("ingest_raw_per_s", raw)
    results.set("ingest_ratio", ratio(api, raw))
    results.rows.append(Row(f"ingest API alone, events/s ({count} events, batches of {INGEST_BATCH}, "
                            f"{INGEST_CLIENTS} clients, median of {INGEST_ROUNDS} rounds)", api, raw, "/s"))
    say(f"  {api:,.0f} events/s through the API, {raw:,.0f} events/s with a plain producer (medians)")
