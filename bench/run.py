"""Throughput and lateness of the whole pipeline on a private local stack (system clock).

    python bench/run.py [--customers 2000] [--views-per-customer 9]
    python bench/run.py --dkim-only      # the DKIM figure alone, in-process, no stack

Prints, against raw baselines measured in the same run (a plain aiokafka
producer, a plain aiosmtplib loop):
- events/s through POST /v1/events (batches of 100),
- events/s applied by the stager,
- emails/s delivered by the dispatcher to the SMTP sink,
- p50/p99 delay between a step's due time and its delivery,
- ms to DKIM-sign one welcome email with an RSA 2048 key (CPU only, measured before
  the stack starts), against dkimpy signing the same email the same way (its
  pure-Python RSA was our signer before): there the ratio is lower-is-better.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import dkim  # type: ignore[import-untyped]
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from lifecycle.dkim import SIGNED_HEADERS, DkimSigner
from lifecycle.settings import Settings
from lifecycle.stack import down, private_settings, up
from lifecycle.stack.smtp_sink import clear_messages, mail_dir

BATCH = 100


def bench_settings(run_dir: Path) -> Settings:
    return private_settings(run_dir, 200, clock="system")


def make_events(customers: int, views: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    events: list[dict[str, Any]] = []
    for c in range(customers):
        cid = f"bench-{c}"
        events.append({"type": "customer_signed_up", "customer_id": cid, "occurred_at": now,
                       "traits": {"email": f"{cid}@example.com", "first_name": "Bench", "consent": "opted_in"}})
        events += [{"type": "product_viewed", "customer_id": cid, "occurred_at": now,
                    "properties": {"product_id": f"p{v}", "name": "Thing", "price": 10}} for v in range(views)]
    return events


def _best_ms(call: Callable[[], object], count: int, repeats: int = 5) -> float:
    """ms per call, the best of `repeats` rounds of `count` calls (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1000


def dkim_sign_ms(work_dir: Path) -> tuple[float, float]:
    """ms to DKIM-sign the welcome email as `lifecycle templates preview` composes it (about 25 KB),
    RSA 2048, relaxed/relaxed, the same headers: ours and dkimpy's."""
    out = work_dir / "preview"
    subprocess.run([sys.executable, "-m", "lifecycle.cli", "templates", "preview", "prospect_welcome", "1",
                    "--out", str(out)], check=True, capture_output=True)
    message = next(out.glob("*.eml")).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    signer = DkimSigner("bench", "shop.example", pem)
    parsed = email.message_from_bytes(message)
    headers = [name.encode() for name in SIGNED_HEADERS if name in parsed]
    ours = _best_ms(lambda: signer.sign(message), 100)
    theirs = _best_ms(lambda: dkim.sign(message, b"bench", b"shop.example", pem, include_headers=headers,
                                        canonicalize=(b"relaxed", b"relaxed")), 10)
    return ours, theirs


def print_dkim_row(figure: tuple[float, float]) -> None:
    ours, theirs = figure
    print(f"{'DKIM signing, ms per email (RSA 2048; dkimpy)':<48}{ours:>12.2f}{theirs:>16.2f}{ours / theirs:>8.2f}")


def print_table_head() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'figure':<48}{'value':>12}{'raw baseline':>16}{'ratio':>8}")


async def raw_kafka(settings: Settings, count: int) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.events_topic + ".raw", settings.topic_partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    payload = b'{"schema_version":1,"event":{"type":"product_viewed","customer_id":"raw"}}' + b" " * 200
    try:
        started = time.perf_counter()
        for start in range(0, count, BATCH):
            futures = [await producer.send(settings.events_topic + ".raw", payload, key=str(i).encode())
                       for i in range(start, min(count, start + BATCH))]
            await asyncio.gather(*futures)
        return count / (time.perf_counter() - started)
    finally:
        await producer.stop()


async def raw_smtp(settings: Settings, count: int) -> float:
    smtp = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port)
    await smtp.connect()
    started = time.perf_counter()
    for i in range(count):
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = settings.mail_from, f"raw{i}@example.com", "raw"
        message.set_content("raw baseline " * 20)
        await smtp.send_message(message)
    elapsed = time.perf_counter() - started
    await smtp.quit()
    clear_messages(mail_dir(settings))
    return count / elapsed


async def post_all(settings: Settings, events: list[dict[str, Any]], concurrency: int = 4) -> float:
    batches = [events[i:i + BATCH] for i in range(0, len(events), BATCH)]
    queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
    for batch in batches:
        queue.put_nowait(batch)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.ingest_port}", timeout=60,
                                 headers={"Authorization": "Bearer dev-key"}) as client:
        async def worker() -> None:
            while not queue.empty():
                batch = queue.get_nowait()
                response = await client.post("/v1/events", json={"events": batch})
                if response.status_code != 202:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


async def wait_count(engine: AsyncEngine, sql: str, target: int, label: str, timeout: float = 900) -> float:
    deadline = time.perf_counter() + timeout
    last_print = 0.0
    while True:
        async with engine.connect() as conn:
            value = int((await conn.execute(text(sql))).scalar() or 0)
        if value >= target:
            return time.perf_counter()
        if time.perf_counter() - last_print > 5:
            print(f"  {label}: {value}/{target}", flush=True)
            last_print = time.perf_counter()
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{label}: only {value}/{target} after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def measure(settings: Settings, customers: int, views: int, dkim_figure: tuple[float, float]) -> None:
    events = make_events(customers, views)
    for event in events:
        event["event_id"] = str(uuid.uuid4())
    engine = create_async_engine(settings.database_url)
    try:
        print("baseline: plain aiokafka producer, plain aiosmtplib loop", flush=True)
        kafka_raw = await raw_kafka(settings, len(events))
        smtp_raw = await raw_smtp(settings, min(customers, 2000))
        print(f"posting {len(events)} events ({customers} sign-ups) in batches of {BATCH}", flush=True)
        t0 = time.perf_counter()
        post_seconds = await post_all(settings, events)
        applied_at = await wait_count(engine, "SELECT count(*) FROM processed_events", len(events), "stager")
        await wait_count(engine, "SELECT count(*) FROM sends WHERE status = 'sent'", customers,
                                   "dispatcher")
        async with engine.connect() as conn:
            dues = {row.message_id: row.due_at for row in
                    (await conn.execute(text("SELECT message_id, due_at FROM sends"))).all()}
    finally:
        await engine.dispose()
    delays: list[float] = []
    delivered_at: list[float] = []
    for path in sorted(mail_dir(settings).glob("*.eml")):
        message = read_messages_one(path)
        due = dues.get(str(message["Message-ID"]))
        if due is not None:
            delivered_at.append(path.stat().st_mtime)
            delays.append(delivered_at[-1] - due.timestamp())
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    ingest_rate = len(events) / post_seconds
    stager_rate = len(events) / (applied_at - t0)
    # from the first delivery to the last: the dispatcher's own pace once work reaches it
    email_rate = len(delivered_at) / max(max(delivered_at) - min(delivered_at), 0.001)
    print()
    print_table_head()
    print(f"{'POST /v1/events, events/s (batches of 100)':<48}{ingest_rate:>12.0f}{kafka_raw:>16.0f}"
          f"{ingest_rate / kafka_raw:>8.2f}")
    print(f"{'stager, events applied/s (from first POST)':<48}{stager_rate:>12.0f}{'':>16}{'':>8}")
    print(f"{'dispatcher, emails delivered/s':<48}{email_rate:>12.1f}{smtp_raw:>16.0f}"
          f"{email_rate / smtp_raw:>8.2f}")
    print(f"{'delay due -> delivered, p50 (s)':<48}{p50:>12.2f}")
    print(f"{'delay due -> delivered, p99 (s)':<48}{p99:>12.2f}")
    print_dkim_row(dkim_figure)


def read_messages_one(path: Path) -> EmailMessage:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=2000, help="sign-ups, each one welcome email")
    parser.add_argument("--views-per-customer", type=int, default=9, help="product views per customer")
    parser.add_argument("--keep", action="store_true", help="leave the bench stack running")
    parser.add_argument("--dkim-only", action="store_true",
                        help="only the DKIM signing figure: in-process, CPU only, no stack started")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="lifecycle-bench-"))
    os.chmod(run_dir, 0o755)
    if args.dkim_only:
        try:
            figure = dkim_sign_ms(run_dir)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
        print_table_head()
        print_dkim_row(figure)
        return
    settings = bench_settings(run_dir)
    try:
        print("DKIM signing, in-process before the stack starts", flush=True)
        figure = dkim_sign_ms(run_dir)
        up(settings)
        asyncio.run(measure(settings, args.customers, args.views_per_customer, figure))
    finally:
        if not args.keep:
            down(settings)
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
