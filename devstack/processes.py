"""Detached local processes tracked by pid files.

Layout under the run directory:
    pids/<name>.pid   "<pid> <start time>": the start time (from /proc) guards against pid reuse
    logs/<name>.log   stdout and stderr of the process, appended to across restarts
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from devstack.errors import StackError

# Popen objects of the processes this interpreter started: kept so they can be reaped
# (no zombies, no "still running" ResourceWarning from a collected Popen).
_children: dict[int, subprocess.Popen[bytes]] = {}


def pid_dir(run_dir: Path) -> Path:
    return run_dir / "pids"


def log_dir(run_dir: Path) -> Path:
    return run_dir / "logs"


def pid_file(run_dir: Path, name: str) -> Path:
    return pid_dir(run_dir) / f"{name}.pid"


def log_file(run_dir: Path, name: str) -> Path:
    return log_dir(run_dir) / f"{name}.log"


def _start_time(pid: int) -> str | None:
    """Kernel start time of `pid` (field 22 of /proc/<pid>/stat), None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    state, start = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return start


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live (non-zombie) process."""
    child = _children.get(pid)
    if child is not None:
        # Our own child: only poll() is reliable (it reaps; /proc would show a zombie).
        if child.poll() is None:
            return True
        del _children[pid]
        return False
    if Path("/proc").is_dir():
        return _start_time(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(run_dir: Path, name: str) -> int | None:
    """Pid of the live process recorded for `name`, or None (a stale pid file is removed)."""
    path = pid_file(run_dir, name)
    try:
        parts = path.read_text().split()
        pid = int(parts[0])
    except (OSError, ValueError, IndexError):
        return None
    recorded_start = parts[1] if len(parts) > 1 else None
    if pid_alive(pid) and (recorded_start is None or _start_time(pid) in (recorded_start, None)):
        return pid
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def write_pid(run_dir: Path, name: str, pid: int) -> None:
    path = pid_file(run_dir, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid} {_start_time(pid) or ''}\n")
    tmp.replace(path)


def is_running(run_dir: Path, name: str) -> bool:
    return read_pid(run_dir, name) is not None


def spawn(
    run_dir: Path,
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
) -> int:
    """Start `argv` detached (own session, so a terminal's Ctrl-C does not reach it).

    Output goes to `log` (default logs/<name>.log); the pid is recorded in pids/<name>.pid.
    """
    log = log or log_file(run_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{name}: cannot start {argv[0]}: {exc}") from None
    _children[proc.pid] = proc
    write_pid(run_dir, name, proc.pid)
    return proc.pid


def _signal(pid: int, sig: signal.Signals) -> None:
    """Signal the whole process group when `pid` leads one (children die too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `timeout` seconds."""
    _signal(pid, signal.SIGTERM)
    if not wait_gone(pid, timeout):
        _signal(pid, signal.SIGKILL)
        wait_gone(pid, 5.0)


def stop(run_dir: Path, name: str, timeout: float = 20.0) -> bool:
    """Stop the process recorded for `name`. Returns False if it was not running."""
    pid = read_pid(run_dir, name)
    if pid is None:
        return False
    stop_pid(pid, timeout)
    with contextlib.suppress(OSError):
        pid_file(run_dir, name).unlink()
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    host: str,
    port: int,
    timeout: float,
    *,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """Wait until `host:port` accepts connections.

    Returns False on timeout or as soon as `alive()` says the process behind it died.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        if alive is not None and not alive():
            return False
        time.sleep(0.1)
    return False


def tail(path: Path, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
