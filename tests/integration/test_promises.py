"""Each way the review broke a promise, on the real components: opt-outs are fences, leases are fenced,
journey edits and poison messages never stop the pipeline, event ids are scoped, the cap counts the batch.

The store-level tests use a scratch database of their own (no service runs on it); the others go
through the whole pipeline.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from devstack import processes, service_env, start_services
from devstack.postgres import reset_database
from devstack.smtp_sink import mail_dir, read_messages
from lifecycle.clock import ManualClock, set_virtual_time
from lifecycle.core.triggers import Trigger, TriggerType
from lifecycle.db.notify import OUTBOX_CHANNEL, Listener
from lifecycle.db.retention import (
    PRUNE_MESSAGE_BODIES,
    PRUNE_PROCESSED_EVENTS,
    PRUNE_PROCESSED_TRIGGERS,
    prune,
)
from lifecycle.events import Event, parse_event
from lifecycle.journey_catalog import JourneyCatalog, apply, definition_text, register_files
from lifecycle.journey_files import load_journey_files
from lifecycle.privacy import erase_rows
from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.dispatcher.rendering import Renderer
from services.dispatcher.worker import RECIPIENTS_SQL, DispatcherStore
from services.stager.worker import StagerStore, partition_of, rule_config
from tests.support.waiting import until

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
HERE = Path(__file__)


# --- a scratch database, migrated, with no service on it ------------------------------------------


@pytest.fixture(scope="module")
async def scratch(infra: Settings) -> AsyncIterator[Settings]:
    settings = infra.model_copy(update={
        "database_url": infra.database_url.rsplit("/", 1)[0] + "/lifecycle_promises"})
    reset_database(settings)
    # in a process of its own, as the stack migrates (Alembic runs its own event loop)
    migrated = subprocess.run([sys.executable, "-m", "lifecycle.cli", "migrate"], env=service_env(settings),
                              capture_output=True, text=True, check=False, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    yield settings


@pytest.fixture
async def engine(scratch: Settings) -> AsyncIterator[AsyncEngine]:
    db = create_async_engine(scratch.database_url)
    async with db.begin() as conn:
        tables = (await conn.execute(text(
            "SELECT string_agg(quote_ident(tablename), ', ') FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename NOT IN ('alembic_version', 'privacy_salt')"))).scalar()  # what the migrations set
        await conn.execute(text(f"TRUNCATE {tables}"))
    await register_files(db, load_journey_files(None, TEMPLATES, render_templates=False))
    yield db
    await db.dispose()


TEMPLATES = Templates(None)


def _event(customer: str, kind: str, at: datetime, **fields: Any) -> Event:
    body = {"event_id": f"{kind}-{customer}-{at.isoformat()}", "type": kind, "customer_id": customer,
            "occurred_at": at.isoformat(), **fields}
    return parse_event(body, at, lambda: "unused")


async def _play(engine: AsyncEngine, settings: Settings, clock: ManualClock, events: list[Event],
                store: DispatcherStore) -> None:
    """The stager's and the relay's part by hand: apply the events, hand the outbox to the dispatcher."""
    await StagerStore(engine, clock, rule_config(settings)).apply_events(events)
    async with engine.begin() as conn:
        rows = (await conn.execute(text("SELECT id, payload FROM outbox ORDER BY id"))).all()
        await conn.execute(text("DELETE FROM outbox"))
    await store.handle_triggers([Trigger.from_json(row.payload) for row in rows])


def _store(settings: Settings, engine: AsyncEngine, clock: ManualClock) -> DispatcherStore:
    return DispatcherStore(settings, engine, clock, JourneyCatalog(TEMPLATES),
                           Renderer(settings, workers=0, templates=TEMPLATES))


async def _one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).one()


# --- fenced leases -------------------------------------------------------------------------------


async def test_stored_messages_are_compressed_with_lz4(engine: AsyncEngine) -> None:
    """Migration 0006: a send's message is compressed with lz4 (a fourth of pglz's CPU) on a server built with it."""
    async with engine.connect() as conn:
        available = (await conn.execute(text(
            "SELECT count(*) FROM pg_settings WHERE name = 'default_toast_compression'"
            " AND 'lz4' = ANY(enumvals)"))).scalar()
        method = (await conn.execute(text(
            "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'sends'::regclass AND attname = 'message'"
        ))).scalar()
    assert available == 1  # Debian's server is built with lz4: the migration must have used it
    assert method == "l"


async def test_a_stale_dispatcher_never_rearms_or_resends_a_send_another_took_over(
        scratch: Settings, engine: AsyncEngine) -> None:
    clock = ManualClock(START)
    first, second = _store(scratch, engine, clock), _store(scratch, engine, clock)
    await _play(engine, scratch, clock, [_event("c-lease", "customer_signed_up", START, traits={
        "email": "lease@example.com", "consent": "opted_in"})], first)
    [mine] = await first.claim_due_steps(10)
    # the first dispatcher stalls past its lease; the second takes the send over
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE sends SET lease_until = now() - interval '1 second'"))
    [theirs] = await second.reclaim_stale_sends(10)
    assert theirs.send_id == mine.send_id and theirs.lease_token != mine.lease_token
    # whatever the stale one does now changes nothing and sends nothing
    assert await first.recheck([mine]) == ([], [])
    assert await first.mark_retry(mine, "smtp 451") is None
    await first.postpone_sends([(mine, 30.0)])
    assert await first.mark_sent(mine) is False
    assert await first.mark_failed(mine, "x") is False
    row = await _one(engine, "SELECT status, attempts, next_attempt_at, lease_token::text AS token FROM sends")
    assert (row.status, row.attempts, row.next_attempt_at, row.token) == ("sending", 0, None, theirs.lease_token)
    assert await second.mark_sent(theirs) is True
    row = await _one(engine, "SELECT status, attempts FROM sends")
    assert (row.status, row.attempts) == ("sent", 1)


# --- journey edits never crash-loop ----------------------------------------------------------------


WELCOME_WITHOUT_STEP_2 = {
    "name": "prospect_welcome", "category": "offers",
    "entry": {"trigger": "consent_changed", "where": {"to": "opted_in", "orders_count": 0}},
    "exit": [{"trigger": "order_placed"}],
    "steps": [{"send": {"template": "prospect_welcome_1"}}, {"wait": "3d"},
              {"send": {"template": "prospect_welcome_3"}}],
}


async def test_an_edit_that_removes_a_step_ends_the_runs_on_it_with_a_reason(
        scratch: Settings, engine: AsyncEngine) -> None:
    clock = ManualClock(START)
    store = _store(scratch, engine, clock)
    for customer in ("c-edit-1", "c-edit-2"):
        await _play(engine, scratch, clock, [_event(customer, "customer_signed_up", START, traits={
            "email": f"{customer}@example.com", "consent": "opted_in"})], store)
    assert len(await store.claim_due_steps(10)) == 2  # the first email of each; both runs wait for step 2
    keep = await apply(engine, definition_text(WELCOME_WITHOUT_STEP_2), TEMPLATES, "test", "keep")
    assert keep.created and keep.runs_migrated == keep.runs_ended == 0
    # runs in flight finish on their version: step 2 goes out a day later as it always would
    clock.set(START + timedelta(days=1))
    assert [o.step for o in await store.claim_due_steps(10)] == [2, 2]
    # a run started now takes the new version; moving it to a version without its step ends it
    await _play(engine, scratch, clock, [_event("c-edit-3", "customer_signed_up", clock.current, traits={
        "email": "c-edit-3@example.com", "consent": "opted_in"})], store)
    await store.claim_due_steps(10)
    again = dict(WELCOME_WITHOUT_STEP_2, steps=[{"send": {"template": "prospect_welcome_1"}}])
    moved = await apply(engine, definition_text(again), TEMPLATES, "test", "migrate")
    assert moved.runs_ended == 3  # every run waiting for a step this version does not have
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT customer_id, status, exit_reason FROM journey_runs WHERE journey = 'prospect_welcome'"
            " ORDER BY customer_id"))).all()
    assert [(r.status, r.exit_reason) for r in rows] == [
        ("exited", "step_removed:prospect_welcome_3"), ("exited", "step_removed:prospect_welcome_3"),
        ("exited", "step_removed:prospect_welcome_3")]


async def test_a_run_that_cannot_be_processed_fails_alone_and_the_batch_goes_on(
        scratch: Settings, engine: AsyncEngine) -> None:
    clock = ManualClock(START)
    store = _store(scratch, engine, clock)
    for customer in ("c-bad-1", "c-bad-2", "c-bad-3"):
        await _play(engine, scratch, clock, [_event(customer, "customer_signed_up", START, traits={
            "email": f"{customer}@example.com", "consent": "opted_in"})], store)
    async with engine.begin() as conn:
        # a version that no longer parses (a template removed since), and a run from before versions
        # whose position now points at a wait step: both used to roll the whole claim back, for ever
        version = (await conn.execute(text(
            "INSERT INTO journey_versions (journey, version, source, origin, digest, definition, created_at)"
            " VALUES ('ghost', 1, 'api', 'test', 'x', 'name: [unclosed', now()) RETURNING version_id"
        ))).scalar()
        await conn.execute(text("UPDATE journey_runs SET version_id = :v WHERE customer_id = 'c-bad-1'"),
                           {"v": version})
        await conn.execute(text("UPDATE journey_runs SET version_id = NULL, step_id = NULL, step_index = 1"
                                " WHERE customer_id = 'c-bad-2'"))
    sent = await store.claim_due_steps(10)
    assert [o.customer_id for o in sent] == ["c-bad-3"]
    async with engine.connect() as conn:
        rows: dict[str, str] = dict((await conn.execute(text(
            "SELECT customer_id, status || ':' || exit_reason FROM journey_runs WHERE journey = 'prospect_welcome'"
            " AND customer_id IN ('c-bad-1', 'c-bad-2')"))).all())
    assert rows == {"c-bad-1": "failed:version_unusable", "c-bad-2": "exited:step_removed:1"}


async def test_a_run_whose_decision_raises_is_decided_alone_and_nothing_is_counted_twice(
        scratch: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    clock = ManualClock(START)
    store = _store(scratch, engine, clock)
    customers = ["c-plan-ok", "c-plan-bug", "c-plan-out"]
    for customer in customers:
        await _play(engine, scratch, clock, [_event(customer, "customer_signed_up", START, traits={
            "email": f"{customer}@example.com", "consent": "opted_in"})], store)
    async with engine.begin() as conn:
        # opted out since its run started: its step is skipped, and that skip is counted once
        await conn.execute(text("UPDATE customers SET consent = 'opted_out' WHERE customer_id = 'c-plan-out'"))

    def skipped() -> float:
        return sum(sample.value for metric in REGISTRY.collect() if metric.name == "lifecycle_dispatcher_sends"
                   for sample in metric.samples if sample.name.endswith("_total")
                   and sample.labels.get("result", "").startswith("skipped"))

    extras = DispatcherStore._extras
    tried: list[str] = []

    async def a_bug_for_one(self: DispatcherStore, conn: Any, journey: Any, run: Any, step: Any, customer_id: str,
                            *args: Any) -> dict[str, Any]:
        tried.append(customer_id)
        if customer_id == "c-plan-bug":
            raise ValueError("a bug this customer meets")
        return await extras(self, conn, journey, run, step, customer_id, *args)

    monkeypatch.setattr(DispatcherStore, "_extras", a_bug_for_one)
    before = skipped()
    sent = await store.claim_due_steps(10)
    assert [o.customer_id for o in sent] == ["c-plan-ok"]
    assert skipped() - before == 1
    assert tried.count("c-plan-bug") == 2  # together, then alone
    async with engine.connect() as conn:
        rows: dict[str, str] = dict((await conn.execute(text(
            "SELECT r.customer_id, r.status || ':' || coalesce(r.exit_reason, '') FROM journey_runs r"
            " WHERE r.customer_id = ANY(:c)"), {"c": customers})).all())
        sends = (await conn.execute(text("SELECT customer_id, status FROM sends WHERE customer_id = ANY(:c)"
                                         " ORDER BY customer_id"), {"c": customers})).all()
    assert rows["c-plan-bug"] == "failed:error: ValueError: a bug this customer meets"
    assert [tuple(s) for s in sends] == [("c-plan-ok", "sending"), ("c-plan-out", "skipped")]


async def test_a_claim_whose_batched_write_fails_is_written_run_by_run(
        scratch: Settings, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(START)
    store = _store(scratch, engine, clock)
    customers = [f"c-batch-{n}" for n in range(3)]
    for customer in customers:
        await _play(engine, scratch, clock, [_event(customer, "customer_signed_up", START, traits={
            "email": f"{customer}@example.com", "consent": "opted_in"})], store)
    written: list[int] = []
    move_on = DispatcherStore._move_on

    async def only_one_at_a_time(self: DispatcherStore, conn: Any, runs: list[Any], now: datetime) -> None:
        written.append(len(runs))
        if len(runs) > 1:
            raise ValueError("a bug that only batches meet")
        await move_on(self, conn, runs, now)

    monkeypatch.setattr(DispatcherStore, "_move_on", only_one_at_a_time)
    sent = await store.claim_due_steps(10)
    assert sorted(o.customer_id for o in sent) == customers and written == [3, 1, 1, 1]
    async with engine.connect() as conn:
        rows = (await conn.execute(text(
            "SELECT s.status, r.status AS run_status, r.step_index FROM sends s JOIN journey_runs r USING (run_id)"
            " WHERE s.customer_id = ANY(:c)"), {"c": customers})).all()
    assert sorted(tuple(row) for row in rows) == [("sending", "active", 2)] * 3  # one send each, never two


class _Broker:
    """A producer that acknowledges a relay's messages only after a look at the database meanwhile."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.published: list[str] = []
        self.open_transactions: list[int] = []
        self.waiting: list[asyncio.Future[None]] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.published.append(key.decode())
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(acknowledged)
        if len(self.waiting) == 1:
            asyncio.get_running_loop().create_task(self._acknowledge())
        return acknowledged

    async def _acknowledge(self) -> None:
        await asyncio.sleep(0.1)  # the relay is waiting for its acknowledgements by now
        async with self.engine.connect() as conn:
            self.open_transactions.append((await conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"))).scalar_one())
        waiting, self.waiting = self.waiting, []
        for future in waiting:
            future.set_result(None)


async def test_each_stager_relays_the_triggers_of_its_partitions_holding_no_transaction(
        scratch: Settings, engine: AsyncEngine) -> None:
    stager = StagerStore(engine, ManualClock(START), rule_config(scratch), partitions=4)
    customers = [f"c-relay-{n}" for n in range(24)]
    await stager.apply_events([_event(c, "customer_signed_up", START, traits={
        "email": f"{c}@example.com", "consent": "opted_in"}) for c in customers])
    async with engine.begin() as conn:
        stored: dict[str, int | None] = dict(
            (await conn.execute(text("SELECT DISTINCT customer_id, partition FROM outbox"))).all())
        # a row from before partitions were recorded: any relay takes it
        await conn.execute(text("INSERT INTO outbox (customer_id, payload, created_at) VALUES"
                                " ('c-old', '{\"trigger_id\": \"old\"}', now())"))
    assert stored == {c: partition_of(c, 4) for c in customers}
    assert set(stored.values()) == {0, 1, 2, 3}
    first, second = _Broker(engine), _Broker(engine)
    assert await stager.relay_outbox(first, "triggers", 1000, [0, 1]) > 0
    assert set(first.published) == {c for c in customers if stored[c] in (0, 1)} | {"c-old"}
    assert await stager.relay_outbox(second, "triggers", 1000, [2, 3]) > 0
    assert set(second.published) == {c for c in customers if stored[c] in (2, 3)}
    assert await stager.relay_outbox(second, "triggers", 1000, [0, 1, 2, 3]) == 0  # all published, deleted
    assert first.open_transactions and set(first.open_transactions + second.open_transactions) == {0}
    # in each partition, the order the rows were written in
    for broker, partitions in ((first, (0, 1)), (second, (2, 3))):
        for partition in partitions:
            mine = list(dict.fromkeys(c for c in broker.published if stored.get(c) == partition))
            assert mine == [c for c in customers if stored[c] == partition]


async def test_a_time_driven_change_with_triggers_wakes_every_relay_at_its_commit(
        scratch: Settings, engine: AsyncEngine) -> None:
    # its customer's partition may be another stager's: that relay must not wait for its next look
    clock = ManualClock(START)
    stager = StagerStore(engine, clock, rule_config(scratch), partitions=4)
    await stager.apply_events([
        _event("c-wake", "customer_signed_up", START, traits={"email": "wake@example.com", "consent": "opted_in"}),
        _event("c-wake", "cart_updated", START, properties={
            "cart_id": "k-wake", "currency": "EUR", "value": 20, "items": [
                {"product_id": "p1", "name": "Shirt", "quantity": 1, "price": 20}]})])
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM outbox"))
    woken: list[int] = []
    stop = asyncio.Event()
    listener = Listener(scratch.database_url, OUTBOX_CHANNEL, lambda: woken.append(1), stop, "lifecycle-test")
    listening = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.connected.wait(), 30)
        await until(lambda: bool(woken), "the wake-up every (re)connection gives")
        clock.set(START + timedelta(minutes=scratch.cart_abandon_minutes + 1))
        assert await stager.apply_due_changes(100) >= 1
        async with engine.connect() as conn:
            written = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar()
        assert written and written >= 1
        await until(lambda: len(woken) >= 2, "a notification for the outbox rows")
    finally:
        stop.set()
        await listening


# --- scoped event ids, the frequency cap's index -------------------------------------------------


async def test_triggers_waiting_on_an_erasure_give_the_erased_customer_no_run(scratch: Settings,
                                                                                  engine: AsyncEngine) -> None:
    """The erasure check is read once the customer's lock is held: triggers that waited for an erasure
    committing meanwhile (an erasure holds the same lock) bring the customer back in no run."""
    clock = ManualClock(START)
    store = _store(scratch, engine, clock)
    await StagerStore(engine, clock, rule_config(scratch)).apply_events([_event(
        "erased-1", "customer_signed_up", START, traits={"email": "e1@example.com", "consent": "opted_in"})])
    async with engine.begin() as conn:
        triggers = [Trigger.from_json(row.payload) for row in (await conn.execute(text("SELECT payload FROM outbox")))]
        await conn.execute(text("DELETE FROM outbox"))
    assert triggers
    erasing = await engine.connect()
    transaction = await erasing.begin()
    await erase_rows(erasing, "erased-1", START + timedelta(seconds=1), record=True)  # the locks held, not committed
    handling = asyncio.create_task(store.handle_triggers(triggers))
    await asyncio.sleep(0.5)
    assert not handling.done()  # waiting for the customer's lock
    await transaction.commit()
    await erasing.close()
    assert await asyncio.wait_for(handling, 10) == 0
    assert (await _one(engine, "SELECT count(*) AS n FROM journey_runs WHERE customer_id = 'erased-1'")).n == 0


async def test_event_ids_count_per_customer(scratch: Settings, engine: AsyncEngine) -> None:
    stager = StagerStore(engine, ManualClock(START), rule_config(scratch))
    same_id = [parse_event({"event_id": "evt-1", "type": "customer_signed_up", "customer_id": customer,
                            "occurred_at": START.isoformat(), "traits": {"email": f"{customer}@example.com"}},
                           START, lambda: "unused") for customer in ("c-a", "c-b")]
    assert await stager.apply_events(same_id) == 2
    assert await stager.apply_events(same_id) == 0


async def test_the_claim_counts_recent_sends_per_customer_with_an_index(scratch: Settings,
                                                                       engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO journey_runs (customer_id, journey, status, entry_key, started_at, context)"
            " VALUES ('c-many', 'prospect_welcome', 'completed', 'k', now(), '{}')"))
        await conn.execute(text(
            "INSERT INTO sends (run_id, step, customer_id, journey, marketing, status, message_id, due_at,"
            " created_at, sent_at, attempts)"
            " SELECT (SELECT min(run_id) FROM journey_runs), n, 'c-' || (n % 2000), 'prospect_welcome', true,"
            " CASE WHEN n % 3 = 0 THEN 'skipped' ELSE 'sent' END, 'm-' || n, now(), now(),"
            " now() - make_interval(hours => n % 500), 1 FROM generate_series(1, 30000) AS n"))
        await conn.execute(text("ANALYZE sends"))
        await conn.execute(text(
            "INSERT INTO customers (customer_id, state, orders_count, total_spent, updated_at)"
            " SELECT 'c-' || n, '{}', 0, 0, now() FROM generate_series(1, 50) AS n"))
        await conn.execute(text("ANALYZE customers"))
        plan = "\n".join(row[0] for row in (await conn.execute(
            text(f"EXPLAIN {RECIPIENTS_SQL}"),
            {"ids": [f"c-{n}" for n in range(1, 50)], "since": START - timedelta(days=7)})).all())
    assert "Seq Scan on sends" not in plan, plan
    assert "sends_customer_marketing_recent" in plan, plan
    assert "sends_customer_sent" in plan, plan  # the first marketing send


# --- through the pipeline --------------------------------------------------------------------------


@pytest.fixture
async def fresh(runner: ScenarioRunner) -> AsyncIterator[ScenarioRunner]:
    await runner.configure(HERE, {"smtp_retry_base_seconds": 3.0})
    await runner.reset(START)
    yield runner


def _emails_to(settings: Settings, address: str) -> list[Any]:
    return [m for m in read_messages(mail_dir(settings)) if str(m["To"]) == address]


async def _post(runner: ScenarioRunner, body: object) -> None:
    response = await runner.http.post("/v1/events", json=body)
    assert response.status_code == 202, response.text


def _signup(customer: str, email: str) -> dict[str, Any]:
    return {"event_id": f"signup-{customer}", "type": "customer_signed_up", "customer_id": customer,
            "occurred_at": START.isoformat(), "traits": {"email": email, "consent": "opted_in"}}


async def test_an_opt_out_holds_before_the_stager_has_applied_it(pipeline: Settings,
                                                                 fresh: ScenarioRunner) -> None:
    await _post(fresh, _signup("c-fence", "fence@example.com"))
    await fresh.watch.wait_idle()
    assert len(_emails_to(pipeline, "fence@example.com")) == 1  # the first welcome email
    assert processes.stop(pipeline.run_dir, "stager")
    try:
        # acknowledged, but nobody applies it: only the fence written before the answer stands
        await _post(fresh, {"event_id": "unsub-fence", "type": "unsubscribed", "customer_id": "c-fence"})
        await set_virtual_time(fresh.engine, START + timedelta(days=1))  # step 2 falls due
        async with fresh.engine.connect() as conn:
            for _ in range(200):
                decided = (await conn.execute(text(
                    "SELECT status, reason FROM sends WHERE customer_id = 'c-fence' AND step = 2"))).first()
                if decided is not None:
                    break
                await asyncio.sleep(0.05)
        assert decided is not None and (decided.status, decided.reason) == ("skipped", "consent:opted_out")
    finally:
        await asyncio.to_thread(start_services, pipeline)
    await fresh.watch.wait_idle()
    assert len(_emails_to(pipeline, "fence@example.com")) == 1
    async with fresh.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM consent_fences"))).scalar() == 0  # applied: lifted


async def test_a_retry_is_checked_again_and_honours_a_category_left_meanwhile(pipeline: Settings,
                                                                              fresh: ScenarioRunner) -> None:
    address = "tempfail-5-retry@example.com"  # the sink answers 451 five times
    await _post(fresh, _signup("c-retry", address))
    async with fresh.engine.connect() as conn:
        for _ in range(200):
            attempts = (await conn.execute(text("SELECT attempts FROM sends WHERE customer_id = 'c-retry'"))).scalar()
            if attempts:
                break
            await asyncio.sleep(0.05)
    assert attempts == 1  # answered 451 once; the retry waits 3 s
    # the welcome series is an `offers` journey: the customer leaves offers before the retry
    await _post(fresh, {"event_id": "prefs-retry", "type": "customer_updated", "customer_id": "c-retry",
                        "traits": {"unsubscribed_categories": ["offers"]}})
    await fresh.watch.wait_idle()
    async with fresh.engine.connect() as conn:
        row = (await conn.execute(text("SELECT status, reason FROM sends WHERE customer_id = 'c-retry'"))).one()
    assert (row.status, row.reason) == ("skipped", "preference:offers")
    assert _emails_to(pipeline, address) == []


async def _publish(settings: Settings, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await (await producer.send(topic, value=value, key=key.encode()))
    finally:
        await producer.stop()


def _dlq(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lifecycle.cli", "dlq", *args], capture_output=True, text=True,
                          env=service_env(settings), check=False, timeout=60)


async def test_poison_messages_go_to_the_dead_letter_topic_and_the_stream_goes_on(
        pipeline: Settings, fresh: ScenarioRunner) -> None:
    before = json.loads(_dlq(pipeline, "list", "--json").stdout)
    await _post(fresh, _signup("c-poison", "poison@example.com"))
    await fresh.watch.wait_idle()
    # a message nobody can read, and a trigger whose handling raises (a click on step "abc")
    await _publish(pipeline, pipeline.events_topic, "c-poison", b"\x00 not an event")
    poison = Trigger("poison-1", TriggerType.ENGAGEMENT, "c-poison", START,
                     data={"kind": "clicked", "journey": "prospect_welcome", "step": "abc", "link": "shop"})
    await _publish(pipeline, pipeline.triggers_topic, "c-poison", poison.to_message())
    await _post(fresh, _signup("c-after", "after@example.com"))
    await fresh.watch.wait_idle()
    assert len(_emails_to(pipeline, "after@example.com")) == 1  # the stream went on behind them
    listed = json.loads(_dlq(pipeline, "list", "--json").stdout)
    new = [entry for entry in listed if entry not in before]
    assert sorted((e["service"], e["topic"]) for e in new) == [
        ("dispatcher", pipeline.triggers_topic), ("stager", pipeline.events_topic)]
    [trigger] = [e for e in new if e["service"] == "dispatcher"]
    assert "ValueError" in trigger["error"] and trigger["attempts"] == 3
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"http://127.0.0.1:{pipeline.dispatcher_port}/metrics")).text
    assert "lifecycle_dispatcher_triggers_dead_lettered_total 1.0" in body
    # replaying puts it back on its topic: still poison, so it is dead-lettered again, and nothing stops
    replayed = _dlq(pipeline, "replay", trigger["id"])
    assert replayed.returncode == 0, replayed.stderr
    await fresh.watch.wait_idle()
    assert len(json.loads(_dlq(pipeline, "list", "--json").stdout)) == len(listed) + 1
    refused = _dlq(pipeline, "replay", "9:99999")
    assert refused.returncode == 1 and "no dead letter 9:99999" in refused.stderr


# --- retention: processed ids and message bodies expire, what is in flight stays ---------------------


async def test_processed_ids_and_bodies_of_finished_sends_expire_after_the_retention_in_batches(
        engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(
            "INSERT INTO processed_events (customer_id, event_id, processed_at)"
            " SELECT 'c-' || n, 'e-' || n, now() - make_interval(days => CASE WHEN n <= 7 THEN 31 ELSE 29 END)"
            " FROM generate_series(1, 10) AS n"))
        await conn.execute(text(
            "INSERT INTO processed_triggers (trigger_id, processed_at)"
            " VALUES ('old', now() - interval '31 days'), ('recent', now() - interval '1 day')"))
        await conn.execute(text(
            "INSERT INTO journey_runs (run_id, customer_id, journey, status, entry_key, started_at, context, clicks)"
            " SELECT n, 'c-1', 'welcome', 'completed', 'k-' || n, now(), '{}', '{}' FROM generate_series(1, 4) AS n"))
        await conn.execute(text(
            "INSERT INTO sends (run_id, step, customer_id, journey, marketing, status, message_id, message,"
            " due_at, created_at, attempts, links) SELECT n, 1, 'c-1', 'welcome', false, s, '<m' || n || '>',"
            " 'body', now(), now() - make_interval(days => d), 0, '{}'"
            " FROM (VALUES (1, 'sent', 31), (2, 'sending', 31), (3, 'sent', 29), (4, 'skipped', 40)) AS v(n, s, d)"))
        for table in ("processed_events", "processed_triggers", "sends"):
            await conn.execute(text(f"ANALYZE {table}"))
    assert await prune(engine, "processed_events", 30, limit=5) == 5  # a batch at a time
    assert await prune(engine, "processed_events", 30, limit=5) == 2
    assert await prune(engine, "processed_events", 30, limit=5) == 0
    assert await prune(engine, "processed_triggers", 30) == 1
    assert await prune(engine, "message_bodies", 30) == 2
    async with engine.connect() as conn:
        kept = (await conn.execute(text("SELECT count(*) FROM processed_events"))).scalar()
        triggers = (await conn.execute(text("SELECT trigger_id FROM processed_triggers"))).scalars().all()
        bodies: dict[str, bool] = {row[0]: row[1] for row in (await conn.execute(text(
            "SELECT message_id, message IS NOT NULL FROM sends ORDER BY run_id"))).all()}
        await conn.execute(text("SET enable_seqscan = off"))  # what the planner does once the tables are big
        plans = ["\n".join(row[0] for row in (await conn.execute(text(f"EXPLAIN {statement.text}"),
                                                                {"days": 30, "n": 5})).all())
                 for statement in (PRUNE_PROCESSED_EVENTS, PRUNE_PROCESSED_TRIGGERS, PRUNE_MESSAGE_BODIES)]
    assert kept == 3 and triggers == ["recent"]
    assert bodies == {"<m1>": False, "<m2>": True, "<m3>": True, "<m4>": False}  # in flight, or recent: kept
    # bodies: their own index, or the sends' retention one (created_at of every send not in flight)
    for plan, indexes in zip(plans, (("processed_events_processed_at",), ("processed_triggers_processed_at",),
                                     ("sends_body_retention", "sends_retention")), strict=True):
        assert any(f"Index Scan using {index} " in plan for index in indexes), plan
