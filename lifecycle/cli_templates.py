"""`lifecycle templates preview|send-test`: look at an email before customers do.

    lifecycle templates preview abandoned_cart 2 --locale en --png
    lifecycle templates send-test post_purchase 1 --customer c-42 --to me@shop.example

The email is composed exactly as the dispatcher composes it (template, locale, coupon,
recommendations, tracked links, headers), from sample data or a real customer's profile.
Its links carry the customer id `preview` and a message id that no send has: a click or an
unsubscribe in a preview or a test email changes no real customer.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lifecycle.core.journeys import Journey, SendStep
from lifecycle.settings import Settings
from lifecycle.templates import SAMPLE_CONTEXT, SAMPLE_POSTAL_ADDRESS, TemplateError, Templates
from lifecycle.tokens import SigningKeys

PREVIEW_CUSTOMER_ID = "preview"
CHROMIUM = "/usr/bin/chromium"
SCREENSHOT_TIMEOUT_SECONDS = 60


class PreviewError(Exception):
    """A problem to report in one line, without a stack trace."""


def add_templates_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    templates = subparsers.add_parser("templates", help="preview an email, or send a test one")
    sub = templates.add_subparsers(dest="templates_command", required=True)
    preview = sub.add_parser("preview", help="write an email's HTML, text and headers (and a PNG) to a folder")
    send_test = sub.add_parser("send-test", help="send one email through the configured SMTP server")
    for parser in (preview, send_test):
        parser.add_argument("journey", help="the journey's name, e.g. abandoned_cart")
        parser.add_argument("step", type=int, help="the send step's number, from 1")
        parser.add_argument("--locale", help="the language (default: the customer's, else LIFECYCLE_DEFAULT_LOCALE)")
        parser.add_argument("--template", help="for a step with branches or variants: which of its templates")
        who = parser.add_mutually_exclusive_group()
        who.add_argument("--customer", metavar="ID", help="personalise with this customer's profile (PostgreSQL)")
        who.add_argument("--sample", action="store_true", help="personalise with sample data (the default)")
    preview.add_argument("--out", type=Path, default=Path("preview"), help="output folder (default: ./preview)")
    preview.add_argument("--png", action="store_true", help="also a screenshot, with headless Chromium")
    send_test.add_argument("--to", required=True, metavar="ADDRESS", help="where to send the test email")


def run_templates_command(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.templates_command == "preview":
            return _preview(args, settings)
        return _send_test(args, settings)
    except (PreviewError, TemplateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


@dataclass(frozen=True)
class _Email:
    template: str
    locale: str
    message: Any  # EmailMessage
    links: list[dict[str, str]]


def _compose(args: argparse.Namespace, settings: Settings, to_address: str | None) -> _Email:
    from lifecycle.journey_files import JourneyError, load_journeys
    from services.dispatcher.compose import MessageSpec, compose_email

    templates = Templates(settings.journeys_dir, settings.default_locale)
    try:
        journeys = {j.name: j for j in load_journeys(settings.journeys_dir, templates)}
    except JourneyError as exc:
        raise PreviewError(f"invalid journeys:\n{exc}") from None
    journey = journeys.get(args.journey)
    if journey is None:
        raise PreviewError(f"no journey named {args.journey!r}; journeys are {', '.join(sorted(journeys))}")
    step = _send_step(journey, args.step)
    template = args.template or step.template
    if template not in step.templates():
        raise PreviewError(f"step {step.number} of {journey.name} has templates {', '.join(step.templates())}, "
                           f"not {template!r}")
    now = datetime.now(UTC).replace(microsecond=0)
    customer = _customer(settings, args.customer) if args.customer else dict(SAMPLE_CONTEXT["customer"])
    if args.locale:
        customer["locale"] = args.locale
    address = to_address or str(customer.get("email") or SAMPLE_CONTEXT["customer"]["email"])
    customer["customer_id"] = PREVIEW_CUSTOMER_ID
    domain = settings.mail_from_address.rpartition("@")[2] or "lifecycle.local"
    spec = MessageSpec(
        journey=journey.name, step=step.number, template=template,
        message_id=f"<preview.{journey.name}.{step.number}.{int(now.timestamp())}@{domain}>",
        to_address=address, customer=customer, context=copy.deepcopy(SAMPLE_CONTEXT["context"]),
        extras=_extras(journey, step, now, customer.get("timezone")), date=now,
    )
    if not settings.sender_address:
        # the footer shows where the shop's address goes; a real send cannot start without it outside local
        print(f"note: LIFECYCLE_SENDER_ADDRESS is not set; the footer shows a sample address: "
              f"{SAMPLE_POSTAL_ADDRESS}", file=sys.stderr)
        settings = settings.model_copy(update={"sender_address": SAMPLE_POSTAL_ADDRESS})
    composed = compose_email(settings, SigningKeys.from_settings(settings), templates, spec)
    return _Email(template, composed.locale, composed.message, composed.links)


def _send_step(journey: Journey, number: int) -> SendStep:
    steps = [s for s in journey.steps if isinstance(s, SendStep)]
    for step in steps:
        if step.number == number:
            return step
    raise PreviewError(f"{journey.name} has send steps 1 to {len(steps)}, not {number}")


def _extras(journey: Journey, step: SendStep, now: datetime, timezone: str | None) -> dict[str, Any]:
    """What the dispatcher would add for this step: a coupon (and offer, tier) and recommendations."""
    from services.dispatcher.offers import end_of_day

    extras: dict[str, Any] = {}
    spec = step.coupon
    if spec is not None:
        source = spec
        if spec.reuse_step is not None:
            earlier = [s for s in journey.steps if isinstance(s, SendStep) and s.number == spec.reuse_step]
            source = earlier[0].coupon if earlier and earlier[0].coupon is not None else spec
        tier = "silver" if source.by_tier else "bronze"
        amount = source.amount_for(tier) or 10.0
        prefix = "".join(part[0] for part in journey.name.split("_")).upper()
        extras["tier"] = tier
        extras["coupon"] = {"code": f"{prefix}-PREVIEW", "kind": source.kind, "amount": amount, "currency": "EUR",
                            "expires_at": end_of_day(now + source.valid, timezone)}
        if source.kind == "percent":
            extras["offer"] = {"percent": amount}
    if step.recommendations:
        sample = SAMPLE_CONTEXT.get("recommendations") or []
        extras["recommendations"] = copy.deepcopy(sample[: step.recommendations])
    return extras


def _customer(settings: Settings, customer_id: str) -> dict[str, Any]:
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.ext.asyncio import create_async_engine

    from lifecycle.db.queries import make_customer_reader

    async def read() -> dict[str, object] | None:
        engine = create_async_engine(settings.database_url)
        try:
            return await make_customer_reader(engine, settings)(customer_id)
        finally:
            await engine.dispose()

    try:
        profile = asyncio.run(read())
    except (SQLAlchemyError, OSError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise PreviewError(f"could not read customer {customer_id!r} from PostgreSQL: {detail} "
                           "(is the stack up? `lifecycle stack status`)") from None
    if profile is None:
        raise PreviewError(f"no customer {customer_id!r}")
    keep = ("email", "first_name", "last_name", "locale", "timezone", "birthday")
    return {key: profile.get(key) for key in keep}


def _preview(args: argparse.Namespace, settings: Settings) -> int:
    email = _compose(args, settings, None)
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreviewError(f"cannot create {out}: {exc.strerror}") from None
    stem = f"{email.template}.{email.locale}"
    html_part = email.message.get_body(preferencelist=("html",))
    text_part = email.message.get_body(preferencelist=("plain",))
    files = {
        out / f"{stem}.html": html_part.get_content() if html_part is not None else "",
        out / f"{stem}.txt": text_part.get_content() if text_part is not None else "",
        out / f"{stem}.headers.txt": "".join(f"{name}: {value}\n" for name, value in email.message.items()),
        out / f"{stem}.links.txt": "".join(f"{i}\t{link['name']}\t{link['url']}\n"
                                           for i, link in enumerate(email.links)),
    }
    for path, content in files.items():
        path.write_text(content, encoding="utf-8")
    (out / f"{stem}.eml").write_bytes(bytes(email.message))
    written = [*files, out / f"{stem}.eml"]
    if args.png:
        png = out / f"{stem}.png"
        screenshot(out / f"{stem}.html", png)
        written.append(png)
    print(f"subject: {email.message['Subject']}")
    for path in written:
        print(f"wrote {path}")
    return 0


def screenshot(html: Path, png: Path, width: int = 800, height: int = 1400) -> None:
    """A PNG of an HTML file, with headless Chromium (Debian's `chromium` package)."""
    chromium = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if chromium is None:
        raise PreviewError("Chromium is needed for --png and is not installed: apt-get install -y chromium")
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="lifecycle-chromium-") as profile:
        command = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            f"--screenshot={png.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars",
            html.resolve().as_uri(),
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=SCREENSHOT_TIMEOUT_SECONDS,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise PreviewError(f"Chromium took more than {SCREENSHOT_TIMEOUT_SECONDS} s to take the screenshot") \
                from None
    if not png.is_file():
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise PreviewError(f"Chromium made no screenshot (exit {result.returncode}): {detail}")


def _send_test(args: argparse.Namespace, settings: Settings) -> int:
    import aiosmtplib

    email = _compose(args, settings, args.to)

    async def send() -> None:
        await aiosmtplib.send(
            email.message, sender=settings.mail_from_address, recipients=[args.to],
            hostname=settings.smtp_host, port=settings.smtp_port, timeout=settings.smtp_timeout_seconds,
            use_tls=settings.smtp_tls == "implicit", start_tls=settings.smtp_tls == "starttls",
            username=settings.smtp_username, password=settings.smtp_password,
        )

    try:
        asyncio.run(send())
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise PreviewError(f"SMTP server {settings.smtp_host}:{settings.smtp_port} refused or unreachable: "
                           f"{exc}") from None
    print(f"sent {email.template} ({email.locale}) to {args.to} through {settings.smtp_host}:{settings.smtp_port}: "
          f"{email.message['Subject']}")
    return 0

