"""Handing composed messages to the SMTP server, and recording what it answered."""

from __future__ import annotations

import logging
import time

import aiosmtplib

from lifecycle.settings import Settings
from services.dispatcher import metrics
from services.dispatcher.worker import DispatcherStore, Outgoing

log = logging.getLogger("lifecycle.dispatcher")


async def deliver(store: DispatcherStore, settings: Settings, batch: list[Outgoing]) -> None:
    """Hand messages to SMTP over one connection; 4xx and lost connections retry later, 5xx fail."""
    if not batch:
        return
    smtp = aiosmtplib.SMTP(hostname=settings.smtp_host, port=settings.smtp_port,
                           timeout=settings.smtp_timeout_seconds, start_tls=False)
    try:
        await smtp.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        log.warning("SMTP unreachable, %d sends retried later: %s", len(batch), exc)
        for item in batch:
            await store.mark_failed(item.send_id, False, f"connect: {exc}")
            metrics.SENDS.labels(journey=item.journey, step=str(item.step), result="retried").inc()
        return
    try:
        for item in batch:
            started = time.perf_counter()
            try:
                await smtp.sendmail(settings.mail_from_address, [item.to_address], item.message)
            except aiosmtplib.SMTPResponseException as exc:
                permanent = 500 <= exc.code < 600
                await store.mark_failed(item.send_id, permanent, f"smtp {exc.code}: {exc.message}")
                metrics.SENDS.labels(journey=item.journey, step=str(item.step),
                                     result="failed" if permanent else "retried").inc()
                continue
            except (aiosmtplib.SMTPException, OSError) as exc:
                await store.mark_failed(item.send_id, False, f"smtp: {exc}")
                metrics.SENDS.labels(journey=item.journey, step=str(item.step), result="retried").inc()
                continue
            metrics.SMTP_DURATION.observe(time.perf_counter() - started)
            await store.mark_sent(item.send_id)
            metrics.SENDS.labels(journey=item.journey, step=str(item.step), result="sent").inc()
    finally:
        try:
            await smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            smtp.close()
