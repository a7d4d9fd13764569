"""Reports as mail sends them back, built with the standard library's email package: DSNs (RFC 3464)
and ARF complaint reports (RFC 5965), both multipart/report."""

from __future__ import annotations

from email.message import Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import aiosmtplib

ORIGINAL = ("From: Shop <hello@shop.example>\nTo: {to}\nSubject: Welcome\nMessage-ID: {message_id}\n"
            "Return-Path: <{return_path}>\n\nHello\n")


def _fields(values: dict[str, str]) -> Message:
    block = Message()
    for name, value in values.items():
        block[name] = value
    return block


def _original(to: str, message_id: str, return_path: str) -> MIMEBase:
    headers = MIMEBase("text", "rfc822-headers")
    headers.set_payload(ORIGINAL.format(to=to, message_id=message_id, return_path=return_path).split("\n\n")[0])
    return headers


def dsn(to: str, return_path: str, action: str = "failed", status: str = "5.1.1",
        diagnostic: str | None = "smtp; 550 5.1.1 <{to}>: Recipient address rejected: User unknown",
        message_id: str = "<1.1.abc@shop.example>", extra_recipients: list[dict[str, str]] | None = None) -> bytes:
    """A delivery status notification to `return_path` (the envelope sender of the message it is about)."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    report["To"] = return_path
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Auto-Submitted"] = "auto-replied"
    report.attach(MIMEText(f"This is the mail system at host mx.example.com.\n\nYour message to {to} "
                           f"could not be delivered.\n"))
    per_recipient = {"Final-Recipient": f"rfc822; {to}", "Original-Recipient": f"rfc822;{to}", "Action": action,
                     "Status": status, "Remote-MTA": "dns; mx.example.com"}
    if diagnostic is not None:
        per_recipient["Diagnostic-Code"] = diagnostic.format(to=to)
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([
        _fields({"Reporting-MTA": "dns; mx.example.com", "Arrival-Date": "Mon, 7 Sep 2026 09:00:00 +0000"}),
        _fields(per_recipient),
        *(_fields(extra) for extra in extra_recipients or []),
    ])
    report.attach(status_part)
    report.attach(_original(to, message_id, return_path))
    return report.as_bytes()


def arf(to: str, return_path: str, feedback_type: str = "abuse",
        message_id: str = "<1.1.abc@shop.example>") -> bytes:
    """A complaint feedback report (a customer pressed "this is spam") about the message sent to `to`."""
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "Feedback Loop <fbl@mailbox.example.com>"
    report["To"] = return_path
    report["Subject"] = "Complaint about a message from shop.example"
    report.attach(MIMEText("This is an email abuse report for an email message received from shop.example.\n"))
    feedback = MIMEBase("message", "feedback-report")
    feedback.set_payload(f"Feedback-Type: {feedback_type}\nUser-Agent: MailboxFBL/1.0\nVersion: 1\n"
                         f"Original-Rcpt-To: {to}\nArrival-Date: Mon, 7 Sep 2026 09:00:00 +0000\n")
    report.attach(feedback)
    original = Message()
    for line in ORIGINAL.format(to=to, message_id=message_id, return_path=return_path).split("\n\n")[0].split("\n"):
        name, _, value = line.partition(": ")
        original[name] = value
    original.set_payload("Hello\n")
    report.attach(MIMEMessage(original))
    return report.as_bytes()


async def send_report(host: str, port: int, raw: bytes, recipients: list[str]) -> aiosmtplib.SMTPResponse | Exception:
    """Hand a report over SMTP as a reporting MTA does (null sender): the answer to DATA, or the error the
    server gave (SMTPRecipientsRefused for refused recipients, SMTPDataError for an answer to DATA)."""
    smtp = aiosmtplib.SMTP(hostname=host, port=port, timeout=10, local_hostname="mx.example.com")
    try:
        async with smtp:
            errors, response = await smtp.sendmail("", recipients, raw)
    except aiosmtplib.SMTPException as exc:
        return exc
    assert not errors, errors
    return aiosmtplib.SMTPResponse(250, response)
