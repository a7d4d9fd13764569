"""Campaigns through the real pipeline: the admin API's answers, the audience written at the start (due
times per zone and throttling in SQL, as the pure core computes them), cancellation, and the
X-Lifecycle-Campaign header (docs/campaigns.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from lifecycle.cli import build_parser
from lifecycle.cli_campaigns import run_campaigns_command
from lifecycle.clock import set_virtual_time
from lifecycle.core.campaigns import SendAt, due_for, throttled
from lifecycle.report import build_report, render
from lifecycle.scenario import ScenarioRunner
from tests.support.stories import post

pytestmark = pytest.mark.integration
START = datetime(2027, 1, 5, 12, 0, tzinfo=UTC)
HERE = Path(__file__)
ZONES = {"cmp-tokyo": "Asia/Tokyo", "cmp-paris": "Europe/Paris", "cmp-ny": "America/New_York",
         "cmp-none": None, "cmp-lima": "America/Lima"}


def campaign(**change: Any) -> dict[str, Any]:
    return {"name": "sale", "category": "offers", "segment": {"orders_count": {"lte": 0}},
            "template": "winter_sales", "send_at": "2027-01-07T10:00:00", **change}


@pytest.fixture
async def shop(runner: ScenarioRunner) -> ScenarioRunner:
    await runner.configure(HERE, {})
    await runner.reset(START)
    history = (START - timedelta(days=20)).isoformat()  # no journey starts: the emails are the campaign's
    for customer, zone in ZONES.items():
        traits: dict[str, Any] = {"email": f"{customer}@example.com", "consent": "opted_in"}
        if zone:
            traits["timezone"] = zone
        await post(runner, {"type": "customer_signed_up", "customer_id": customer, "occurred_at": history,
                            "traits": traits})
    await post(runner, {"type": "customer_signed_up", "customer_id": "cmp-pending", "occurred_at": history,
                        "traits": {"email": "cmp-pending@example.com", "consent": "pending"}})
    await runner.watch.wait_idle()
    return runner


async def test_the_admin_api_schedules_replaces_lists_shows_and_cancels(shop: ScenarioRunner) -> None:
    http = shop.http
    refused = await http.post("/v1/admin/campaigns", json=campaign(name="bad name", category="spam",
                                                                    segment={"stage": ["nobody"]}, send_at="soon"))
    assert refused.status_code == 422
    fields = {e["field"] for e in refused.json()["errors"]}
    assert {"name", "category", "segment.stage", "send_at"} <= fields
    missing = await http.post("/v1/admin/campaigns", json=campaign(segment="no_such_segment"))
    assert missing.status_code == 422 and "no segment named" in missing.text

    created = await http.post("/v1/admin/campaigns", json=campaign())
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["outcome"] == "created" and body["status"] == "scheduled" and body["local_time"] is True
    assert body["start_at"] == "2027-01-06T20:00:00Z"  # 10:00 first comes at UTC+14
    again = await http.post("/v1/admin/campaigns", json=campaign())
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    replaced = await http.post("/v1/admin/campaigns", json=campaign(send_at="2027-01-08T09:00:00Z"))
    assert replaced.status_code == 200 and replaced.json()["outcome"] == "replaced"
    assert replaced.json()["start_at"] == "2027-01-08T09:00:00Z"

    listed = (await http.get("/v1/admin/campaigns")).json()["campaigns"]
    assert [c["name"] for c in listed] == ["sale"]
    shown = await http.get("/v1/admin/campaigns/sale")
    assert shown.status_code == 200 and "winter_sales" in shown.json()["definition"]
    assert (await http.get("/v1/admin/campaigns/nope")).status_code == 404
    assert (await http.post("/v1/admin/campaigns/nope/cancel")).status_code == 404

    cancelled = await http.post("/v1/admin/campaigns/sale/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert (await http.post("/v1/admin/campaigns/sale/cancel")).json()["status"] == "cancelled"
    conflict = await http.post("/v1/admin/campaigns", json=campaign())
    assert conflict.status_code == 409 and "another name" in conflict.json()["detail"]
    await shop.watch.advance_to(datetime(2027, 1, 9, tzinfo=UTC))
    assert shop.new_emails() == []


async def test_the_audience_is_written_at_the_start_each_due_at_their_own_moment(shop: ScenarioRunner) -> None:
    assert (await shop.http.post("/v1/admin/campaigns", json=campaign())).status_code == 201
    started_at = datetime(2027, 1, 6, 20, 0, tzinfo=UTC)
    await shop.watch.advance_to(started_at)
    async with shop.engine.connect() as conn:
        runs: dict[str, datetime] = dict((await conn.execute(text(
            "SELECT customer_id, due_at FROM journey_runs WHERE journey = 'campaign:sale'"))).all())
        row = (await conn.execute(text("SELECT status, audience, passed, started_at FROM campaigns"))).one()
    # the customer not opted in is not in it; one without a zone has the shop's (UTC)
    send_at = SendAt(local=datetime(2027, 1, 7, 10, 0))
    assert runs == {customer: due_for(send_at, ZoneInfo(zone or "UTC"), started_at, "send")
                    for customer, zone in ZONES.items()}
    assert runs["cmp-tokyo"] == datetime(2027, 1, 7, 1, 0, tzinfo=UTC)
    assert runs["cmp-ny"] == datetime(2027, 1, 7, 15, 0, tzinfo=UTC)
    assert (row.status, row.audience, row.passed, row.started_at) == ("started", 5, 0, started_at)

    await shop.watch.advance_to(datetime(2027, 1, 7, 9, 30, tzinfo=UTC))
    delivered = shop.new_emails()
    assert sorted(d.to for d in delivered) == ["cmp-paris@example.com", "cmp-tokyo@example.com"]  # 01:00, 09:00
    assert {d.campaign for d in delivered} == {"sale"}
    assert all(d.message["X-Lifecycle-Journey"] is None for d in delivered)
    shown = (await shop.http.get("/v1/admin/campaigns/sale")).json()
    assert shown["status"] == "sending" and shown["progress"]["sent"] == 2 and shown["progress"]["pending"] == 3

    # cancelled mid-send: nothing more goes, the runs say why
    assert (await shop.http.post("/v1/admin/campaigns/sale/cancel")).status_code == 200
    await shop.watch.advance_to(datetime(2027, 1, 8, tzinfo=UTC))
    assert shop.new_emails() == []
    shown = (await shop.http.get("/v1/admin/campaigns/sale")).json()
    assert shown["status"] == "cancelled" and shown["progress"]["cancelled"] == 3 and shown["progress"]["sent"] == 2


async def test_throttling_in_the_database_is_the_pure_spread(shop: ScenarioRunner) -> None:
    body = campaign(send_at="2027-01-05T12:00:00Z", max_per_minute=2, if_passed="send")
    assert (await shop.http.post("/v1/admin/campaigns", json=body)).status_code == 201
    await shop.watch.wait_idle()
    async with shop.engine.connect() as conn:
        # a run already sent has its due time on its send
        dues = [r.due for r in (await conn.execute(text(
            "SELECT coalesce(r.due_at, s.due_at) AS due FROM journey_runs r LEFT JOIN sends s USING (run_id)"
            " WHERE r.journey = 'campaign:sale' ORDER BY 1, r.customer_id"))).all()]
    assert dues == throttled([START] * 5, 2)
    assert dues[-1] == START + timedelta(minutes=2)
    await shop.watch.advance_to(START + timedelta(minutes=1))
    assert len(shop.new_emails()) == 3  # 12:00, 12:00:30, 12:01
    await shop.watch.advance_to(START + timedelta(minutes=2))
    assert len(shop.new_emails()) == 2


async def test_a_moment_passed_at_the_start_is_skipped_when_asked(shop: ScenarioRunner) -> None:
    # posted at 12:00 UTC for 10:00 local: passed in Tokyo, Paris and UTC, still to come in New York and Lima
    body = campaign(send_at="2027-01-05T10:00:00", if_passed="skip")
    assert (await shop.http.post("/v1/admin/campaigns", json=body)).status_code == 201
    await shop.watch.wait_idle()
    shown = (await shop.http.get("/v1/admin/campaigns/sale")).json()
    assert shown["audience"] == 2 and shown["passed"] == 3
    await shop.watch.advance_to(datetime(2027, 1, 6, tzinfo=UTC))
    assert sorted(d.to for d in shop.new_emails()) == ["cmp-lima@example.com", "cmp-ny@example.com"]


async def test_variants_coupons_and_the_report_rows(shop: ScenarioRunner) -> None:
    body = campaign(send_at="2027-01-05T12:00:00Z", template="black_friday",
                    coupon={"kind": "percent", "amount": 20, "valid": "4d"}, recommendations=2,
                    variants=[{"name": "a"}, {"name": "b", "subject": "Last call, {{ shop.name }}"}])
    assert (await shop.http.post("/v1/admin/campaigns", json=body)).status_code == 201
    await shop.watch.wait_idle()
    delivered = shop.new_emails()
    assert len(delivered) == 5 and {d.campaign for d in delivered} == {"sale"}
    async with shop.engine.connect() as conn:
        codes = (await conn.execute(text("SELECT code, journey, amount FROM coupons ORDER BY code"))).all()
        variants: dict[str, str] = dict((await conn.execute(text(
            "SELECT customer_id, variant FROM sends WHERE journey = 'campaign:sale'"))).all())
    assert len(codes) == 5 and all(c.code.startswith("S-") and c.amount == 20 for c in codes)
    for email in delivered:
        code = next(c.code for c in codes if c.code in email.body)
        assert code
        variant = variants[email.to.split("@")[0]]
        assert ("Last call" in email.subject) == (variant == "b")

    # a click in a campaign's email is tracked like a journey's, then an order is attributed to it
    first = delivered[0]
    link = re.findall(r"https?://\S+/t/c/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", first.body)[0]
    clicked = await shop.http.get(link.replace(shop.settings.public_url, ""), follow_redirects=False)
    assert clicked.status_code in (302, 303, 307), clicked.text
    customer = first.to.split("@")[0]
    await post(shop, {"type": "order_placed", "customer_id": customer, "properties": {
        "order_id": "cmp-o1", "currency": "EUR", "value": 80.0,
        "items": [{"product_id": "p1", "name": "p1", "quantity": 1, "price": 80.0}]}})
    await shop.watch.wait_idle()

    rows = [r for r in await build_report(shop.engine, START) if r.campaign == "sale"]
    assert sorted(r.variant for r in rows) == sorted(set(variants.values()))
    assert sum(r.sent for r in rows) == 5 and all(r.journey == "campaign:sale" and r.step == 1 for r in rows)
    [row] = [r for r in rows if r.variant == variants[customer]]
    assert (row.clicked, row.converted, row.revenue) == (1, 1, 80.0)
    table = render(rows, "csv")
    assert "campaign sale" in table


def test_the_command_line_applies_lists_shows_and_cancels(shop: ScenarioRunner, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    settings = shop.settings.model_copy(update={"campaigns_dir": tmp_path})
    (tmp_path / "xmas.yaml").write_text(
        "name: xmas\ncategory: offers\nsegment: never_ordered\ntemplate: christmas\n"
        "send_at: 2027-12-20T09:00:00\nmax_per_minute: 100\n", encoding="utf-8")

    def run(*argv: str) -> int:
        parser = build_parser()
        return run_campaigns_command(parser.parse_args(["campaigns", *argv]), settings)

    assert run("validate") == 0
    assert "ok  xmas" in capsys.readouterr().out
    assert run("apply", str(tmp_path / "xmas.yaml")) == 0
    assert "xmas: created; it starts at 2027-12-19T19:00:00+00:00" in capsys.readouterr().out
    assert run("list") == 0
    assert "xmas" in (listed := capsys.readouterr().out) and "scheduled" in listed and "(local)" in listed
    assert run("show", "xmas", "--json") == 0
    assert '"definition": "name: xmas' in capsys.readouterr().out
    assert run("cancel", "xmas") == 0
    assert "xmas: cancelled" in capsys.readouterr().out
    assert run("show", "nope") == 1 and "no campaign named 'nope'" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: broken\ncategory: spam\n", encoding="utf-8")
    assert run("validate") == 1
    assert "broken.yaml: category" in capsys.readouterr().err


async def test_a_dispatcher_late_to_the_start_still_sends_what_was_not_passed_when_it_was_due(
        shop: ScenarioRunner) -> None:
    # skip what had passed when the campaign was due to start, not when a dispatcher got to it
    body = campaign(send_at="2027-01-05T12:10:00Z", if_passed="skip")
    assert (await shop.http.post("/v1/admin/campaigns", json=body)).status_code == 201
    await set_virtual_time(shop.engine, START + timedelta(minutes=12))  # straight past it, as a late dispatcher
    await shop.watch.wait_idle()
    shown = (await shop.http.get("/v1/admin/campaigns/sale")).json()
    assert (shown["audience"], shown["passed"]) == (5, 0)
    assert len(shop.new_emails()) == 5
