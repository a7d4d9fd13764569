"""SMTP pipelining (RFC 2920): MAIL, RCPT and DATA in one write, where the server offers PIPELINING.

Without it a message costs four round trips (MAIL, RCPT, DATA, the message); with it two. Against a
relay across a network that is half the time a connection spends on each message; on one machine,
half the wake-ups of the client and the server.

aiosmtplib sends one command at a time: its protocol parses one answer per read and drops data that
arrives while an answer waits to be read. `OrderedAnswers` keeps every answer the server sent, in
order, and hands the next one to the next read, which is what reading several answers to one write
needs. Between commands an answer nobody asked for (a server closing with 421) is kept for the next
read instead of dropped, so that the next command learns of it. `install()` makes aiosmtplib build
its connections with it.

`send_pipelined` gives the outcomes `SMTP.sendmail` gives for one recipient: the same exceptions for
the same answers, the envelope reset after a refusal. tests/unit/test_smtp_pipelining.py holds it to
that against aiosmtpd and against a scripted server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiosmtplib.email
import aiosmtplib.protocol
import aiosmtplib.smtp
from aiosmtplib import (
    SMTP,
    SMTPDataError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)
from aiosmtplib.response import SMTPResponse

_Base: Any = aiosmtplib.protocol.SMTPProtocol
# answers to one pipelined write: three short lines, a little more with enhanced status codes
_MAX_BUFFERED = 4 * aiosmtplib.protocol.MAX_RESPONSE_LENGTH


class OrderedAnswers(_Base):  # type: ignore[misc]
    """aiosmtplib's protocol, keeping every answer in order for the reads that follow."""

    def data_received(self, data: bytes) -> None:
        if self._response_waiter is None:
            return  # the connection is gone
        self._buffer.extend(data)
        if len(self._buffer) > _MAX_BUFFERED:
            del self._buffer[:]
            if not self._response_waiter.done():
                self._set_response_exception(self._response_waiter, SMTPResponseException(
                    SMTPStatus.invalid_response.value, "Response too long"))
            return
        self._hand_over()

    def _hand_over(self) -> None:
        """The next whole answer in the buffer to the read waiting for one (if any)."""
        waiter = self._response_waiter
        if waiter is None or waiter.done() or not self._buffer:
            return
        try:
            response = self._read_response_from_buffer()
        except Exception as exc:  # a malformed answer: the read waiting gets it, as aiosmtplib does
            self._set_response_exception(waiter, exc)
        else:
            if response is not None:
                waiter.set_result(response)

    async def read_response(self, timeout: float | None = None) -> SMTPResponse:
        response: SMTPResponse = await super().read_response(timeout=timeout)
        self._hand_over()  # an answer already here goes to the next read at once
        return response


def install() -> bool:
    """aiosmtplib's connections made with `OrderedAnswers` (once); False when its internals are not
    the ones this was written for (then nothing is pipelined)."""
    smtp: Any = aiosmtplib.smtp
    current = getattr(smtp, "SMTPProtocol", None)
    if current is OrderedAnswers:
        return True
    if current is not _Base or not all(hasattr(_Base, name) for name in (
            "_read_response_from_buffer", "_set_response_exception", "read_response", "data_received")):
        return False
    smtp.SMTPProtocol = OrderedAnswers
    return True


def can_pipeline(smtp: SMTP) -> bool:
    return isinstance(smtp.protocol, OrderedAnswers) and smtp.supports_extension("pipelining")


async def send_pipelined(smtp: SMTP, sender: str, recipient: str, message: bytes,
                         mail_options: list[str]) -> SMTPResponse:
    """One message to one recipient with MAIL, RCPT and DATA in one write; raises what
    `smtp.sendmail(sender, [recipient], message, mail_options=...)` raises for the same answers."""
    protocol: Any = smtp.protocol
    options = list(mail_options)
    utf8 = any(option.lower() == "smtputf8" for option in options)
    encoding = "utf-8" if utf8 else "ascii"
    # looked up at each call: lifecycle/smtp_data.py puts its fast path there
    quote = aiosmtplib.email.quote_address
    quoted_sender, quoted_recipient = quote(sender), quote(recipient)  # a bad one fails before anything is sent
    if utf8 and not smtp.supports_extension("smtputf8"):
        raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
    body = aiosmtplib.protocol.normalize_message_line_endings(message)
    if smtp.supports_extension("size"):
        options.insert(0, f"size={len(body)}")
    commands = (b" ".join([b"MAIL FROM:" + quoted_sender.encode(encoding),
                           *(option.encode("ascii") for option in options)]) + b"\r\n"
                + b"RCPT TO:" + quoted_recipient.encode(encoding) + b"\r\n"
                + b"DATA\r\n")
    try:
        async with _commands(protocol):
            protocol.write(commands)
            answers: list[SMTPResponse] = []
            try:
                while len(answers) < 3:
                    answers.append(await protocol.read_response(timeout=smtp.timeout))
            except (SMTPServerDisconnected, SMTPTimeoutError):
                # a server may hang up after refusing (too many errors): the refusal is the outcome, as it
                # is when the commands go one at a time and the client stops at the first refusal
                refusal = _refusal(answers, sender, recipient)
                if refusal is None:
                    raise
                smtp.close()
                raise refusal from None
            refusal = _refusal(answers, sender, recipient)
            if refusal is not None:
                if answers[2].code == SMTPStatus.start_input:
                    # the server took DATA anyway: an empty message ends it (RFC 2920 §3.1), then RSET
                    protocol.write(b".\r\n")
                    await protocol.read_response(timeout=smtp.timeout)
                raise refusal
            protocol.write(aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", body) + b".\r\n")
            response: SMTPResponse = await protocol.read_response(timeout=smtp.timeout)
            if response.code != SMTPStatus.completed:
                raise SMTPDataError(response.code, response.message)
            return response
    except (SMTPServerDisconnected, SMTPTimeoutError):
        smtp.close()
        raise
    except (SMTPResponseException, SMTPRecipientsRefused):
        with contextlib.suppress(ConnectionError, SMTPResponseException):
            await smtp.rset()  # as sendmail does: the envelope reset for the next message
        raise


def _refusal(answers: list[SMTPResponse], sender: str, recipient: str) -> Exception | None:
    """The exception sendmail raises at the first of the answers to MAIL, RCPT and DATA (as many as
    came) that refuses; None when none of them does."""
    accepted = ((SMTPStatus.completed,), (SMTPStatus.completed, SMTPStatus.will_forward), (SMTPStatus.start_input,))
    for index, (answer, ok) in enumerate(zip(answers, accepted, strict=False)):
        if answer.code in ok:
            continue
        if index == 0:
            return SMTPSenderRefused(answer.code, answer.message, sender)
        if index == 1:
            return SMTPRecipientsRefused([SMTPRecipientRefused(answer.code, answer.message, recipient)])
        return SMTPDataError(answer.code, answer.message)
    return None


@contextlib.asynccontextmanager
async def _commands(protocol: Any) -> AsyncIterator[None]:
    """The protocol's command lock held, so that nothing else is written between our commands."""
    lock: asyncio.Lock | None = protocol._command_lock
    if lock is None:
        raise SMTPServerDisconnected("Server not connected")
    async with lock:
        protocol._response_pending = True
        yield
