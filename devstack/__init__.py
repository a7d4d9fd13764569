"""The local stack: Kafka, PostgreSQL and an SMTP sink, plus the three services.

    up(settings)      start whatever is not running, run migrations, start the services
    down(settings)    stop everything, services first
    status(settings)  [(name, running, detail), ...]

All state lives under settings.run_dir (pids/, logs/, kafka/, postgres/, mail/); the Kafka
jars are cached under settings.cache_dir. Expected failures raise StackError with a message
for a person.

Submodules are imported inside the functions: `python -m devstack.kafka` (and
.smtp_sink) import this package first, and must not find themselves already imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack import processes
from devstack._util import absolute, say, settings_env
from devstack.errors import StackError
from lifecycle.settings import Settings

__all__ = [
    "SAMPLE_SENDER_ADDRESS",
    "SERVICES",
    "StackError",
    "down",
    "private_settings",
    "restart_services",
    "service_env",
    "start_infrastructure",
    "status",
    "stop_infrastructure",
    "up",
    "wait_http_ok",
]

SERVICES: tuple[str, ...] = ("ingest", "stager", "dispatcher")
HEALTH_TIMEOUT = 60.0


# The footer's postal address of the local stack's emails (the setting is required outside local)
SAMPLE_SENDER_ADDRESS = "Shop, 1 rue de la Paix, 75002 Paris, France"


def private_settings(run_dir: Path, offset: int, **overrides: object) -> Settings:
    """Settings of a stack of its own beside the local one: every port moved by `offset` (the tests
    take 100, the benchmark 200, the fault harness 300), on the local environment."""
    ingest = Settings.model_fields["ingest_port"].default + offset
    postgres = Settings.model_fields["postgres_port"].default + offset
    host, port = Settings.model_fields["kafka_bootstrap"].default.rsplit(":", 1)
    values: dict[str, object] = {
        "environment": "local", "run_dir": run_dir, "kafka_bootstrap": f"{host}:{int(port) + offset}",
        "postgres_port": postgres, "database_url": f"postgresql+asyncpg://lifecycle@127.0.0.1:{postgres}/lifecycle",
        "smtp_host": "127.0.0.1", "smtp_port": Settings.model_fields["smtp_port"].default + offset,
        "ingest_port": ingest, "public_url": f"http://127.0.0.1:{ingest}",
        "sender_address": SAMPLE_SENDER_ADDRESS,
        "ingest_metrics_port": Settings.model_fields["ingest_metrics_port"].default + offset,
        "stager_port": Settings.model_fields["stager_port"].default + offset,
        "dispatcher_port": Settings.model_fields["dispatcher_port"].default + offset,
        "bounces_port": Settings.model_fields["bounces_port"].default + offset,
        "bounces_metrics_port": Settings.model_fields["bounces_metrics_port"].default + offset,
    }
    return Settings.model_validate({**values, **overrides})


def service_env(settings: Settings) -> dict[str, str]:
    """The current environment plus every setting as LIFECYCLE_*, for child processes.

    Always the local environment: the stack runs with the development keys, which production refuses;
    and with a sample postal address in the footers when none is set.
    """
    return {**os.environ, **settings_env(settings), "LIFECYCLE_ENVIRONMENT": "local",
            "LIFECYCLE_SENDER_ADDRESS": settings.sender_address or SAMPLE_SENDER_ADDRESS}


def _service_port(settings: Settings, name: str) -> int:
    ports = {
        "ingest": settings.ingest_port,
        "stager": settings.stager_port,
        "dispatcher": settings.dispatcher_port,
    }
    return ports[name]


def _health_url(settings: Settings, name: str) -> str:
    return f"http://127.0.0.1:{_service_port(settings, name)}/healthz"


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_http_ok(url: str, timeout: float = HEALTH_TIMEOUT, *, log: Path | None = None) -> None:
    """Wait until GET `url` answers 200, or raise StackError (naming `log` if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _http_ok(url):
            return
        time.sleep(0.2)
    where = f"; see {log}" if log else ""
    raise StackError(f"{url} did not answer 200 within {timeout:.0f} s{where}")


def start_infrastructure(settings: Settings) -> None:
    """Start Kafka, PostgreSQL and the SMTP sink (each only if not running) and wait for them."""
    from devstack import kafka, postgres, smtp_sink

    # The JVM takes longest to come up: let it boot while PostgreSQL and the sink start.
    if not kafka.launch(settings):
        say(f"kafka: already running on {settings.kafka_bootstrap}")
    postgres.start(settings)
    smtp_sink.start(settings)
    kafka.wait_ready(settings)


def stop_infrastructure(settings: Settings) -> None:
    from devstack import kafka, postgres, smtp_sink

    smtp_sink.stop(settings)
    kafka.stop(settings)
    postgres.stop(settings)


def _migrate(settings: Settings, env: dict[str, str]) -> None:
    log = processes.log_file(absolute(settings.run_dir), "migrate")
    log.parent.mkdir(parents=True, exist_ok=True)
    say("migrations: running `lifecycle migrate`")
    with log.open("ab") as out:
        result = subprocess.run(
            [sys.executable, "-m", "lifecycle.cli", "migrate"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise StackError(f"migrations failed (exit {result.returncode}); see {log}:\n{processes.tail(log)}")


def _wait_service(settings: Settings, name: str, deadline: float) -> None:
    run_dir = absolute(settings.run_dir)
    url = _health_url(settings, name)
    log = processes.log_file(run_dir, name)
    while time.monotonic() < deadline:
        if _http_ok(url):
            say(f"{name}: up on {url.removesuffix('/healthz')}")
            return
        if not processes.is_running(run_dir, name):
            raise StackError(f"{name}: exited during startup; see {log}:\n{processes.tail(log)}")
        time.sleep(0.2)
    raise StackError(f"{name}: {url} did not answer 200 within {HEALTH_TIMEOUT:.0f} s; see {log}")


def start_services(settings: Settings) -> None:
    """Start ingest, stager and dispatcher (those not running) and wait for their /healthz."""
    run_dir = absolute(settings.run_dir)
    env = service_env(settings)
    started: list[str] = []
    for name in SERVICES:
        if processes.is_running(run_dir, name):
            say(f"{name}: already running")
            continue
        # ingest also listens on its metrics port
        ports = [_service_port(settings, name)] + ([settings.ingest_metrics_port] if name == "ingest" else [])
        for port in ports:
            if processes.port_open("127.0.0.1", port):
                raise StackError(f"{name}: port 127.0.0.1:{port} is already in use by another process")
        pid = processes.spawn(run_dir, name, [sys.executable, "-m", "lifecycle.cli", name], env=env)
        say(f"{name}: starting (pid {pid}), log {processes.log_file(run_dir, name)}")
        started.append(name)
    deadline = time.monotonic() + HEALTH_TIMEOUT
    for name in started:
        _wait_service(settings, name, deadline)


def stop_services(settings: Settings) -> None:
    run_dir = absolute(settings.run_dir)
    # Ingest first, so nothing new enters while the workers drain.
    for name in SERVICES:
        if processes.stop(run_dir, name, timeout=20.0):
            say(f"{name}: stopped")


def restart_services(settings: Settings) -> None:
    """Stop the services and start them again with these settings."""
    stop_services(settings)
    start_services(settings)


def up(settings: Settings, services: bool = True) -> None:
    """Bring the stack up; idempotent (starts only what is not running).

    Infrastructure, then `lifecycle migrate`, then (if `services`) the three services.
    """
    start_infrastructure(settings)
    _migrate(settings, service_env(settings))
    if services:
        start_services(settings)


def down(settings: Settings) -> None:
    """Stop the services, then the SMTP sink, Kafka and PostgreSQL."""
    stop_services(settings)
    stop_infrastructure(settings)


def status(settings: Settings) -> list[tuple[str, bool, str]]:
    """(name, running, detail) for every component, infrastructure first."""
    from devstack import kafka, postgres, smtp_sink

    rows: list[tuple[str, bool, str]] = []
    for name, probe in (
        ("kafka", kafka.status),
        ("postgres", postgres.status),
        ("smtp_sink", smtp_sink.status),
    ):
        try:
            running, detail = probe(settings)
        except StackError as exc:
            running, detail = False, str(exc)
        rows.append((name, running, detail))
    run_dir = absolute(settings.run_dir)
    for name in SERVICES:
        pid = processes.read_pid(run_dir, name)
        if pid is None:
            rows.append((name, False, "stopped"))
            continue
        url = _health_url(settings, name)
        health = "healthy" if _http_ok(url) else "not answering /healthz"
        rows.append((name, True, f"pid {pid}, {url.removesuffix('/healthz')}, {health}"))
    return rows
