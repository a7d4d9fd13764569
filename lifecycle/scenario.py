"""Plays scenario files (see shared/scenarios/README.md) through the real pipeline.

Each file starts from empty state on the virtual clock; expectations are checked
only once the pipeline is idle (lifecycle.idle), never after a fixed sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devstack import restart_services
from devstack.smtp_sink import clear_messages, mail_dir, read_messages
from lifecycle.clock import set_virtual_time, virtual_time_is_set
from lifecycle.core.durations import parse_duration
from lifecycle.db.queries import iso
from lifecycle.idle import PipelineWatch
from lifecycle.settings import Settings
from lifecycle.yamlio import load_plain

STATE_TABLES = ("sends", "journey_runs", "processed_triggers", "outbox", "due_changes", "processed_events",
                "customers", "email_events", "suppressions", "coupons", "coupon_attempts", "orders",
                "customer_products", "product_sales", "co_purchases", "consent_fences", "campaigns", "erasures",
                "aliases")
STEP_KINDS = ("event", "events", "advance", "expect_emails", "expect_customer", "unsubscribe", "journey", "campaign",
              "cancel_campaign")


class ScenarioError(Exception):
    """The file itself is wrong (not the pipeline)."""


def load_scenario(path: Path) -> dict[str, Any]:
    try:
        # timestamps stay the strings written, so they reach the API untouched; `on:` stays a key
        data = load_plain(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: cannot read: {exc}") from None
    if not isinstance(data, dict) or "start" not in data or not isinstance(data.get("steps"), list):
        raise ScenarioError(f"{path}: a scenario needs `start` and a list of `steps`")
    for index, step in enumerate(data["steps"]):
        kinds = [k for k in STEP_KINDS if isinstance(step, dict) and k in step]
        if len(kinds) != 1:
            raise ScenarioError(f"{path}: step {index + 1}: expected exactly one of {', '.join(STEP_KINDS)}")
    return data


def parse_time(value: str) -> datetime:
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# what an email is counted by: (to, "journey", journey, step) or (to, "campaign", campaign, 0)
EmailKey = tuple[str, str, str, int]


@dataclass
class Delivered:
    to: str
    journey: str
    step: int
    subject: str
    body: str
    message: EmailMessage
    campaign: str | None = None

    def key(self) -> EmailKey:
        if self.campaign is not None:
            return (self.to, "campaign", self.campaign, 0)
        return (self.to, "journey", self.journey, self.step)


def expected_key(item: dict[str, Any]) -> EmailKey:
    """An expect_emails entry's key: `campaign: NAME`, or `journey` and `step`."""
    if "campaign" in item:
        return (str(item["to"]).lower(), "campaign", str(item["campaign"]), 0)
    return (str(item["to"]).lower(), "journey", str(item["journey"]), int(item["step"]))


def describe(key: EmailKey) -> str:
    to, kind, name, step = key
    return f"to={to} campaign={name}" if kind == "campaign" else f"to={to} journey={name} step={step}"


@dataclass
class Outcome:
    name: str
    path: Path
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def _delivered(message: EmailMessage) -> Delivered:
    # body_contains looks at what a reader sees: the text part first, then the HTML part
    parts = [message.get_body(preferencelist=(kind,)) for kind in ("plain", "html")]
    body = "\n".join(str(part.get_content()) for part in parts if part is not None)
    campaign = message["X-Lifecycle-Campaign"]
    return Delivered(
        to=str(message["To"]).strip().lower(),
        journey=str(message["X-Lifecycle-Journey"]),
        step=int(str(message["X-Lifecycle-Step"] or 0)),
        subject=str(message["Subject"]),
        body=str(body),
        message=message,
        campaign=str(campaign) if campaign is not None else None,
    )


def compare_emails(expected: list[dict[str, Any]], delivered: list[Delivered]) -> list[str]:
    """Multiset comparison by (to, journey, step) or (to, campaign), then content checks; returns readable
    differences."""
    want = Counter(expected_key(e) for e in expected)
    got = Counter(d.key() for d in delivered)
    problems: list[str] = []
    for key in sorted(want - got):
        problems.append(f"  missing:    {describe(key)}")
    for key in sorted(got - want):
        problems.append(f"  unexpected: {describe(key)}")
    for item in expected:
        key = expected_key(item)
        matches = [d for d in delivered if d.key() == key]
        if not matches:
            continue
        if "subject_contains" in item and not any(item["subject_contains"] in d.subject for d in matches):
            problems.append(f"  {describe(key)}: subject {matches[0].subject!r} lacks {item['subject_contains']!r}")
        if "body_contains" in item and not any(item["body_contains"] in d.body for d in matches):
            problems.append(f"  {describe(key)}: body lacks {item['body_contains']!r}")
    return problems


def _same(expected: object, actual: object) -> bool:
    if isinstance(expected, str) and isinstance(actual, str):
        try:
            return parse_time(expected) == parse_time(actual)
        except ValueError:
            return expected == actual
    if isinstance(expected, int | float) and isinstance(actual, int | float) and not isinstance(expected, bool):
        return abs(float(expected) - float(actual)) < 1e-9
    return expected == actual


def first_plain_key(spec: str, setting: str) -> str:
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    plain = [k for k in keys if not k.lower().startswith("sha256:")]
    if not plain:
        raise ScenarioError(f"the scenario runner needs one plain key in {setting} (hashes cannot be sent)")
    return plain[0]


class ScopedKeyAuth(httpx.Auth):
    """The write key on POST /v1/events, the admin key on customer reads and admin routes; nothing
    elsewhere (the links in emails carry their own token) and never over an explicit Authorization."""

    def __init__(self, write_key: str, admin_key: str) -> None:
        self.write_key = write_key
        self.admin_key = admin_key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        path = request.url.path
        if "Authorization" not in request.headers:
            if path.startswith(("/v1/customers/", "/v1/admin/")):
                request.headers["Authorization"] = f"Bearer {self.admin_key}"
            elif path == "/v1/events":
                request.headers["Authorization"] = f"Bearer {self.write_key}"
        yield request


class ScenarioRunner:
    def __init__(self, settings: Settings, engine: AsyncEngine, watch: PipelineWatch) -> None:
        self.settings = settings
        self.engine = engine
        self.watch = watch
        self.sink_dir = mail_dir(settings)
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.ingest_port}",
            auth=ScopedKeyAuth(write_key=self.api_key(), admin_key=self.admin_key()),
            timeout=30,
        )
        self._consumed = 0
        self._log: list[Delivered] = []
        self._overrides: dict[str, Any] = {}

    def api_key(self) -> str:
        """The write key the runner sends events with: the first plain key of LIFECYCLE_API_KEYS."""
        return first_plain_key(self.settings.api_keys, "LIFECYCLE_API_KEYS")

    def admin_key(self) -> str:
        """The admin key the runner reads customers with: the first plain key of LIFECYCLE_ADMIN_KEYS."""
        return first_plain_key(self.settings.admin_keys, "LIFECYCLE_ADMIN_KEYS")

    async def close(self) -> None:
        await self.http.aclose()

    async def reset(self, start: datetime) -> None:
        if await virtual_time_is_set(self.engine):
            await self.watch.wait_idle()  # what an earlier file left in flight must not leak into this one
        async with self.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {', '.join(STATE_TABLES)}"))
            # journeys and campaigns a scenario applied last only for that scenario: the files' versions are
            # current again
            await conn.execute(text("DELETE FROM journey_versions WHERE source IN ('api', 'campaign')"))
        await set_virtual_time(self.engine, start)
        clear_messages(self.sink_dir)
        self._consumed = 0
        self._log = []

    def new_emails(self) -> list[Delivered]:
        messages = read_messages(self.sink_dir)
        fresh = [_delivered(m) for m in messages[self._consumed:]]
        self._consumed = len(messages)
        self._log.extend(fresh)
        return fresh

    async def _event(self, raw: dict[str, Any]) -> dict[str, Any]:
        event = dict(raw)
        event.setdefault("event_id", f"sc-{uuid.uuid4()}")
        if "occurred_at" not in event:
            event["occurred_at"] = iso(await self.watch.clock.now())
        return event

    async def _post(self, body: object, expect_status: int | None, where: str, failures: list[str]) -> None:
        response = await self.http.post("/v1/events", json=body)
        wanted = expect_status if expect_status is not None else 202
        if response.status_code != wanted:
            failures.append(f"{where}: POST /v1/events answered {response.status_code}, expected {wanted}: "
                            f"{response.text[:300]}")

    async def run(self, path: Path) -> Outcome:
        return await self.play(load_scenario(path), path)

    @property
    def delivered(self) -> list[Delivered]:
        """Every email delivered since the scenario started."""
        self.new_emails()
        return list(self._log)

    async def play(self, data: dict[str, Any], path: Path, check_end: bool = True) -> Outcome:
        outcome = Outcome(str(data.get("name", path.stem)), path)
        failures = outcome.failures
        await self.configure(path, data.get("config") or {})
        await self.reset(parse_time(data["start"]))
        steps: list[dict[str, Any]] = list(data["steps"])
        if check_end and (not steps or "expect_emails" not in steps[-1]):
            steps.append({"expect_emails": []})  # a scenario ends with an implied expect_emails: []
        for number, step in enumerate(steps, start=1):
            where = f"step {number}"
            if "event" in step:
                await self._post(await self._event(step["event"]), step.get("expect_status"), where, failures)
            elif "events" in step:
                batch = [await self._event(e) for e in step["events"]]
                await self._post({"events": batch}, step.get("expect_status"), where, failures)
            elif "advance" in step:
                target = await self.watch.clock.now() + parse_duration(str(step["advance"]))
                await self.watch.advance_to(target)
            elif "expect_emails" in step:
                await self.watch.wait_idle()
                expected = list(step["expect_emails"] or [])
                delivered = self.new_emails()
                problems = compare_emails(expected, delivered)
                if problems:
                    failures.append(f"{where} (expect_emails at {iso(await self.watch.clock.now())}):\n"
                                    + "\n".join(problems))
            elif "expect_customer" in step:
                await self.watch.wait_idle()
                fields = dict(step["expect_customer"])
                customer_id = fields.pop("customer_id")
                response = await self.http.get(f"/v1/customers/{customer_id}")
                if response.status_code != 200:
                    failures.append(f"{where}: GET customer {customer_id} answered {response.status_code}")
                    continue
                actual = response.json()
                for name, value in fields.items():
                    if not _same(value, actual.get(name)):
                        failures.append(f"{where}: customer {customer_id} {name}: expected {value!r}, "
                                        f"got {actual.get(name)!r}")
            elif "journey" in step:
                await self._apply_journey(step["journey"], where, failures)
            elif "campaign" in step:
                await self._admin_post("/v1/admin/campaigns", step["campaign"], "campaign", where, failures)
            elif "cancel_campaign" in step:
                await self.watch.wait_idle()
                name = str(step["cancel_campaign"])
                await self._admin_post(f"/v1/admin/campaigns/{name}/cancel", None, "campaign", where, failures)
                await self.watch.wait_idle()
            elif "unsubscribe" in step:
                await self.watch.wait_idle()
                await self._unsubscribe(str(step["unsubscribe"]).lower(), where, failures)
                await self.watch.wait_idle()
        return outcome

    async def configure(self, path: Path, overrides: dict[str, Any], drain: bool = True) -> None:
        """Restart the services with the file's settings when they differ from the running ones."""
        if not isinstance(overrides, dict):
            raise ScenarioError(f"{path}: config must be a mapping of setting names to values")
        unknown = sorted(set(overrides) - set(Settings.model_fields))
        if unknown:
            raise ScenarioError(f"{path}: unknown settings in config: {', '.join(unknown)} (see docs/settings.md)")
        if overrides == self._overrides:
            return
        try:
            configured = Settings.model_validate({**self.settings.model_dump(), **overrides})
        except ValueError as exc:
            raise ScenarioError(f"{path}: invalid config: {exc}") from None
        if drain and await virtual_time_is_set(self.engine):
            await self.watch.wait_idle()
        await asyncio.to_thread(restart_services, configured)
        self._overrides = dict(overrides)

    async def _apply_journey(self, definition: object, where: str, failures: list[str]) -> None:
        """Apply a journey written inline, as `lifecycle journeys apply` would; it must be accepted."""
        await self._admin_post("/v1/admin/journeys", definition, "journey", where, failures)

    async def _admin_post(self, url: str, definition: object, what: str, where: str, failures: list[str]) -> None:
        """POST a journey or a campaign (or nothing) to the admin API with the admin key; it must be
        accepted, else the answer's every problem is a failure."""
        if definition is not None and not isinstance(definition, dict):
            raise ScenarioError(f"{where}: {what} must be a mapping in the {what} file format")
        response = await self.http.post(url, json=definition) if definition is not None else \
            await self.http.post(url)
        if response.status_code not in (200, 201):
            try:
                body = response.json()
                detail = "; ".join([str(body.get("detail"))] + [
                    f"{e['field']}: {e['message']}" for e in body.get("errors", [])])
            except ValueError:
                detail = response.text[:300]
            name = definition.get("name") if definition is not None else url
            failures.append(f"{where}: {what} {name!r} was refused ({response.status_code}): {detail}")

    async def _unsubscribe(self, address: str, where: str, failures: list[str]) -> None:
        self.new_emails()
        latest = [d for d in self._log if d.to == address]
        if not latest:
            failures.append(f"{where}: no email to {address} to unsubscribe from")
            return
        header = str(latest[-1].message.get("List-Unsubscribe", "")).strip()
        url = header.strip("<>")
        if not url.startswith("http"):
            failures.append(f"{where}: the latest email to {address} has no List-Unsubscribe URL")
            return
        response = await self.http.post(url, content=b"List-Unsubscribe=One-Click",
                                        headers={"Content-Type": "application/x-www-form-urlencoded",
                                                 "Authorization": ""})
        if response.status_code >= 300:
            failures.append(f"{where}: one-click unsubscribe answered {response.status_code}: {response.text[:200]}")
