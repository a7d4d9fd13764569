"""Handing messages to SMTP and recording what the server answered (docs/sending.md).

One `Delivery` per dispatcher keeps its SMTP connections, rate-limit buckets and the recorder of
250s across the loop's iterations. Each outcome is recorded as soon as it is known:

- 250: `sent`, in batches (services/dispatcher/recording.py): the time between the 250 and that
  commit is the only window in which a crash sends twice;
- 4xx, lost connection, timeout: due again after a backoff (a row, not a sleep), `failed` after
  smtp_max_attempts;
- 5xx to RCPT or DATA: `failed` and the address suppressed, in one transaction.

Each send goes with its own envelope sender, a signed VERP address (lifecycle/verp.py): the reports
that mail sends later (bounces, complaints) come back to `lifecycle bounces` naming their send.
"""

from __future__ import annotations

import asyncio
import logging
import time

from lifecycle.settings import Settings
from lifecycle.smtp import Outcome, Sender, SmtpConfig, SmtpPool
from lifecycle.verp import bounce_address
from services.dispatcher import metrics
from services.dispatcher.recording import SentRecorder
from services.dispatcher.rendering import Renderer
from services.dispatcher.worker import DispatcherStore, Outgoing

log = logging.getLogger("lifecycle.dispatcher")

# Time kept at the end of a lease for recording the outcome of an attempt.
RECORD_MARGIN_SECONDS = 5.0
# The check right before SMTP also looks at this many sends per connection further in line, and its
# verdict on them counts for this long (an opt-out acknowledged later is seen at the next check).
ADMIT_AHEAD_FACTOR = 4
ADMIT_FRESH_SECONDS = 0.25


def attempt_seconds(settings: Settings) -> float:
    """How long one SMTP transaction may take: a send only starts with this much of its lease left."""
    return 2 * settings.smtp_timeout_seconds


class Delivery:
    """The dispatcher's SMTP side: its sender (pool and rate limits), its renderer for DKIM, its recorder."""

    def __init__(self, store: DispatcherStore, settings: Settings, renderer: Renderer) -> None:
        config = SmtpConfig.from_settings(settings)
        self.store = store
        self.settings = settings
        self.renderer = renderer
        self.sender = Sender(config, settings.mail_from_address)
        self.bounce_domain = settings.bounce_domain_name
        self.recorder = SentRecorder(store.mark_sent_many, gather=settings.record_gather_seconds)
        self._opened = 0  # connections counted in the metric so far
        log.info("SMTP to %s:%d (tls %s, pool %d, %s), DKIM %s", config.host, config.port, config.tls,
                 config.pool_size, "auth" if config.username else "no auth",
                 f"{settings.dkim_selector}._domainkey.{settings.dkim_domain}" if renderer.signs else "off")

    async def close(self) -> None:
        """Finish recording, then say QUIT on the pooled connections (the dispatcher stops)."""
        await self.recorder.close()
        await self.sender.close()

    async def deliver(self, batch: list[Outgoing], stop: asyncio.Event | None = None) -> None:
        """Send `batch` and the retries now due, concurrently over the pool within the rate limits.

        Right before each group of SMTP transactions (after any wait for the rate limits) one query checks
        again that each send is still ours and still wanted (consent, opt-outs, suppression, the run).
        A send only starts with enough of its lease left for the whole attempt; what the lease or the
        rate limits leave no room for is postponed as a row, so the loop keeps going. Once `stop` is set
        no send starts; what is left is postponed for whoever runs next.
        """
        store, settings = self.store, self.settings
        batch = batch + await store.claim_due_retries(settings.send_batch_size)
        if not batch:
            return

        verdicts: dict[int, tuple[float, bool]] = {}  # send id -> (when checked, still to send)
        admitted: set[int] = set()
        ahead = max(1, settings.smtp_pool_size) * ADMIT_AHEAD_FACTOR

        async def admit(group: list[Outgoing]) -> list[Outgoing]:
            # One query checks the group and the next sends in line: a freed connection rarely waits for
            # a query of its own. A verdict counts for ADMIT_FRESH_SECONDS, then is asked again.
            now = time.monotonic()

            def fresh(item: Outgoing) -> bool:
                found = verdicts.get(item.send_id)  # a "no" is final: the send was skipped or is another's
                return found is not None and (not found[1] or now - found[0] <= ADMIT_FRESH_SECONDS)

            unknown = [item for item in group if not fresh(item)]
            if unknown:
                asked = {item.send_id for item in unknown}
                later = [item for item in batch if item.send_id not in asked and item.send_id not in admitted
                         and not fresh(item)][:ahead]
                go, _ = await store.recheck(unknown + later)
                still = {item.send_id for item in go}
                checked = time.monotonic()
                for item in unknown + later:
                    verdicts[item.send_id] = (checked, item.send_id in still)
            chosen = [item for item in group if verdicts[item.send_id][1]]
            admitted.update(item.send_id for item in chosen)
            return chosen

        async def record(item: Outgoing, outcome: Outcome, seconds: float) -> None:
            labels = {"journey": item.journey, "step": str(item.step)}
            if outcome.kind == "sent":
                metrics.SMTP_ACCEPTED.inc()
                recorded = await self.recorder.sent(item)  # batched with the other connections' 250s
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

        renderer = self.renderer

        async def sign(item: Outgoing) -> bytes:
            # a first attempt was signed with its composing, moments ago; a retry or a take-over is
            # signed now (the key configured now, the time it goes)
            return item.signed if item.signed is not None else await renderer.sign(item.message)

        keys, bounce_domain = store.keys, self.bounce_domain

        def envelope_sender(item: Outgoing) -> str:
            return bounce_address(keys, item.send_id, bounce_domain)

        postponed = await self.sender.run(
            batch, record, budget=max(1.0, settings.send_lease_seconds / 2),
            prepare=sign if renderer.signs else None, stop=stop, admit=admit,
            finish_by=lambda item: item.lease_deadline - RECORD_MARGIN_SECONDS,
            attempt_seconds=attempt_seconds(settings), envelope_sender=envelope_sender,
        )
        if postponed:
            await store.postpone_sends(postponed)
            metrics.SMTP_POSTPONED.inc(len(postponed))
        transport = self.sender.transport
        if isinstance(transport, SmtpPool) and transport.opened > self._opened:
            metrics.SMTP_CONNECTIONS.inc(transport.opened - self._opened)
            self._opened = transport.opened
