"""deploy/compose.yaml: checked offline everywhere, and by `docker compose config` where a Docker engine runs.

The offline checks (the YAML against the Compose Specification's JSON schema shipped by check-jsonschema,
and the structure below) always run. `docker compose config` needs a Docker engine with the compose plugin:
it runs only where `docker info` succeeds, and the test says so when it did not run it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
APP_SERVICES = {"migrate": None, "ingest": 8080, "stager": 8081, "dispatcher": 8082}
METRICS_PORTS = {"ingest": 8083, "stager": 8081, "dispatcher": 8082}  # ingest's metrics are off its API port


def _docker_engine() -> tuple[bool, str]:
    docker = shutil.which("docker")
    if docker is None:
        return False, "no docker command on this machine"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, check=False, timeout=30)
    if info.returncode != 0:
        return False, f"`docker info` failed, no Docker engine reachable: {info.stderr.strip().splitlines()[-1:]}"
    return True, "Docker engine found"


def test_compose_file_structure_everywhere_and_docker_compose_config_where_an_engine_runs() -> None:
    schema = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert schema.returncode == 0, f"compose.yaml against the Compose Specification:\n{schema.stdout}{schema.stderr}"

    spec: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    services: dict[str, dict[str, Any]] = spec["services"]
    assert {"kafka", "postgres", "mailpit", *APP_SERVICES} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    for name, port in APP_SERVICES.items():
        service = services[name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == ROOT / "deploy" / "Dockerfile"
        assert service["command"] == [name]
        environment = service["environment"]
        assert environment["LIFECYCLE_ENVIRONMENT"] == "local", "a development stack with development keys"
        assert environment["LIFECYCLE_KAFKA_BOOTSTRAP"].split(":")[0] == "kafka"
        assert "@postgres:" in environment["LIFECYCLE_DATABASE_URL"]
        assert environment["LIFECYCLE_SMTP_HOST"] == "mailpit"
        if port is not None:
            assert service["ports"] == [f"{port}:{port}"]
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
            assert f":{port}/healthz" in " ".join(service["healthcheck"]["test"])
    assert services["migrate"]["restart"] == "no"
    # the monitoring profile's Prometheus scrapes the same jobs with the same rules as the local config
    local = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    inline = yaml.safe_load(spec["configs"]["prometheus-config"]["content"])
    assert inline["rule_files"] == local["rule_files"]
    assert [job["job_name"] for job in inline["scrape_configs"]] == [job["job_name"] for job in local["scrape_configs"]]
    assert [job["static_configs"][0]["targets"] for job in inline["scrape_configs"]] == \
        [[f"{name}:{port}"] for name, port in METRICS_PORTS.items()]
    assert [job["static_configs"][0]["targets"] for job in local["scrape_configs"]] == \
        [[f"127.0.0.1:{port}"] for port in METRICS_PORTS.values()]
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, no ZooKeeper"

    engine, why = _docker_engine()
    if engine:
        config = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                                text=True, check=False, timeout=120)
        assert config.returncode == 0, f"docker compose config:\n{config.stdout}{config.stderr}"
    else:
        message = f"deploy/compose.yaml: `docker compose config` not run ({why}); the offline checks passed"
        print(message)
        warnings.warn(message, stacklevel=1)
