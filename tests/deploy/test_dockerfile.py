"""deploy/Dockerfile: lint-clean (hadolint), the expected shape, and a wheel built as its build stage builds it
installs everything the services need.

No Docker engine is needed: the wheel and the installed command are checked outside a container.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from lifecycle.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
COMMANDS = ("ingest", "stager", "dispatcher", "bounces", "migrate")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        pending += raw.rstrip().removesuffix("\\") + " " if raw.rstrip().endswith("\\") else raw.strip()
        if not raw.rstrip().endswith("\\"):
            lines.append(pending)
            pending = ""
    result = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def test_hadolint_finds_nothing(hadolint: Path) -> None:
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_one_multi_stage_image_for_every_service_running_as_a_user() -> None:
    instructions = _instructions()
    stages = [args for keyword, args in instructions if keyword == "FROM"]
    assert len(stages) == 2 and stages[0].endswith("AS build"), stages
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in instructions if k == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert [a for k, a in instructions if k == "COPY" and a.startswith("--from=build")], "no COPY from the build stage"
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert json.loads(next(a for k, a in instructions if k == "ENTRYPOINT")) == ["lifecycle"]
    assert json.loads(next(a for k, a in instructions if k == "CMD"))[0] in COMMANDS
    exposed = next(a for k, a in instructions if k == "EXPOSE").split()
    assert exposed == ["8080", "8081", "8082", "8083", "2526", "8084"]  # 8083, 8084: ingest's and bounces' metrics
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert "LIFECYCLE_INGEST_HOST=0.0.0.0" in env, "services must listen beyond the container's loopback"


def test_the_commands_the_image_runs_exist() -> None:
    parser = build_parser()
    for command in COMMANDS:
        assert parser.parse_args([command]).command == command


def test_the_build_context_keeps_what_the_image_copies() -> None:
    ignored = {line.strip() for line in IGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")}
    copied = [shlex.split(a)[:-1] for k, a in _instructions() if k == "COPY" and not a.startswith("--from")]
    for sources in copied:
        for source in sources:
            assert source.rstrip("/") not in ignored, f"{source} is copied but excluded from the context"
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    assert {".run", ".git", "tests"} <= ignored
    # the local stack's launchers and the fault harness are no part of a deployment
    assert not any(source.rstrip("/") == "devstack" for sources in copied for source in sources)


def test_the_wheel_of_the_build_stage_carries_everything_the_services_load(tmp_path: Path) -> None:
    """`pip wheel .` as in the build stage; installed alone in a fresh environment, it validates the journeys
    and renders every template (the runtime stage has only what the wheel carries)."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels),
         str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = wheels.glob("lifecycle-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("lifecycle/migrations/env.py", "lifecycle/migrations/script.py.mako",
                   "lifecycle/migrations/versions/0001_initial.py", "lifecycle/py.typed", "services/ingest/app.py"):
        assert needed in names, f"{needed} is not in the wheel"
    for data in (ROOT / "lifecycle" / "journeys").glob("*.yaml"):
        assert f"lifecycle/journeys/{data.name}" in names, f"{data.name} is not in the wheel"
    shipped_templates = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lifecycle" / "templates").rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts}
    missing = sorted(shipped_templates - set(names))
    assert missing == [], f"template files not in the wheel (pyproject.toml package-data): {missing}"

    # dependencies come from this interpreter's site-packages; the project itself only from the wheel
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_") and k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import lifecycle, services; print(lifecycle.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=False, env=clean_env)
    assert where.returncode == 0 and where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    validate = subprocess.run([str(env_dir / "bin" / "lifecycle"), "journeys", "validate"], cwd=tmp_path,
                              capture_output=True, text=True, check=False, env=clean_env, timeout=120)
    assert validate.returncode == 0, validate.stdout + validate.stderr
