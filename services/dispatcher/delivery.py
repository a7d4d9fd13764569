"""Handing messages to SMTP and recording what the server answered (docs/sending.md).

One `Sender` per process keeps its SMTP connections and rate-limit buckets across the loop's
iterations. Each outcome is recorded as soon as it is known, one transaction each:

- 250: `sent` (the UPDATE right after the 250 is the only window in which a crash sends twice);
- 4xx, lost connection, timeout: due again after a backoff (a row, not a sleep), `failed` after
  smtp_max_attempts;
- 5xx to RCPT or DATA: `failed` and the address suppressed, in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from lifecycle.dkim import DkimSigner, signer_from_settings
from lifecycle.settings import Settings
from lifecycle.smtp import Outcome, Sender, SmtpConfig, SmtpPool
from services.dispatcher import metrics
from services.dispatcher.worker import DispatcherStore, Outgoing

log = logging.getLogger("lifecycle.dispatcher")


@dataclass
class _Delivery:
    loop: asyncio.AbstractEventLoop
    key: tuple[object, ...]
    sender: Sender
    signer: DkimSigner | None
    opened: int = 0  # connections counted in the metric so far


_current: _Delivery | None = None


async def _delivery(settings: Settings) -> _Delivery:
    """The process's sender, made on first use (and again if the settings or the event loop change)."""
    global _current
    config = SmtpConfig.from_settings(settings)
    key = (config, settings.mail_from_address, settings.dkim_selector, settings.dkim_domain,
           settings.dkim_private_key_file)
    loop = asyncio.get_running_loop()
    if _current is not None and _current.loop is loop and _current.key == key:
        return _current
    if _current is not None and _current.loop is loop:
        await _current.sender.close()
    # a DKIM key that is set but unusable stops the dispatcher here, rather than mail going unsigned
    signer = signer_from_settings(settings)
    _current = _Delivery(loop, key, Sender(config, settings.mail_from_address), signer)
    log.info("SMTP to %s:%d (tls %s, pool %d, %s), DKIM %s", config.host, config.port, config.tls,
             config.pool_size, "auth" if config.username else "no auth",
             f"{settings.dkim_selector}._domainkey.{settings.dkim_domain}" if signer else "off")
    return _current


async def close_delivery() -> None:
    """Say QUIT on the pooled connections (the dispatcher calls this when it stops)."""
    global _current
    if _current is not None and _current.loop is asyncio.get_running_loop():
        await _current.sender.close()
    _current = None


# The longest a delivered message waits for its `sent` to be recorded (PostgreSQL away): past it,
# the row's lease runs out, another dispatcher sends it again, and that is logged as a duplicate.
MARK_SENT_PATIENCE_SECONDS = 300.0
# Time kept at the end of a lease for recording the outcome of an attempt.
RECORD_MARGIN_SECONDS = 5.0


def attempt_seconds(settings: Settings) -> float:
    """How long one SMTP transaction may take: a send only starts with this much of its lease left."""
    return 2 * settings.smtp_timeout_seconds


async def _mark_sent_durably(store: DispatcherStore, item: Outgoing) -> bool | None:
    """`mark_sent`, tried again and again while PostgreSQL is away; None if it never came back."""
    delay = 0.1
    give_up = time.monotonic() + MARK_SENT_PATIENCE_SECONDS
    while True:
        try:
            return await store.mark_sent(item)
        except Exception as exc:  # whatever it is, the 250 must be recorded: keep trying for a while
            if time.monotonic() > give_up:
                log.error("send %d to %s was delivered but could not be recorded for %.0f s: %s; it will be sent"
                          " again once its lease runs out", item.send_id, item.to_address,
                          MARK_SENT_PATIENCE_SECONDS, exc)
                return None
            metrics.MARK_SENT_RETRIES.inc()
            log.warning("recording send %d as sent failed, trying again in %.1f s: %s", item.send_id, delay, exc)
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)


async def deliver(store: DispatcherStore, settings: Settings, batch: list[Outgoing],
                  stop: asyncio.Event | None = None) -> None:
    """Send `batch` and the retries now due, concurrently over the pool within the rate limits.

    Right before each group of SMTP transactions (after any wait for the rate limits) one query checks
    again that each send is still ours and still wanted (consent, opt-outs, suppression, the run).
    A send only starts with enough of its lease left for the whole attempt; what the lease or the
    rate limits leave no room for is postponed as a row, so the loop keeps going. Once `stop` is set
    no send starts; what is left is postponed for whoever runs next.
    """
    batch = batch + await store.claim_due_retries(settings.batch_size)
    if not batch:
        return
    state = await _delivery(settings)

    async def admit(group: list[Outgoing]) -> list[Outgoing]:
        go, _ = await store.recheck(group)
        return go

    async def record(item: Outgoing, outcome: Outcome, seconds: float) -> None:
        labels = {"journey": item.journey, "step": str(item.step)}
        if outcome.kind == "sent":
            metrics.SMTP_ACCEPTED.inc()
            recorded = await _mark_sent_durably(store, item)  # nothing between the 250 and this UPDATE
            metrics.SMTP_DURATION.observe(seconds)
            if recorded:
                metrics.SENDS.labels(**labels, result="sent").inc()
            elif recorded is False:
                metrics.SENT_TWICE.inc()
                log.warning("send %d to %s accepted, but another dispatcher had taken it over: possibly sent twice",
                            item.send_id, item.to_address)
        elif outcome.kind == "bounce":
            log.warning("send %d to %s bounced: %s; address suppressed", item.send_id, item.to_address,
                        outcome.reason)
            if await store.mark_bounced(item, outcome.reason):
                metrics.SUPPRESSIONS.labels(reason="bounced").inc()
            metrics.SENDS.labels(**labels, result="bounced").inc()
        elif outcome.kind == "failed":
            log.warning("send %d to %s failed: %s", item.send_id, item.to_address, outcome.reason)
            await store.mark_failed(item, outcome.reason)
            metrics.SENDS.labels(**labels, result="failed").inc()
        else:
            status = await store.mark_retry(item, outcome.reason)
            if status == "failed":
                log.warning("send %d to %s failed after %d attempts: %s", item.send_id, item.to_address,
                            settings.smtp_max_attempts, outcome.reason)
            else:
                log.info("send %d to %s retried later: %s", item.send_id, item.to_address, outcome.reason)
            metrics.SENDS.labels(**labels, result="failed" if status == "failed" else "retried").inc()

    signer = state.signer
    postponed = await state.sender.run(
        batch, record, budget=max(1.0, settings.send_lease_seconds / 2),
        prepare=(lambda item: signer.sign(item.message)) if signer is not None else None, stop=stop, admit=admit,
        finish_by=lambda item: item.lease_deadline - RECORD_MARGIN_SECONDS, attempt_seconds=attempt_seconds(settings),
    )
    if postponed:
        await store.postpone_sends(postponed)
        metrics.SMTP_POSTPONED.inc(len(postponed))
    transport = state.sender.transport
    if isinstance(transport, SmtpPool) and transport.opened > state.opened:
        metrics.SMTP_CONNECTIONS.inc(transport.opened - state.opened)
        state.opened = transport.opened
