"""The aiosmtpd handler of `lifecycle bounces`: signed bounce addresses in, events out.

- RCPT TO: only the bounce addresses this deployment signed (lifecycle/verp.py) are taken; any other
  (forged, unsigned, altered, another domain) is refused with 550 and counted, before any data.
- DATA: the report is read (lifecycle/bounce_reports.py); a hard or soft bounce becomes an
  `email_bounced` event, a complaint an `email_complained` event, for the customer and message of the
  send named by the address. The event id is made of the send and the kind (`bounce-hard:<send id>`),
  so a report delivered twice, or the second warning about the same delayed send, counts once. A report
  about an address the customer no longer has is dropped: its event would suppress the new one.
- 250 only once Kafka acknowledged the events; 451 when PostgreSQL or Kafka does not answer in time,
  so that the reporting server keeps the report and tries again: nothing is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from lifecycle.bounce_reports import Report, read_report
from lifecycle.clock import Clock
from lifecycle.events import Event, EventInvalid, EventType, parse_event
from lifecycle.tokens import SigningKeys
from lifecycle.verp import read_bounce_address
from services.bounces import metrics

log = logging.getLogger("lifecycle.bounces")

# Past these, the report is answered 451 and comes again later (servers wait 10 minutes for DATA's answer).
LOOKUP_TIMEOUT_SECONDS: Final = 10.0
PUBLISH_TIMEOUT_SECONDS: Final = 30.0
MAX_REPORT_BYTES: Final = 10 * 1024 * 1024  # a DSN or ARF report carries at most the message it is about

ACCEPTED: Final = "250 2.0.0 report taken"
NOTHING_TO_DO: Final = "250 2.0.0 report read, nothing to act on"
REFUSED: Final = "550 5.1.1 not a bounce address of ours"
TRY_LATER: Final = "451 4.3.0 cannot record the report now, try again later"
ONE_RECIPIENT: Final = "452 4.5.3 one recipient per transaction"


@dataclass(frozen=True)
class SentMessage:
    customer_id: str
    message_id: str
    to_address: str | None = None
    current_address: str | None = None  # the customer's address now (None: unknown)

    @property
    def address_changed(self) -> bool:
        """The customer has another address since: a report about the old one says nothing of the new."""
        return (self.to_address is not None and self.current_address is not None
                and self.to_address.lower() != self.current_address.lower())


LookUp = Callable[[Sequence[int]], Awaitable[Mapping[int, SentMessage]]]
Publish = Callable[[list[Event]], Awaitable[None]]

_EVENT_OF: Final = {"hard_bounce": ("bounce-hard", EventType.EMAIL_BOUNCED),
                    "soft_bounce": ("bounce-soft", EventType.EMAIL_BOUNCED),
                    "complaint": ("complaint", EventType.EMAIL_COMPLAINED)}


def report_event(report: Report, send_id: int, sent: SentMessage, now: Any) -> Event:
    """The event a bounce or complaint report about one send becomes."""
    prefix, kind = _EVENT_OF[report.kind]
    properties: dict[str, object] = {"message_id": sent.message_id}
    if kind is EventType.EMAIL_BOUNCED:
        properties["kind"] = "soft" if report.kind == "soft_bounce" else "hard"
        if report.reason:
            properties["reason"] = report.reason
    raw = {"event_id": f"{prefix}:{send_id}", "type": kind.value, "customer_id": sent.customer_id,
           "occurred_at": now, "properties": properties}
    return parse_event(raw, now, lambda: f"{prefix}:{send_id}")


class BounceHandler:
    """aiosmtpd's handler (its hooks are called by name). `lmtp`: one recipient per transaction, so that
    the one answer to DATA is the answer for that recipient, as LMTP needs."""

    def __init__(self, keys: SigningKeys, domain: str, look_up: LookUp, publish: Publish, clock: Clock,
                 lmtp: bool = False) -> None:
        self.keys = keys
        self.domain = domain
        self.look_up = look_up
        self.publish = publish
        self.clock = clock
        self.lmtp = lmtp
        self.in_flight = 0  # reports being recorded: a graceful stop waits for them

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if read_bounce_address(self.keys, address, self.domain) is None:
            metrics.REFUSED.inc()
            log.info("refused a report for %s: not a bounce address of ours", address,
                     extra={"peer": str(getattr(session, "peer", ""))})
            return REFUSED
        if self.lmtp and envelope.rcpt_tos:
            return ONE_RECIPIENT
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_flight += 1
        try:
            return await self._record(envelope)
        finally:
            self.in_flight -= 1

    async def _record(self, envelope: Any) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        send_ids = [sid for address in envelope.rcpt_tos
                    if (sid := read_bounce_address(self.keys, address, self.domain)) is not None]
        report = read_report(raw)
        if report.kind in ("ignored", "unreadable"):
            metrics.REPORTS.labels(outcome=report.kind).inc(len(send_ids))
            log.info("report for send(s) %s: %s (%s)", send_ids, report.kind, report.reason)
            return NOTHING_TO_DO
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                sent = await self.look_up(send_ids)
                now = await self.clock.now()
        except Exception as exc:  # PostgreSQL away, slow, or the clock unreadable: the server tries again
            metrics.REPORTS.labels(outcome="deferred").inc(len(send_ids))
            log.warning("report for send(s) %s deferred: looking up the sends failed: %s", send_ids, exc)
            return TRY_LATER
        events: list[Event] = []
        for send_id in send_ids:
            found = sent.get(send_id)
            if found is None:
                metrics.REPORTS.labels(outcome="unknown_send").inc()
                log.warning("%s for send %d, which is not (or no longer) in the sends table", report.kind, send_id)
                continue
            if found.address_changed:  # the events would suppress the customer's new address
                metrics.REPORTS.labels(outcome="address_changed").inc()
                log.info("%s for send %d ignored: customer %s has another address since", report.kind, send_id,
                         found.customer_id)
                continue
            try:
                events.append(report_event(report, send_id, found, now))
            except EventInvalid as exc:  # only if a stored send held what no event may carry
                metrics.REPORTS.labels(outcome="unreadable").inc()
                log.error("%s for send %d cannot be an event: %s", report.kind, send_id, exc)
        if events:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                    await self.publish(events)
            except Exception as exc:  # Kafka away or slow: nothing acknowledged, the server tries again
                metrics.REPORTS.labels(outcome="deferred").inc(len(events))
                log.warning("report for send(s) %s deferred: Kafka did not acknowledge: %s", send_ids, exc)
                return TRY_LATER
        for event in events:
            metrics.REPORTS.labels(outcome=report.kind).inc()
            log.info("%s recorded for customer %s", report.kind, event.customer_id,
                     extra={"event_id": event.event_id, "customer_id": event.customer_id})
        return ACCEPTED
