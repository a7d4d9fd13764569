"""What a report that mail sends back says: a hard or a soft bounce, a complaint, nothing, or unreadable.

Pure code (no I/O): `read_report(raw bytes)` for `lifecycle bounces` (services/bounces).

- A DSN (RFC 3464: multipart/report; report-type=delivery-status) has a block per recipient in its
  message/delivery-status part. `Action: failed` with a 5.x.x `Status` is a hard bounce, with a 4.x.x
  one a soft bounce (the MTA gave up on a temporary failure); `Action: delayed` is a soft bounce (the
  MTA still tries; the same send counts one soft bounce however many warnings come); `delivered`,
  `relayed` and `expanded` say nothing went wrong. X.4.7 (delivery time expired) counts soft whatever
  its class: the mailbox may come back. Several blocks: the worst counts.
- An ARF report (RFC 5965: report-type=feedback-report) is a complaint when its `Feedback-Type` is
  abuse, fraud, virus or other; not-spam and auth-failure ask nothing of us.
- Other mail: a bounce in prose as older MTAs write it (from MAILER-DAEMON or postmaster, an
  "undeliverable" subject, or Exim's X-Failed-Recipients) counts by the first enhanced status code
  (RFC 3463) or SMTP reply code in its text; an auto-reply (RFC 3834 Auto-Submitted, the
  "out of office" kind) asks nothing; anything else is unreadable (counted, never acted on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import Message
from email.parser import HeaderParser
from typing import Final, Literal

ReportKind = Literal["hard_bounce", "soft_bounce", "complaint", "ignored", "unreadable"]

COMPLAINT_FEEDBACK_TYPES: Final = frozenset({"abuse", "fraud", "virus", "other"})
MAX_REASON: Final = 1024
_TEXT_SCANNED: Final = 64 * 1024  # of a prose bounce's text: its status is near the top
_ENHANCED_STATUS: Final = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE: Final = re.compile(r"(?m)(?:^|\s)([45][0-5][0-9])[ -]")
_BOUNCER: Final = re.compile(r"mailer-daemon|postmaster|mail delivery (?:subsystem|system)", re.IGNORECASE)
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|delivery (?:status notification|failure|has failed|failed)|returned mail|failure notice"
    r"|mail delivery failed|could not be delivered|non[- ]?delivery", re.IGNORECASE)
_AUTO_REPLY_SUBJECT: Final = re.compile(r"out of (?:the )?office|auto(?:matic)?[- ]?reply|absence|vacation",
                                        re.IGNORECASE)
_CONTROLS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_RANK: Final[dict[ReportKind, int]] = {"ignored": 0, "soft_bounce": 1, "hard_bounce": 2}


@dataclass(frozen=True)
class Report:
    kind: ReportKind
    reason: str = ""  # what the report said, e.g. "5.1.1 smtp; 550 5.1.1 user unknown" (at most MAX_REASON)


def read_report(raw: bytes) -> Report:
    """What `raw` (a whole message as received) reports."""
    try:
        message = message_from_bytes(raw, policy=policy.compat32)
        return _read(message)
    except (LookupError, ValueError, TypeError, AttributeError, IndexError) as exc:
        # the email package is lenient, but a broken charset or structure can still get through
        return Report("unreadable", _clean(f"cannot parse: {type(exc).__name__}: {exc}"))


def _read(message: Message) -> Report:
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/feedback-report":
            return _feedback(_blocks(part))
        if content_type == "message/delivery-status":
            return _delivery_status(_blocks(part))
    return _prose(message)


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a report part: what the parser split, or split here when it kept text."""
    payload = part.get_payload(decode=False)
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, Message)]
    text = payload if isinstance(payload, str) else ""
    chunks = re.split(r"\r?\n\s*\r?\n", text.strip())
    return [HeaderParser(policy=policy.compat32).parsestr(chunk) for chunk in chunks if chunk.strip()]


def _field(block: Message, name: str) -> str:
    value = block.get(name)
    return " ".join(str(value).split()) if value is not None else ""


def _feedback(blocks: list[Message]) -> Report:
    feedback_type = next((_field(b, "Feedback-Type").lower() for b in blocks if b.get("Feedback-Type")), "")
    if not feedback_type:
        return Report("unreadable", "a feedback report without Feedback-Type")
    agent = next((_field(b, "User-Agent") for b in blocks if b.get("User-Agent")), "")
    reason = _clean(f"feedback-type {feedback_type}" + (f" from {agent}" if agent else ""))
    return Report("complaint" if feedback_type in COMPLAINT_FEEDBACK_TYPES else "ignored", reason)


def _delivery_status(blocks: list[Message]) -> Report:
    worst: Report | None = None
    for block in blocks:
        action = _field(block, "Action").lower()
        if not action:
            continue  # the per-message block
        found = _recipient(block, action)
        if found is not None and (worst is None or _RANK[found.kind] > _RANK[worst.kind]):
            worst = found
    return worst if worst is not None else Report("unreadable", "a delivery status without a recipient's Action")


def _recipient(block: Message, action: str) -> Report | None:
    status_field = _field(block, "Status")
    diagnostic = _field(block, "Diagnostic-Code")
    reason = _clean(" ".join(part for part in (status_field, diagnostic) if part) or action)
    if action in ("delivered", "relayed", "expanded"):
        return Report("ignored", reason)
    if action == "delayed":
        return Report("soft_bounce", reason)
    if action != "failed":
        return None
    status = _ENHANCED_STATUS.search(status_field) or _ENHANCED_STATUS.search(diagnostic)
    if status is not None:
        return Report(_by_status(status), reason)
    code = _REPLY_CODE.search(f" {diagnostic} ")
    return Report("soft_bounce" if code is not None and code.group(1).startswith("4") else "hard_bounce", reason)


def _by_status(status: re.Match[str]) -> ReportKind:
    klass, subject, detail = status.groups()
    if klass == "4" or (subject, detail) == ("4", "7"):
        return "soft_bounce"
    return "hard_bounce" if klass == "5" else "ignored"


def _prose(message: Message) -> Report:
    subject = _field(message, "Subject")
    if _field(message, "Auto-Submitted").lower().startswith("auto-replied") or _AUTO_REPLY_SUBJECT.search(subject):
        return Report("ignored", _clean(f"auto-reply: {subject}"))
    sender = _field(message, "From")
    failed = _field(message, "X-Failed-Recipients")
    if not (failed or _BOUNCER.search(sender) or _BOUNCE_SUBJECT.search(subject)):
        return Report("unreadable", _clean(f"neither a report nor a bounce: {subject or '(no subject)'}"))
    text = _text_of(message)
    status = _ENHANCED_STATUS.search(text)
    if status is not None and status.group(1) != "2":
        return Report(_by_status(status), _clean(_line_of(text, status.start())))
    code = _REPLY_CODE.search(text)
    if code is not None:
        kind: ReportKind = "soft_bounce" if code.group(1).startswith("4") else "hard_bounce"
        return Report(kind, _clean(_line_of(text, code.start(1))))
    return Report("unreadable", _clean(f"a bounce without a status: {subject or '(no subject)'}"))


def _text_of(message: Message) -> str:
    """The text/plain parts, before any message they return (whose own text could mislead)."""
    texts: list[str] = []
    for part in message.walk():
        if part.get_content_type() in ("message/rfc822", "text/rfc822-headers"):
            break
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                texts.append(body.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return "\n".join(texts)[:_TEXT_SCANNED]


def _line_of(text: str, index: int) -> str:
    start = text.rfind("\n", 0, index) + 1
    end = text.find("\n", index)
    return text[start:end if end >= 0 else len(text)]


def _clean(text: str) -> str:
    """One line of text fit for an event's `reason`: no control characters, at most MAX_REASON."""
    return " ".join(_CONTROLS.sub(" ", text).split())[:MAX_REASON]
