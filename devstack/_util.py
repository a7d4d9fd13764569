"""Small helpers shared by the stack modules."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from lifecycle.settings import Settings

T = TypeVar("T")


def say(message: str) -> None:
    """One progress line on stderr (stdout stays free for command output)."""
    print(message, file=sys.stderr, flush=True)


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine from sync code, even when the caller is inside an event loop.

    The stack API is synchronous, but tests and services may call it from async code,
    where asyncio.run() is not allowed: then the coroutine runs on a private loop in a
    worker thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(factory())).result()


def absolute(path: Path) -> Path:
    """`path` made absolute against the current directory (symlinks kept)."""
    return Path(os.path.abspath(path.expanduser()))


def settings_env(settings: Settings) -> dict[str, str]:
    """Every settings field as a LIFECYCLE_<FIELD> variable, so child processes see the
    same configuration as a Settings object built in code. None values are left out."""
    env: dict[str, str] = {}
    for field, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, Path):
            text = str(absolute(value))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"LIFECYCLE_{field.upper()}"] = text
    return env


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """'host:port' -> (host, port); a bare host gets `default_port`."""
    host, sep, port = address.rpartition(":")
    if not sep:
        return address, default_port
    return host.strip("[]") or "127.0.0.1", int(port)
