"""The dispatcher's stages off the hot loop: composing and signing in worker processes, 250s
recorded in batches (group commit) with their fences and their patience."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import signal
import subprocess
import sys
import textwrap
import time
from email.message import EmailMessage
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lifecycle.core.journeys import SendAudience
from lifecycle.dkim import dns_txt_record
from lifecycle.settings import Settings
from services.dispatcher import metrics
from services.dispatcher.recording import SentRecorder
from services.dispatcher.rendering import Composed, ComposeFailure, Renderer
from services.dispatcher.worker import Outgoing
from tests.unit.test_compose import SETTINGS, TEMPLATES, spec
from tests.unit.test_dkim import dns_stub

AUDIENCE = SendAudience(("opted_in",), True, "news")


def _parsed(composed: Composed | ComposeFailure) -> EmailMessage:
    assert isinstance(composed, Composed)
    message = email.message_from_bytes(composed.message, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _bodies(message: EmailMessage) -> list[str]:
    return [str(part.get_content()) for part in message.iter_parts()]


@pytest.fixture(scope="module")
def pooled() -> object:
    renderer = Renderer(SETTINGS, workers=1)
    asyncio.run(renderer.start())
    yield renderer
    renderer.close()


def test_workers_compose_what_the_dispatcher_would(pooled: Renderer) -> None:
    specs = [spec(customer={"first_name": f"Ana{n}"}) for n in range(20)]  # more than one chunk
    here = asyncio.run(Renderer(SETTINGS, workers=0, templates=TEMPLATES).compose(specs))
    there = asyncio.run(pooled.compose(specs))
    assert len(there) == len(specs)
    for mine, theirs in zip(here, there, strict=True):
        assert isinstance(mine, Composed) and isinstance(theirs, Composed)
        assert theirs.subject == mine.subject and theirs.links == mine.links
        ours, remote = _parsed(mine), _parsed(theirs)
        assert remote["Message-ID"] == ours["Message-ID"] and remote["To"] == ours["To"]
        assert _bodies(remote) == _bodies(ours)  # only the MIME boundary differs
    assert "Ana19" in _bodies(_parsed(there[-1]))[0]


def test_a_template_that_cannot_render_is_a_failure_in_its_place(pooled: Renderer) -> None:
    found = asyncio.run(pooled.compose([spec(), spec(template="no_such_template"), spec()]))
    assert isinstance(found[0], Composed) and isinstance(found[2], Composed)
    failure = found[1]
    assert isinstance(failure, ComposeFailure)
    assert "no template named 'no_such_template'" in failure.message and failure.message in str(failure)


def test_workers_sign_with_the_key_they_loaded(tmp_path: Path) -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key = tmp_path / "dkim.pem"
    key.write_bytes(pem)
    settings = SETTINGS.model_copy(update={"dkim_selector": "s1", "dkim_domain": "shop.example",
                                           "dkim_private_key_file": key})
    renderer = Renderer(settings, workers=1)
    try:
        composed = asyncio.run(renderer.compose([spec()]))[0]
        assert isinstance(composed, Composed)
        signed = asyncio.run(renderer.sign(composed.message))
    finally:
        renderer.close()
    assert renderer.signs and signed.startswith(b"DKIM-Signature:")
    dns = dns_stub(dns_txt_record(pem), "s1", "shop.example")
    assert dkim.verify(signed, dnsfunc=dns)
    # composing signs too, in the same task: the first attempt goes with that signature, and what
    # is stored stays unsigned
    assert composed.signed is not None
    assert composed.signed.endswith(b"\r\n".join(composed.message.splitlines()) + b"\r\n")
    assert composed.signed.startswith(b"DKIM-Signature:") and dkim.verify(composed.signed, dnsfunc=dns)
    assert not composed.message.startswith(b"DKIM-Signature:")
    unsigned = asyncio.run(Renderer(SETTINGS, workers=0).compose([spec()]))[0]
    assert isinstance(unsigned, Composed) and unsigned.signed is None  # no key: nothing signed
    assert asyncio.run(Renderer(SETTINGS, workers=0).sign(b"x")) == b"x"  # no key: unchanged


def test_a_dead_worker_is_replaced_and_the_batch_still_composed() -> None:
    renderer = Renderer(SETTINGS, workers=1)

    async def scenario() -> None:
        await renderer.start()
        pool = renderer._pool
        assert pool is not None
        for pid in list(pool._processes):  # type: ignore[attr-defined]
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        before = metrics.RENDER_WORKERS_LOST._value.get()
        found = await renderer.compose([spec()])  # composed here this time
        assert isinstance(found[0], Composed)
        assert metrics.RENDER_WORKERS_LOST._value.get() == before + 1
        assert renderer._pool is not pool
        assert isinstance((await renderer.compose([spec()]))[0], Composed)  # the new workers

    try:
        asyncio.run(scenario())
    finally:
        renderer.close()


def test_workers_die_with_a_killed_dispatcher(tmp_path: Path) -> None:
    """A dispatcher killed with SIGKILL leaves no render worker behind (the fault harness kills them often)."""
    script = textwrap.dedent("""
        import asyncio, sys, time
        from tests.unit.test_compose import SETTINGS
        from services.dispatcher.rendering import Renderer
        renderer = Renderer(SETTINGS, workers=2)
        asyncio.run(renderer.start())
        print(" ".join(str(pid) for pid in renderer._pool._processes), flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])
    try:
        assert parent.stdout is not None
        workers = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(pid) for pid in workers)
        parent.kill()
        parent.wait()
        give_up = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < give_up:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is dead, only not yet reaped
    except FileNotFoundError:
        return False


# --- the recorder -------------------------------------------------------------------------------


def _item(send_id: int) -> Outgoing:
    return Outgoing(send_id, f"c{send_id}@example.com", b"m", "welcome", 1, f"c{send_id}", "token", 0.0, AUDIENCE)


def test_the_250s_that_arrive_during_a_write_go_together_in_the_next() -> None:
    batches: list[list[int]] = []
    gate = asyncio.Event()

    async def mark_sent(items: list[Outgoing]) -> set[int]:
        batches.append([i.send_id for i in items])
        if len(batches) == 1:
            await gate.wait()  # the first write is slow: the others' 250s pile up behind it
        return {i.send_id for i in items if i.send_id != 3}  # 3 was taken over by another dispatcher

    async def scenario() -> list[bool | None]:
        recorder = SentRecorder(mark_sent)
        first = asyncio.create_task(recorder.sent(_item(1)))
        await asyncio.sleep(0.01)
        assert metrics.UNRECORDED._value.get() == 1
        others = [asyncio.create_task(recorder.sent(_item(n))) for n in (2, 3, 4)]
        await asyncio.sleep(0.01)
        assert metrics.UNRECORDED._value.get() == 4  # the crash window, counted
        gate.set()
        results = await asyncio.gather(first, *others)
        await recorder.close()
        return results

    assert asyncio.run(scenario()) == [True, True, False, True]
    assert batches == [[1], [2, 3, 4]]
    assert metrics.UNRECORDED._value.get() == 0


def test_the_first_250_waits_the_gather_time_for_the_others_and_they_are_written_together() -> None:
    batches: list[list[int]] = []

    async def mark_sent(items: list[Outgoing]) -> set[int]:
        batches.append([i.send_id for i in items])
        return {i.send_id for i in items}

    async def scenario() -> list[bool | None]:
        recorder = SentRecorder(mark_sent, gather=0.05)
        first = asyncio.create_task(recorder.sent(_item(1)))
        await asyncio.sleep(0.01)
        assert batches == []  # waiting for the others
        others = [asyncio.create_task(recorder.sent(_item(n))) for n in (2, 3)]
        results = await asyncio.gather(first, *others)
        late = await recorder.sent(_item(4))  # after the write: a batch of its own, after its own wait
        await recorder.close()
        return [*results, late]

    assert asyncio.run(scenario()) == [True, True, True, True]
    assert batches == [[1, 2, 3], [4]]
    assert Settings().record_gather_seconds == 0.005  # a few milliseconds by default


def test_a_recorder_stopped_while_it_gathers_tells_its_senders_instead_of_leaving_them_waiting() -> None:
    async def mark_sent(items: list[Outgoing]) -> set[int]:
        return {i.send_id for i in items}

    async def scenario() -> None:
        recorder = SentRecorder(mark_sent, gather=60.0)
        unrecorded = metrics.UNRECORDED._value.get()
        sender = asyncio.create_task(recorder.sent(_item(1)))
        await asyncio.sleep(0.01)
        assert recorder._task is not None
        recorder._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(sender, timeout=5)
        assert metrics.UNRECORDED._value.get() == unrecorded  # no longer counted as waiting

    asyncio.run(scenario())


def test_a_record_is_tried_again_while_the_database_is_away_then_given_up() -> None:
    calls = 0

    async def flaky(items: list[Outgoing]) -> set[int]:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("the database is away")
        return {i.send_id for i in items}

    async def never(items: list[Outgoing]) -> set[int]:
        raise ConnectionError("the database is away")

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    retries = metrics.MARK_SENT_RETRIES._value.get()
    assert asyncio.run(SentRecorder(flaky, sleep=no_wait).sent(_item(1))) is True
    assert calls == 3 and metrics.MARK_SENT_RETRIES._value.get() == retries + 2
    assert asyncio.run(SentRecorder(never, patience=0.0, sleep=no_wait).sent(_item(2))) is None


def test_a_cancelled_sender_still_has_its_250_recorded() -> None:
    recorded: list[int] = []
    gate = asyncio.Event()

    async def mark_sent(items: list[Outgoing]) -> set[int]:
        await gate.wait()
        recorded.extend(i.send_id for i in items)
        return {i.send_id for i in items}

    async def scenario() -> None:
        recorder = SentRecorder(mark_sent)
        waiting = asyncio.create_task(recorder.sent(_item(7)))
        await asyncio.sleep(0.01)
        waiting.cancel()
        gate.set()
        await recorder.close()

    asyncio.run(scenario())
    assert recorded == [7]
