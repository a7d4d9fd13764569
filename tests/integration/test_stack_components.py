"""The local stack's components, exercised through real clients (no mocks)."""

from __future__ import annotations

import asyncio
import uuid
from email.message import EmailMessage

import aiosmtplib
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy.engine import make_url

from devstack import status
from devstack.postgres import reset_database
from devstack.smtp_sink import clear_messages, mail_dir, read_messages, wait_for_messages
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration


async def _connect(settings: Settings) -> asyncpg.Connection:
    url = make_url(settings.database_url)
    return await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=url.database, timeout=10)


@pytest.mark.asyncio
async def test_kafka_idempotent_producer_roundtrip(infra: Settings) -> None:
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=2, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, enable_idempotence=True, acks="all")
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                topic, b'{"hello": "world"}', key=b"customer-1", headers=[("kind", b"test")]
            )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.kafka_bootstrap,
            group_id=f"{topic}-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            record = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
    finally:
        try:
            await admin.delete_topics([topic])
        finally:
            await admin.close()
    assert (record.partition, record.offset) == (meta.partition, meta.offset)
    assert record.key == b"customer-1"
    assert record.value == b'{"hello": "world"}'
    assert list(record.headers) == [("kind", b"test")]


@pytest.mark.asyncio
async def test_kafka_rejects_unknown_topic_auto_creation(infra: Settings) -> None:
    # auto.create.topics.enable=false: topics must be created on purpose.
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.kafka_bootstrap)
    await admin.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=infra.kafka_bootstrap, request_timeout_ms=1000)
        await producer.start()
        try:
            with pytest.raises(Exception):  # noqa: B017 - aiokafka raises KafkaTimeoutError here
                await producer.send_and_wait(f"never-created-{uuid.uuid4().hex[:8]}", b"x")
        finally:
            await producer.stop()
        assert not [t for t in await admin.list_topics() if t.startswith("never-created-")]
    finally:
        await admin.close()


@pytest.mark.asyncio
async def test_postgres_accepts_asyncpg_connection(infra: Settings) -> None:
    conn = await _connect(infra)
    try:
        row = await conn.fetchrow("SELECT current_user AS who, current_database() AS db, 41 + 1 AS answer")
        assert row is not None
        assert (row["who"], row["db"], row["answer"]) == ("lifecycle", "lifecycle", 42)
        encoding = await conn.fetchval("SHOW server_encoding")
        assert encoding == "UTF8"
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_reset_database_drops_everything(infra: Settings) -> None:
    # a scratch database: the pipeline's own must survive for the other tests
    infra = infra.model_copy(update={"database_url": infra.database_url.rsplit("/", 1)[0] + "/lifecycle_scratch"})
    reset_database(infra)
    conn = await _connect(infra)
    try:
        await conn.execute("CREATE TABLE leftover (id int)")
    finally:
        await conn.close()
    idle = await _connect(infra)  # an open connection must not block the reset
    try:
        reset_database(infra)
    finally:
        await idle.close()
    conn = await _connect(infra)
    try:
        assert await conn.fetchval("SELECT to_regclass('public.leftover')") is None
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_smtp_sink_stores_messages_with_envelope(infra: Settings) -> None:
    directory = mail_dir(infra)
    clear_messages(directory)
    first = EmailMessage()
    first["From"] = "Shop <hello@shop.example>"
    first["To"] = "ada@example.com"
    first["Subject"] = "Welcome, Zoë, glad you're here"
    first.set_content("Hello Ada,\n\n.a line starting with a dot\nBye\n")
    second = EmailMessage()
    second["From"] = "Shop <hello@shop.example>"
    second["To"] = "bob@example.com"
    second["Subject"] = "Second"
    second.set_content("Hi Bob\n")

    # Two messages over one connection, one of them to two envelope recipients.
    async with aiosmtplib.SMTP(hostname=infra.smtp_host, port=infra.smtp_port, timeout=10) as smtp:
        await smtp.send_message(first, recipients=["ada@example.com", "audit@shop.example"])
        await smtp.send_message(second, sender="bounces@shop.example")

    messages = await wait_for_messages(directory, 2)
    assert len(messages) == 2
    got_first, got_second = messages
    assert got_first["X-Sink-Rcpt-To"] == "ada@example.com, audit@shop.example"
    assert got_first["X-Sink-Mail-From"] == "hello@shop.example"
    assert got_first["Subject"] == "Welcome, Zoë, glad you're here"
    assert got_first["To"] == "ada@example.com"
    body = got_first.get_body()
    assert body is not None
    assert body.get_content() == "Hello Ada,\n\n.a line starting with a dot\nBye\n"
    assert got_second["X-Sink-Rcpt-To"] == "bob@example.com"
    assert got_second["X-Sink-Mail-From"] == "bounces@shop.example"
    assert got_second["Subject"] == "Second"

    clear_messages(directory)
    assert read_messages(directory) == []


@pytest.mark.asyncio
async def test_smtp_sink_keeps_raw_bytes(infra: Settings) -> None:
    directory = mail_dir(infra)
    clear_messages(directory)
    raw = (
        b"From: a@example.com\r\nTo: b@example.com\r\nSubject: raw\r\n"
        b"X-Custom: kept   as-is\r\n\r\n..dot-stuffed line\r\nlast line\r\n"
    )
    async with aiosmtplib.SMTP(hostname=infra.smtp_host, port=infra.smtp_port, timeout=10) as smtp:
        await smtp.sendmail("a@example.com", ["b@example.com"], raw)
    await wait_for_messages(directory, 1)
    (path,) = sorted(directory.glob("*.eml"))
    stored = path.read_bytes()
    prefix = b"X-Sink-Rcpt-To: b@example.com\r\nX-Sink-Mail-From: a@example.com\r\n"
    assert stored.startswith(prefix)
    assert stored[len(prefix) :] == raw
    clear_messages(directory)


def test_status_reports_infrastructure_running(infra: Settings) -> None:
    rows = {name: (running, detail) for name, running, detail in status(infra)}
    for name in ("kafka", "postgres", "smtp_sink"):
        assert rows[name][0], f"{name}: {rows[name][1]}"
    # the services are up only when a pipeline test ran first; either way the row says so
    for name in ("ingest", "stager", "dispatcher"):
        running, detail = rows[name]
        assert (running and detail.endswith("healthy")) or (not running and detail == "stopped"), detail


def test_kafka_broker_log_is_readable(infra: Settings) -> None:
    log = infra.run_dir / "logs" / "kafka.log"
    text = log.read_text()
    assert "Kafka Server started" in text or "started (kafka.server" in text, text[-2000:]
