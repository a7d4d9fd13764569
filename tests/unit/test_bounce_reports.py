"""lifecycle/bounce_reports.py: DSNs, ARF reports and prose bounces read into what they report."""

from __future__ import annotations

import pytest

from lifecycle.bounce_reports import MAX_REASON, read_report
from tests.support.reports import arf, dsn

TO = "ana@example.com"
VERP = "bounces+12-0123456789abcdef01234567@shop.example"


@pytest.mark.parametrize(("action", "status", "expected"), [
    ("failed", "5.1.1", "hard_bounce"),  # no such user
    ("failed", "5.7.1", "hard_bounce"),  # refused by policy
    ("failed", "4.2.2", "soft_bounce"),  # mailbox full: the MTA gave up on a temporary failure
    ("failed", "5.4.7", "soft_bounce"),  # delivery time expired: the mailbox may come back
    ("delayed", "4.4.1", "soft_bounce"),  # a warning: still trying
    ("delivered", "2.0.0", "ignored"),
    ("relayed", "2.0.0", "ignored"),
    ("expanded", "2.0.0", "ignored"),
])
def test_a_dsn_counts_by_its_recipients_action_and_status(action: str, status: str, expected: str) -> None:
    report = read_report(dsn(TO, VERP, action=action, status=status))
    assert report.kind == expected
    assert report.reason.startswith(status)


def test_a_dsn_keeps_its_status_and_diagnostic_as_the_reason() -> None:
    report = read_report(dsn(TO, VERP))
    assert report == report.__class__(
        "hard_bounce", f"5.1.1 smtp; 550 5.1.1 <{TO}>: Recipient address rejected: User unknown")


def test_a_failed_recipient_without_an_enhanced_status_counts_by_its_reply_code() -> None:
    assert read_report(dsn(TO, VERP, status="", diagnostic="smtp; 550 no mailbox here")).kind == "hard_bounce"
    assert read_report(dsn(TO, VERP, status="", diagnostic="smtp; 452 too much mail")).kind == "soft_bounce"
    assert read_report(dsn(TO, VERP, status="", diagnostic=None)).kind == "hard_bounce"  # failed is final


def test_the_worst_of_several_recipients_counts() -> None:
    delivered = {"Final-Recipient": "rfc822; other@example.com", "Action": "delivered", "Status": "2.0.0"}
    assert read_report(dsn(TO, VERP, action="delayed", status="4.4.1",
                           extra_recipients=[delivered])).kind == "soft_bounce"
    hard = {"Final-Recipient": "rfc822; alias@example.com", "Action": "failed", "Status": "5.1.1"}
    assert read_report(dsn(TO, VERP, action="delayed", status="4.4.1", extra_recipients=[hard])).kind == "hard_bounce"


@pytest.mark.parametrize(("feedback_type", "expected"), [
    ("abuse", "complaint"), ("fraud", "complaint"), ("virus", "complaint"), ("other", "complaint"),
    ("Abuse", "complaint"), ("not-spam", "ignored"), ("auth-failure", "ignored"),
])
def test_an_arf_report_is_a_complaint_by_its_feedback_type(feedback_type: str, expected: str) -> None:
    report = read_report(arf(TO, VERP, feedback_type=feedback_type))
    assert report.kind == expected
    assert report.reason == f"feedback-type {feedback_type.lower()} from MailboxFBL/1.0"


def test_a_feedback_report_without_its_type_is_unreadable() -> None:
    raw = arf(TO, VERP).replace(b"Feedback-Type: abuse\n", b"")
    assert read_report(raw).kind == "unreadable"


PROSE = (b"From: MAILER-DAEMON@mx.example.com\nTo: " + VERP.encode() + b"\nSubject: failure notice\n\n"
         b"Hi. This is the qmail-send program at mx.example.com.\nI'm afraid I wasn't able to deliver your message"
         b" to the following addresses.\n\n<ana@example.com>:\n%s\n")


@pytest.mark.parametrize(("line", "expected"), [
    (b"550 5.1.1 user unknown", "hard_bounce"),
    (b"452 4.2.2 mailbox over quota", "soft_bounce"),
    (b"Remote host said: 550 Requested action not taken: mailbox unavailable", "hard_bounce"),
    (b"Sorry, I couldn't find any host named example.com. (#5.1.2)", "hard_bounce"),
])
def test_a_bounce_in_prose_counts_by_the_first_status_in_its_text(line: bytes, expected: str) -> None:
    report = read_report(PROSE % line)
    assert report.kind == expected
    assert report.reason == line.decode()


def test_exims_failed_recipients_header_marks_a_bounce_whatever_its_subject() -> None:
    raw = (b"From: Sender <noreply@mx.example.com>\nX-Failed-Recipients: ana@example.com\nSubject: Hm\n\n"
           b"A message that you sent could not be delivered.\n  ana@example.com\n    SMTP error from remote mail"
           b" server after RCPT TO:<ana@example.com>:\n    550 5.1.1 The email account does not exist\n")
    assert read_report(raw).kind == "hard_bounce"


def test_auto_replies_ask_nothing_and_other_mail_is_unreadable() -> None:
    vacation = b"From: ana@example.com\nAuto-Submitted: auto-replied\nSubject: Re: Welcome\n\nAway until 5.1.\n"
    assert read_report(vacation).kind == "ignored"
    out_of_office = b"From: ana@example.com\nSubject: Out of Office: Welcome\n\nBack on Monday (550 km away)\n"
    assert read_report(out_of_office).kind == "ignored"
    assert read_report(b"From: ana@example.com\nSubject: hello\n\n550 5.1.1 friends\n").kind == "unreadable"
    assert read_report(b"From: MAILER-DAEMON@mx.example.com\nSubject: Undeliverable\n\nsorry\n").kind == "unreadable"
    assert read_report(b"\x00\xff garbage \r\n\r\n\xfe").kind == "unreadable"
    assert read_report(b"").kind == "unreadable"


def test_a_reason_is_one_line_without_control_characters_and_bounded() -> None:
    report = read_report(dsn(TO, VERP, diagnostic="smtp; 550 " + "x\x01" * 2000))
    assert report.kind == "hard_bounce"
    assert len(report.reason) == MAX_REASON and "\x01" not in report.reason and "\n" not in report.reason
