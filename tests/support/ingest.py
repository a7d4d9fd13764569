"""Test doubles for the ingest API's unit tests: a Kafka producer that records, and a client that runs the lifespan.

Only unit tests of HTTP handling use them; everything that touches Kafka for real is an integration test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from prometheus_client import generate_latest

from lifecycle.events import Event


class FakeClient:
    def __init__(self) -> None:
        self.reachable = True

    async def fetch_all_metadata(self) -> object:
        if not self.reachable:
            raise KafkaConnectionError("no broker")
        return object()


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.started = False
        self.stopped = False
        self.start_failures = 0
        self.send_error: BaseException | None = None  # raised by send itself
        self.ack_error: BaseException | None = None  # delivered through the future
        self.hang = False  # the future never resolves
        self.client = FakeClient()
        self.headers: list[list[tuple[str, bytes]]] = []  # each sent message's, in order
        self.tombstones: list[tuple[str, bytes]] = []  # (topic, key) of each message without a value

    async def start(self) -> None:
        if self.start_failures:
            self.start_failures -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 19092)]")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[None]:
        if self.send_error is not None:
            raise self.send_error
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # resolved once the caller has it, as aiokafka resolves a delivery when the broker answers
        if self.ack_error is not None:
            loop.call_soon(future.set_exception, self.ack_error)
        elif not self.hang and value is None:
            assert key is not None
            self.tombstones.append((topic, key))
            loop.call_soon(future.set_result, None)
        elif not self.hang:
            assert value is not None and key is not None
            self.sent.append((topic, key, value))
            self.headers.append(headers or [])
            loop.call_soon(future.set_result, None)
        return future

    def events(self) -> list[Event]:
        return [Event.from_message(value) for _, _, value in self.sent]


@asynccontextmanager
async def lifespan_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    # ASGITransport does not run the lifespan: run it by hand around the client.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def metrics_text() -> str:
    """What the ingest's metrics port serves (the default registry): the public app has no /metrics."""
    return generate_latest().decode()
