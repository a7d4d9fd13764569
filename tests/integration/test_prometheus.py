"""A real Prometheus scrapes the running pipeline: every target is up, every alert rule evaluates, and every
query of every panel of the Grafana dashboard (deploy/monitoring/grafana/lifecycle.json) evaluates without
error and returns data.

Prometheus comes from Debian's `prometheus` package (scripts/install-ops-tools.sh); it runs on a free port
with its storage in a temporary directory, never on the system service's :9090.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lifecycle.scenario import ScenarioRunner
from lifecycle.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "lifecycle.json"
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
# Grafana's variables, as Prometheus must see them
GRAFANA_VARIABLES = {"$__rate_interval": "1m"}
WAIT_SECONDS = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _dashboard_queries() -> list[tuple[str, str]]:
    queries = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((f"{panel['title']} [{target['refId']}]", expr))
    return queries


@pytest.fixture
def prometheus(pipeline: Settings, tmp_path: Path) -> Iterator[str]:
    """Prometheus scraping the pipeline's three services every second, with the alert rules; its base URL.

    Ingest's metrics are on their own port, never on the public API's."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: run `bash scripts/install-ops-tools.sh`", pytrace=False)
    port = _free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}]}
            for job, service_port in (("ingest", pipeline.ingest_metrics_port), ("stager", pipeline.stager_port),
                                      ("dispatcher", pipeline.dispatcher_port))
        ],
    }
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()[-3000:]}", pytrace=False)
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready on {base} within 60 s:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def _get(client: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    response = await client.get(path, params=params)
    body: dict[str, Any] = response.json()
    return body


async def _wait_targets_up(client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        targets = (await _get(client, "/api/v1/targets"))["data"]["activeTargets"]
        health = {t["labels"]["job"]: (t["health"], t["lastError"]) for t in targets}
        if len(health) == 3 and all(state == "up" for state, _ in health.values()):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"targets not all up after {WAIT_SECONDS:.0f} s: {health}", pytrace=False)
        await asyncio.sleep(0.5)


async def _send_traffic(runner: ScenarioRunner) -> None:
    def event(kind: str, customer: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "customer_id": customer, "occurred_at": START.isoformat(), **fields}

    items = [{"product_id": "p1", "name": "Gloves", "quantity": 1, "price": 30.0}]
    batch = [
        *(event("customer_signed_up", f"c-prom-{i}",
                traits={"email": f"prom{i}@example.com", "first_name": "Ana", "consent": "opted_in"})
          for i in range(8)),
        event("customer_signed_up", "c-prom-pending", traits={"email": "pending@example.com", "consent": "pending"}),
        event("product_viewed", "c-prom-0", properties={"product_id": "p1", "name": "Gloves", "price": 30.0,
                                                        "currency": "EUR"}),
        *(event("cart_updated", f"c-prom-{i}",
                properties={"cart_id": f"k{i}", "currency": "EUR", "value": 30.0, "items": items})
          for i in range(3)),
        *(event("order_placed", f"c-prom-{i}",
                properties={"order_id": f"o{i}", "currency": "EUR", "value": 30.0, "items": items})
          for i in range(4, 7)),
    ]
    response = await runner.http.post("/v1/events", json={"events": batch})
    assert response.status_code == 202, response.text
    # a refused batch: a 422 and events refused as invalid
    invalid = [event("customer_signed_up", "c-prom-bad", traits={"email": "not an address"})]
    response = await runner.http.post("/v1/events", json={"events": invalid})
    assert response.status_code == 422, response.text
    # a forged open pixel: a tracking hit
    response = await runner.http.get("/t/o/forged.gif")
    assert response.status_code < 500, response.text
    # time passes: welcome emails, the abandoned cart reminder, the new customers' first email
    await runner.watch.advance_to(START + timedelta(hours=2))
    await runner.watch.wait_idle()


async def test_prometheus_scrapes_the_pipeline_and_every_dashboard_query_returns_data(
        pipeline: Settings, runner: ScenarioRunner, prometheus: str) -> None:
    await runner.configure(Path(__file__), {})
    await runner.reset(START)
    async with httpx.AsyncClient(base_url=prometheus, timeout=10) as client:
        await _wait_targets_up(client)
        await _send_traffic(runner)

        queries = _dashboard_queries()
        assert len(queries) >= 30
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            problems: dict[str, str] = {}
            for title, expr in queries:
                answer = await _get(client, "/api/v1/query", query=expr)
                if answer["status"] != "success":
                    problems[title] = f"error {answer.get('errorType')}: {answer.get('error')} in {expr}"
                elif not answer["data"]["result"]:
                    problems[title] = f"no data: {expr}"
            if not problems:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{len(problems)} of {len(queries)} dashboard queries fail after {WAIT_SECONDS:.0f} s:\n"
                            + "\n".join(f"  {t}: {p}" for t, p in problems.items()), pytrace=False)
            await asyncio.sleep(1)

        # the traffic went through every service and shows in Prometheus
        expected = {
            'sum(lifecycle_ingest_events_accepted_total{type="customer_signed_up"})': 9,
            'sum(lifecycle_ingest_events_refused_total{reason="invalid"})': 1,
            'sum(lifecycle_ingest_requests_total{route="/v1/events", status="422"})': 1,
            "sum(lifecycle_stager_events_applied_total)": 15,
            'sum(lifecycle_dispatcher_sends_total{result="sent"})': 8,
            "sum(lifecycle_dispatcher_smtp_duration_seconds_count)": 8,
        }
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            values = {}
            for expr in expected:
                result = (await _get(client, "/api/v1/query", query=expr))["data"]["result"]
                values[expr] = float(result[0]["value"][1]) if result else 0.0
            if all(values[expr] >= minimum for expr, minimum in expected.items()):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"expected at least {expected}, Prometheus has {values}", pytrace=False)
            await asyncio.sleep(1)

        # every alert rule evaluates without error
        groups = (await _get(client, "/api/v1/rules"))["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())
                                 ["groups"])
        broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
        assert broken == {}, broken
