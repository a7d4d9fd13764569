"""The scenario runner sends events with a write key and reads customers with an admin key."""

from __future__ import annotations

import httpx
import pytest

from lifecycle.scenario import ScenarioError, ScopedKeyAuth, first_plain_key


async def test_each_route_gets_the_key_of_its_scope() -> None:
    seen: dict[str, str | None] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        seen[request.url.path] = request.headers.get("Authorization")
        return httpx.Response(200)

    auth = ScopedKeyAuth(write_key="write-1", admin_key="admin-1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://ingest", auth=auth) as client:
        await client.post("/v1/events", json={})
        await client.get("/v1/customers/c1")
        await client.get("/v1/admin/journeys/")
        await client.post("/v1/unsubscribe/tok", headers={"Authorization": ""})
        await client.get("/v1/preferences/tok")
    assert seen == {
        "/v1/events": "Bearer write-1",
        "/v1/customers/c1": "Bearer admin-1",
        "/v1/admin/journeys/": "Bearer admin-1",
        "/v1/unsubscribe/tok": "",  # a mail client's one-click carries no key
        "/v1/preferences/tok": None,
    }


def test_thefirst_plain_key_is_used_and_hashes_cannot_be() -> None:
    assert first_plain_key("sha256:" + "a" * 64 + ", admin-1, admin-2", "LIFECYCLE_ADMIN_KEYS") == "admin-1"
    with pytest.raises(ScenarioError, match="one plain key in LIFECYCLE_ADMIN_KEYS"):
        first_plain_key("SHA256:" + "a" * 64, "LIFECYCLE_ADMIN_KEYS")
