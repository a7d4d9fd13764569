"""A private PostgreSQL cluster for the local stack, in <run_dir>/postgres/data.

Trust authentication on 127.0.0.1 only, fsync off: a throwaway development database.
PostgreSQL refuses to run as root, so as root the server runs as the system user
`postgres` (created if missing) through `runuser`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from devstack import processes
from devstack._util import absolute, say
from devstack.errors import StackError
from lifecycle.settings import Settings

NAME = "postgres"
SUPERUSER = "postgres"
INSTALL_HINT = "install it with `apt-get install -y postgresql` (scripts/setup.sh does this)"
# Unix socket paths are limited to ~107 bytes; stay clear of it.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Layout:
    bindir: Path
    base: Path  # holds data/; owned by the server's user
    data: Path
    socket_dir: Path
    log: Path
    run_as: str | None  # system user to run the server as (when we are root)


def find_bindir() -> Path:
    """Directory of initdb/pg_ctl/postgres/psql: PATH first, then the newest Debian install."""
    found = shutil.which("initdb")
    if found:
        bindir = Path(found).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
    installed = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)

    if installed:
        return max(installed, key=version)
    raise StackError(f"postgres: server binaries (initdb, pg_ctl) not found; {INSTALL_HINT}")


def _hash(path: Path) -> str:
    return hashlib.sha256(str(path).encode()).hexdigest()[:12]


def _ensure_system_user() -> None:
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        say("postgres: creating system user `postgres` (the server refuses to run as root)")
        result = subprocess.run(["useradd", "-r", SUPERUSER], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise StackError(f"postgres: `useradd -r postgres` failed: {result.stderr.strip()}") from None


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    if path.stat().st_uid == entry.pw_uid:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _reachable_by(user: str, path: Path) -> bool:
    """Can `user` create files in `path`? (every parent must be traversable too)"""
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-w", str(path)], check=False, cwd="/")
    return probe.returncode == 0


def layout(settings: Settings, *, prepare: bool = False) -> Layout:
    """Where everything lives. With `prepare`, create the directories with the right owner."""
    run_dir = absolute(settings.run_dir)
    base = run_dir / "postgres"
    run_as = SUPERUSER if os.geteuid() == 0 else None
    if prepare:
        base.mkdir(parents=True, exist_ok=True)
        if run_as:
            _ensure_system_user()
            _chown(base, run_as)
    fallback = Path("/tmp") / f"lifecycle-pg-{_hash(run_dir)}"
    # The postgres user cannot enter a run dir below a private directory (e.g. /root or
    # pytest's 0700 temp dirs): keep the cluster in /tmp then, keyed by the run dir.
    if run_as and not (base / "data").exists() and (fallback.exists() or (prepare and not _reachable_by(run_as, base))):
        base = fallback
    if prepare and base == fallback:
        if not base.exists():
            say(f"postgres: user postgres cannot enter {run_dir}; keeping the cluster in {base}")
        base.mkdir(mode=0o700, exist_ok=True)
        if run_as:
            _chown(base, run_as)
    socket_dir = base
    if len(str(socket_dir / f".s.PGSQL.{settings.postgres_port}")) > MAX_SOCKET_PATH:
        socket_dir = Path("/tmp") / f"lifecycle-pgsock-{_hash(run_dir)}"
    if prepare:
        socket_dir.mkdir(mode=0o700, exist_ok=True)
        if run_as:
            _chown(socket_dir, run_as)
    return Layout(
        bindir=find_bindir(),
        base=base,
        data=base / "data",
        socket_dir=socket_dir,
        log=run_dir / "logs" / "postgres.log",
        run_as=run_as,
    )


def _as_server_user(lay: Layout, argv: list[str]) -> list[str]:
    return ["runuser", "-u", lay.run_as, "--", *argv] if lay.run_as else argv


def _run(lay: Layout, argv: list[str], what: str) -> str:
    result = subprocess.run(_as_server_user(lay, argv), capture_output=True, text=True, cwd=lay.base, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()[-2000:]
        raise StackError(f"postgres: {what} failed (exit {result.returncode}):\n{output}")
    return result.stdout


def _major(lay: Layout) -> str:
    out = subprocess.run([str(lay.bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    return found.group(1) if found else "?"


def _initdb(lay: Layout) -> None:
    version_file = lay.data / "PG_VERSION"
    if version_file.exists():
        have, want = version_file.read_text().strip(), _major(lay)
        if want != "?" and have != want:
            raise StackError(
                f"postgres: {lay.data} was created by PostgreSQL {have} but the binaries in "
                f"{lay.bindir} are version {want}; delete {lay.data} to start afresh"
            )
        return
    say(f"postgres: initdb {lay.data}")
    _run(
        lay,
        [str(lay.bindir / "initdb"), "-D", str(lay.data), "-U", SUPERUSER, "--auth=trust",
         "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"],
        "initdb",
    )  # fmt: skip


def _write_config(lay: Layout, settings: Settings) -> None:
    # Rewritten on each start so a changed port or socket dir applies; postgresql.conf
    # includes it once.
    conf = lay.data / "lifecycle.conf"
    socket_dir = str(lay.socket_dir).replace("'", "''")
    conf.write_text(
        "# Generated by devstack.postgres on each start.\n"
        "listen_addresses = '127.0.0.1'\n"
        f"port = {settings.postgres_port}\n"
        f"unix_socket_directories = '{socket_dir}'\n"
        "max_connections = 200\n"
        # Local throwaway data: durability is not worth the I/O.
        "fsync = off\n"
        "synchronous_commit = off\n"
        "full_page_writes = off\n"
        "log_min_messages = warning\n"
        "log_min_error_statement = error\n"
    )
    main_conf = lay.data / "postgresql.conf"
    include = "include_if_exists = 'lifecycle.conf'\n"
    text = main_conf.read_text()
    if include not in text:
        with main_conf.open("a") as f:
            f.write("\n" + include)
    if lay.run_as:
        _chown(conf, lay.run_as)


def _postmaster_pid(lay: Layout) -> int | None:
    try:
        pid = int((lay.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if processes.pid_alive(pid) else None


def is_running(settings: Settings) -> bool:
    return server_pid(settings) is not None


def server_pid(settings: Settings) -> int | None:
    """The postmaster's pid (its children are the backends and the background workers), None if down."""
    return _postmaster_pid(layout(settings))


def _names(settings: Settings) -> tuple[str, str]:
    """(role, database) named by the database URL; `lifecycle` for both by default."""
    url = make_url(settings.database_url)
    return url.username or "lifecycle", url.database or "lifecycle"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def psql(settings: Settings, sql: str, database: str = "postgres") -> str:
    """Run SQL as the cluster superuser over TCP; returns unaligned, tuples-only output."""
    lay = layout(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    argv = [
        str(lay.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        "-h", "127.0.0.1", "-p", str(settings.postgres_port), "-U", SUPERUSER, "-d", database,
        "-c", sql,
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise StackError(f"postgres: SQL failed: {sql!r}:\n{result.stderr.strip()}")
    return result.stdout.strip()


def ensure_database(settings: Settings) -> None:
    """Create the application role (LOGIN SUPERUSER) and database if they are missing."""
    role, database = _names(settings)
    psql(
        settings,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
        f"{_literal(role)}) THEN CREATE ROLE {_ident(role)} LOGIN SUPERUSER; END IF; END $$;",
    )
    exists = psql(settings, f"SELECT 1 FROM pg_database WHERE datname = {_literal(database)}")
    if exists != "1":
        psql(settings, f"CREATE DATABASE {_ident(database)} OWNER {_ident(role)}")
        say(f"postgres: created database {database} (owner {role})")


def reset_database(settings: Settings) -> None:
    """Drop and recreate the application database, cutting off its open connections.

    Synchronous (a psql subprocess), so it is safe to call from async tests too.
    """
    _, database = _names(settings)
    psql(
        settings,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = {_literal(database)} AND pid <> pg_backend_pid()",
    )
    psql(settings, f"DROP DATABASE IF EXISTS {_ident(database)} WITH (FORCE)")
    ensure_database(settings)


def _check_url(settings: Settings) -> None:
    url = make_url(settings.database_url)
    if url.host in ("127.0.0.1", "localhost") and url.port not in (None, settings.postgres_port):
        say(
            f"postgres: warning: database_url uses port {url.port} but the local cluster "
            f"listens on {settings.postgres_port}"
        )


def start(settings: Settings) -> None:
    """initdb if needed, start the server (or reuse a running one), ensure role and database."""
    lay = layout(settings, prepare=True)
    if _postmaster_pid(lay) is not None:
        say(f"postgres: already running on 127.0.0.1:{settings.postgres_port}")
    else:
        if processes.port_open("127.0.0.1", settings.postgres_port):
            raise StackError(
                f"postgres: port 127.0.0.1:{settings.postgres_port} is already in use by another "
                "process (another stack? set LIFECYCLE_POSTGRES_PORT)"
            )
        if lay.run_as and lay.data.exists():
            _chown_tree(lay.data, lay.run_as)
        _initdb(lay)
        _write_config(lay, settings)
        lay.log.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # No -l: the server inherits our stdout/stderr, a file we (maybe root) opened, so
        # the server's user needs no write access to the log directory.
        argv = _as_server_user(lay, [str(lay.bindir / "pg_ctl"), "start", "-D", str(lay.data), "-w", "-t", "60"])
        with lay.log.open("ab") as out:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=lay.base, start_new_session=True, check=False,
            )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"postgres: the server did not start; see {lay.log}:\n{processes.tail(lay.log)}")
        say(f"postgres: up on 127.0.0.1:{settings.postgres_port} ({time.monotonic() - started:.1f} s)")
    _check_url(settings)
    ensure_database(settings)


def stop(settings: Settings) -> bool:
    """pg_ctl stop -m fast. False if it was not running."""
    try:
        lay = layout(settings)
    except StackError:  # no server binaries: nothing of ours can be running
        return False
    if _postmaster_pid(lay) is None:
        return False
    argv = [str(lay.bindir / "pg_ctl"), "stop", "-D", str(lay.data), "-m", "fast", "-w", "-t", "60"]
    _run(lay, argv, "pg_ctl stop")
    say("postgres: stopped")
    return True


def status(settings: Settings) -> tuple[bool, str]:
    lay = layout(settings)
    pid = _postmaster_pid(lay)
    if pid is None:
        return False, "stopped"
    return True, f"pid {pid}, 127.0.0.1:{settings.postgres_port}, data {lay.data}"


def remove_data(settings: Settings) -> None:
    """Delete the cluster's files (server must be stopped), including /tmp fallbacks."""
    lay = layout(settings)
    if _postmaster_pid(lay) is not None:
        raise StackError("postgres: stop the server before removing its data")
    for path in {lay.base, lay.socket_dir}:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
