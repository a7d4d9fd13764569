"""The admin journey routes and the opt-out fences of the ingest API, with in-process fakes (no database)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from lifecycle.clock import ManualClock
from lifecycle.journey_catalog import Applied, RunsPolicy, VersionInfo, digest, parse_definition
from lifecycle.journey_files import JourneyError, Problem
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.ingest.app import Fence, create_app
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WRITE = {"Authorization": "Bearer write-key"}
ADMIN = {"Authorization": "Bearer admin-key"}
TEMPLATES = Templates(None)


@dataclass
class FakeJourneys:
    """Validates like the real store; keeps versions in memory."""

    stored: list[VersionInfo] = field(default_factory=list)
    runs: list[RunsPolicy] = field(default_factory=list)
    down: bool = False

    async def apply(self, definition: str, runs: RunsPolicy, origin: str) -> Applied:
        if self.down:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        journey = parse_definition(definition, "<request>", TEMPLATES)
        current = [v for v in self.stored if v.journey == journey.name]
        if current and current[-1].digest == digest(definition):
            return Applied(current[-1], created=False)
        info = VersionInfo(len(self.stored) + 1, journey.name, len(current) + 1, "api", origin,
                           digest(definition), False, NOW, definition)
        self.stored.append(info)
        self.runs.append(runs)
        return Applied(info, created=True)

    async def versions(self, journey: str | None) -> list[VersionInfo]:
        return [v for v in self.stored if journey is None or v.journey == journey]


@dataclass
class FakeFences:
    written: list[Fence] = field(default_factory=list)
    down: bool = False

    async def __call__(self, fences: list[Fence]) -> None:
        if self.down:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        self.written.extend(fences)


def _app(journeys: FakeJourneys | None = None, fences: FakeFences | None = None,
         producer: FakeProducer | None = None) -> Any:
    settings = Settings(api_keys="write-key", admin_keys="sha256:" + hashlib.sha256(b"admin-key").hexdigest(),
                        signing_secret="s", public_url="http://test")
    return create_app(settings, ManualClock(NOW), lambda: producer or FakeProducer(),
                      fence_writer=fences, journey_store=journeys)


QUICK = {"name": "quick_hello", "entry": {"trigger": "signed_up"},
         "steps": [{"send": {"template": "prospect_welcome_1", "id": "hello"}}]}


async def test_a_journey_is_applied_once_and_listed_with_its_versions() -> None:
    journeys = FakeJourneys()
    async with lifespan_client(_app(journeys)) as client:
        created = await client.post("/v1/admin/journeys", json=QUICK, headers=ADMIN)
        again = await client.post("/v1/admin/journeys", json=QUICK, headers=ADMIN)
        changed = await client.post("/v1/admin/journeys?runs=migrate", headers=ADMIN, json={
            **QUICK, "steps": [{"send": {"template": "prospect_welcome_2", "id": "hello"}}]})
        as_yaml = await client.post("/v1/admin/journeys", headers={**ADMIN, "Content-Type": "application/yaml"},
                                    content=b"name: quick_hello")
        bad_runs = await client.post("/v1/admin/journeys?runs=later", headers=ADMIN, json=QUICK)
        listed = await client.get("/v1/admin/journeys", headers=ADMIN)
        shown = await client.get("/v1/admin/journeys/quick_hello", headers=ADMIN)
        missing = await client.get("/v1/admin/journeys/nothing_here", headers=ADMIN)
    assert created.status_code == 201 and created.json()["version"] == 1 and created.json()["created"]
    assert again.status_code == 200 and again.json()["version"] == 1 and not again.json()["created"]
    assert changed.status_code == 201 and changed.json()["version"] == 2
    assert as_yaml.status_code == 415 and bad_runs.status_code == 400
    assert journeys.runs == ["keep", "migrate"]
    [view] = listed.json()["journeys"]
    assert view["name"] == "quick_hello" and view["current_version"] == 2
    assert [v["version"] for v in view["versions"]] == [1, 2] and "definition" not in view["versions"][0]
    assert "prospect_welcome_2" in shown.json()["versions"][1]["definition"]
    assert missing.status_code == 404


async def test_an_invalid_journey_is_refused_with_every_problem_and_where() -> None:
    bad = {"name": "broken", "entry": {"trigger": "no_such_trigger"},
           "steps": [{"send": {"template": "no_such_template"}}, {"wait": "soon"}]}
    async with lifespan_client(_app(FakeJourneys())) as client:
        response = await client.post("/v1/admin/journeys", json=bad, headers=ADMIN)
    assert response.status_code == 422
    body = response.json()
    fields = {e["field"] for e in body["errors"]}
    assert {"entry.trigger", "steps[0].send.template", "steps[1].wait"} <= fields
    assert all(e["line"] >= 1 for e in body["errors"])
    assert "nothing was applied" in body["detail"]


@pytest.mark.parametrize(("headers", "content", "status"), [
    ({"Content-Type": "application/json"}, b"[1, 2]", 400),
    ({"Content-Type": "application/json"}, b"{not json", 400),
    ({"Content-Type": "text/plain"}, b"name: x", 415),
    ({"Content-Type": "application/json"}, b"\xff\xfe", 400),
    ({"Content-Type": "application/json"}, b"{" + b" " * 70_000 + b"}", 413),
])
async def test_a_body_that_is_no_journey_gets_a_clear_answer(headers: dict[str, str], content: bytes,
                                                           status: int) -> None:
    async with lifespan_client(_app(FakeJourneys())) as client:
        response = await client.post("/v1/admin/journeys", headers={**ADMIN, **headers}, content=content)
    assert response.status_code == status
    assert response.json()["detail"]


async def test_journeys_need_an_admin_key_and_a_store() -> None:
    async with lifespan_client(_app(FakeJourneys(down=True))) as client:
        as_writer = await client.post("/v1/admin/journeys", json=QUICK, headers=WRITE)
        anonymous = await client.get("/v1/admin/journeys")
        unavailable = await client.post("/v1/admin/journeys", json=QUICK, headers=ADMIN)
    assert as_writer.status_code == 403 and anonymous.status_code == 401
    assert unavailable.status_code == 503 and unavailable.headers["Retry-After"]
    async with lifespan_client(_app(None)) as client:
        assert (await client.get("/v1/admin/journeys", headers=ADMIN)).status_code == 503


# --- opt-out fences -------------------------------------------------------------------------------


async def test_opt_outs_are_fenced_before_the_api_answers() -> None:
    fences = FakeFences()
    batch = {"events": [
        {"event_id": "u1", "type": "unsubscribed", "customer_id": "c1"},
        {"event_id": "p1", "type": "customer_updated", "customer_id": "c2",
         "traits": {"unsubscribed_categories": ["offers", "news"]}},
        {"event_id": "o1", "type": "customer_updated", "customer_id": "c3", "traits": {"consent": "opted_out"}},
        {"event_id": "i1", "type": "customer_updated", "customer_id": "c4", "traits": {"consent": "opted_in"}},
    ]}
    async with lifespan_client(_app(fences=fences)) as client:
        response = await client.post("/v1/events", json=batch, headers=WRITE)
    assert response.status_code == 202
    assert sorted((f.customer_id, f.event_id, f.category) for f in fences.written) == [
        ("c1", "u1", "*"), ("c2", "p1", "news"), ("c2", "p1", "offers"), ("c3", "o1", "*")]


async def test_an_opt_out_that_cannot_be_fenced_is_a_503_to_retry() -> None:
    async with lifespan_client(_app(fences=FakeFences(down=True))) as client:
        refused = await client.post("/v1/events", headers=WRITE, json={
            "event_id": "u1", "type": "unsubscribed", "customer_id": "c1"})
        other = await client.post("/v1/events", headers=WRITE, json={
            "event_id": "v1", "type": "page_viewed", "customer_id": "c1", "properties": {"url": "https://x.example/"}})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert other.status_code == 202  # only opt-outs need the database


def test_the_definition_check_names_the_request_and_the_size() -> None:
    with pytest.raises(JourneyError) as caught:
        parse_definition("x" * 70_000, "<request>", TEMPLATES)
    assert caught.value.problems == [Problem(Path("<request>"), 1, "(file)", "larger than 65536 bytes")]


async def test_the_unsubscribe_link_fences_too() -> None:
    from lifecycle.tokens import SigningKeys, unsubscribe_token

    fences = FakeFences()
    app = _app(fences=fences)
    token = unsubscribe_token(SigningKeys.from_settings(Settings(signing_secret="s")), "c9", "<m@x>")
    async with lifespan_client(app) as client:
        response = await client.post(f"/v1/unsubscribe/{token}", content=b"List-Unsubscribe=One-Click",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200
    assert [(f.customer_id, f.category) for f in fences.written] == [("c9", "*")]
