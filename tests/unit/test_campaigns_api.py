"""The admin campaign routes of the ingest API with an in-process fake store (no database): what each
kind of bad request is answered, and what the OpenAPI document says a campaign is."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import OperationalError

from lifecycle.campaign_catalog import CampaignConflict, CampaignInfo, Saved, check_campaign
from lifecycle.clock import ManualClock
from lifecycle.journey_catalog import definition_text
from lifecycle.settings import Settings
from lifecycle.templates import Templates
from services.ingest.app import create_app
from tests.support.ingest import FakeProducer, lifespan_client

NOW = datetime(2027, 1, 2, 9, 0, tzinfo=UTC)
ADMIN = {"Authorization": "Bearer admin-key"}
WRITE = {"Authorization": "Bearer write-key"}
TEMPLATES = Templates(None)
SALE = {"name": "sale", "category": "offers", "segment": "vip", "template": "winter_sales",
        "send_at": "2027-01-07T10:00:00"}


@dataclass
class FakeCampaigns:
    """Checks like the real store; keeps campaigns in memory, started ones refuse a change."""

    stored: dict[str, CampaignInfo] = field(default_factory=dict)
    started: set[str] = field(default_factory=set)
    down: bool = False

    async def save(self, value: dict[str, Any], origin: str) -> Saved:
        if self.down:
            raise OperationalError("INSERT", {}, Exception("connection refused"))
        campaign = check_campaign(value, TEMPLATES, None)
        definition = definition_text(value)
        old = self.stored.get(campaign.name)
        if old is not None and old.definition == definition:
            return Saved(old, "unchanged")
        if campaign.name in self.started:
            raise CampaignConflict(f"campaign {campaign.name!r} is started: give the new one another name")
        info = CampaignInfo(campaign.name, "api", origin, "scheduled", campaign.send_at.earliest(), NOW, NOW, None,
                            None, None, None, definition)
        self.stored[campaign.name] = info
        return Saved(info, "replaced" if old is not None else "created")

    async def campaigns(self, name: str | None) -> list[CampaignInfo]:
        return [c for n, c in self.stored.items() if name is None or n == name]

    async def cancel(self, name: str) -> CampaignInfo | None:
        return self.stored.get(name)


def _app(campaigns: FakeCampaigns | None) -> Any:
    settings = Settings(api_keys="write-key", admin_keys="sha256:" + hashlib.sha256(b"admin-key").hexdigest(),
                        signing_secret="s", public_url="http://test")
    return create_app(settings, ManualClock(NOW), lambda: FakeProducer(), campaign_store=campaigns)


async def test_a_campaign_is_scheduled_replaced_and_refused_once_started() -> None:
    campaigns = FakeCampaigns()
    async with lifespan_client(_app(campaigns)) as client:
        created = await client.post("/v1/admin/campaigns", json=SALE, headers=ADMIN)
        assert created.status_code == 201 and created.json()["outcome"] == "created"
        assert created.json()["start_at"] == "2027-01-06T20:00:00Z" and created.json()["local_time"] is True
        assert (await client.post("/v1/admin/campaigns", json=SALE, headers=ADMIN)).json()["outcome"] == "unchanged"
        changed = {**SALE, "template": "new_year"}
        replaced = await client.post("/v1/admin/campaigns", json=changed, headers=ADMIN)
        assert replaced.status_code == 200 and replaced.json()["outcome"] == "replaced"
        campaigns.started.add("sale")
        conflict = await client.post("/v1/admin/campaigns", json=SALE, headers=ADMIN)
        assert conflict.status_code == 409 and "another name" in conflict.json()["detail"]


async def test_bad_requests_get_a_clear_answer() -> None:
    async with lifespan_client(_app(FakeCampaigns())) as client:
        assert (await client.post("/v1/admin/campaigns", json=SALE, headers=WRITE)).status_code == 403
        assert (await client.post("/v1/admin/campaigns", json=SALE)).status_code == 401
        not_json = await client.post("/v1/admin/campaigns", content=b"name: sale",
                                     headers={**ADMIN, "Content-Type": "application/yaml"})
        assert not_json.status_code == 415 and "lifecycle campaigns apply" in not_json.json()["detail"]
        broken = await client.post("/v1/admin/campaigns", content=b"{", headers={**ADMIN,
                                                                             "Content-Type": "application/json"})
        assert broken.status_code == 400
        listed = await client.post("/v1/admin/campaigns", json=[SALE], headers=ADMIN)
        assert listed.status_code == 400 and "one campaign" in listed.json()["detail"]
        huge = await client.post("/v1/admin/campaigns", json={**SALE, "description": "x" * 70_000}, headers=ADMIN)
        assert huge.status_code == 413
        invalid = await client.post("/v1/admin/campaigns", headers=ADMIN, json={
            **SALE, "segment": "nope", "coupon": {"kind": {}, "amount": 5}, "max_per_minute": None,
            "variants": [{"name": "a", "template": None}, {"name": "a"}]})
        assert invalid.status_code == 422
        fields = {e["field"] for e in invalid.json()["errors"]}
        assert {"coupon.kind", "max_per_minute", "variants[0].template"} <= fields
        assert (await client.get("/v1/admin/campaigns/nope", headers=ADMIN)).status_code == 404
        assert (await client.get("/v1/admin/campaigns/bad%20name", headers=ADMIN)).status_code == 422


async def test_without_a_store_or_a_database_the_answer_is_503_with_retry_after() -> None:
    for app in (_app(None), _app(FakeCampaigns(down=True))):
        async with lifespan_client(app) as client:
            answer = await client.post("/v1/admin/campaigns", json=SALE, headers=ADMIN)
            assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"


async def test_the_openapi_document_describes_a_campaign() -> None:
    async with lifespan_client(_app(FakeCampaigns())) as client:
        document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/v1/admin/campaigns"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["name", "category", "segment", "template", "send_at"]
    named, inline = body["properties"]["segment"]["oneOf"]
    assert "vip" in named["enum"] and inline == {"$ref": "#/components/schemas/SegmentFilter"}
    assert {"black_friday", "christmas", "new_year", "summer_sales", "winter_sales"} <= \
        set(body["properties"]["template"]["enum"])
    assert set(document["paths"]["/v1/admin/campaigns/{name}/cancel"]["post"]["responses"]) >= {"200", "404"}
