"""LISTEN/NOTIFY wake-ups: a notification reaches the listener when its transaction commits, never
when it rolls back, and the listener comes back by itself after its backend is terminated."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from lifecycle.db.notify import Listener, notify
from lifecycle.settings import Settings
from tests.support.waiting import until

pytestmark = pytest.mark.integration
CHANNEL = "lifecycle_test_wakeups"


async def test_a_committed_notification_wakes_the_listener_and_a_rolled_back_one_does_not(infra: Settings) -> None:
    woken: list[float] = []
    stop = asyncio.Event()
    listener = Listener(infra.database_url, CHANNEL, lambda: woken.append(time.monotonic()), stop,
                        "lifecycle-test-listener")
    listening = asyncio.create_task(listener.run())
    engine = create_async_engine(infra.database_url)
    try:
        await asyncio.wait_for(listener.connected.wait(), 30)
        await until(lambda: len(woken) == 1, "the wake-up for what was missed before listening")
        async with engine.connect() as conn:
            transaction = await conn.begin()
            await conn.execute(notify(CHANNEL))
            await transaction.rollback()
            async with conn.begin():
                await conn.execute(text("SELECT 1"))
        async with engine.begin() as conn:
            await conn.execute(notify(CHANNEL))
        async with engine.begin() as conn:
            await conn.execute(notify(CHANNEL))
        # notifications arrive in commit order: once the second is here, a rolled-back one would be too
        await until(lambda: len(woken) >= 3, "the two committed notifications")
        assert len(woken) == 3

        # the backend terminated (as the fault harness does): the listener connects again and wakes once
        async with engine.begin() as conn:
            ended = (await conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'lifecycle-test-listener'"))).scalar()
        assert ended == 1
        await until(lambda: len(woken) >= 4, "the wake-up after reconnecting")
        await asyncio.wait_for(listener.connected.wait(), 30)
        async with engine.begin() as conn:
            await conn.execute(notify(CHANNEL))
        await until(lambda: len(woken) >= 5, "a notification after reconnecting")
        assert len(woken) == 5
    finally:
        stop.set()
        await asyncio.wait_for(listening, 30)
        await engine.dispose()
    assert not listener.connected.is_set()
