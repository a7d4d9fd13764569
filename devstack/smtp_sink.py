"""An SMTP server that accepts everything and keeps each message as a file.

    python -m devstack.smtp_sink --host 127.0.0.1 --port 2525 --dir .run/mail

Every message becomes <dir>/<sequence>.eml (zero-padded, so names sort in arrival order),
written to a temporary file first and renamed, so readers never see half a message. The
file holds the raw bytes as received, preceded by two added header lines:
    X-Sink-Rcpt-To: <envelope recipients, comma-separated>
    X-Sink-Mail-From: <envelope sender>

Failure injection, chosen by the recipient's local part (docs/sending.md):
    tempfail-N...@  answers RCPT with 451 the first N times that address is tried, then accepts
    bounce-...@     answers RCPT with 550 (a hard bounce)
    drop-...@       closes the connection instead of answering RCPT (a lost connection)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import os
import re
import signal
import sys
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from devstack import processes
from devstack._util import absolute, say
from devstack.errors import StackError
from lifecycle.settings import Settings

NAME = "smtp_sink"
_SUFFIX = ".eml"


def mail_dir(settings: Settings) -> Path:
    """Where the stack's sink stores messages."""
    return absolute(settings.run_dir) / "mail"


def _message_files(directory: Path) -> list[Path]:
    try:
        files = [p for p in directory.iterdir() if p.suffix == _SUFFIX and p.stem.isdigit()]
    except FileNotFoundError:
        return []
    return sorted(files, key=lambda p: int(p.stem))


def read_messages(directory: Path) -> list[EmailMessage]:
    """All stored messages in arrival order, parsed with email.policy.default.

    SMTP's CRLF line endings become "\n" first, as Python's email package expects, so
    get_content() gives the text as it was composed. The files keep the raw bytes.
    """
    messages: list[EmailMessage] = []
    for path in _message_files(directory):
        with contextlib.suppress(FileNotFoundError):  # cleared meanwhile
            raw = path.read_bytes().replace(b"\r\n", b"\n")
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            messages.append(message)
    return messages


def clear_messages(directory: Path) -> None:
    """Delete all stored messages (the sink keeps numbering upwards)."""
    for path in _message_files(directory):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def wait_for_messages(directory: Path, count: int, timeout: float = 10.0) -> list[EmailMessage]:
    """Wait until at least `count` messages are stored; returns them all.

    Raises TimeoutError naming how many arrived.
    """
    deadline = time.monotonic() + timeout
    while True:
        messages = read_messages(directory)
        if len(messages) >= count:
            return messages
        if time.monotonic() >= deadline:
            raise TimeoutError(f"expected {count} messages in {directory}, got {len(messages)} in {timeout} s")
        await asyncio.sleep(0.05)


# --- server -----------------------------------------------------------------------------


class MessageStore:
    """Numbers and writes messages; numbering continues after the highest existing file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        existing = _message_files(directory)
        self._next = int(existing[-1].stem) + 1 if existing else 1

    def save(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> Path:
        seq = self._next
        self._next += 1
        added = (
            b"X-Sink-Rcpt-To: " + ", ".join(rcpt_tos).encode("utf-8") + b"\r\n"
            b"X-Sink-Mail-From: " + mail_from.encode("utf-8") + b"\r\n"
        )
        final = self.directory / f"{seq:09d}{_SUFFIX}"
        tmp = self.directory / f".{seq:09d}.tmp"
        with tmp.open("wb") as f:
            f.write(added + raw)
        os.rename(tmp, final)
        return final


TEMPFAIL_REPLY = "451 4.3.0 try again later"
BOUNCE_REPLY = "550 5.1.1 no such user"
_TEMPFAIL = re.compile(r"tempfail-(\d+)")


class _Handler:
    def __init__(self, store: MessageStore) -> None:
        self.store = store
        self.tempfailed: dict[str, int] = {}  # address -> 451s answered so far (in memory: per sink run)

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        # as Postfix and the large relays do: clients may send MAIL, RCPT and DATA in one write
        # (aiosmtpd reads commands one line at a time, so it serves pipelined ones as they come)
        session.host_name = hostname  # what aiosmtpd does itself when no hook answers EHLO
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        local = address.rpartition("@")[0].lower()
        tempfail = _TEMPFAIL.match(local)
        if tempfail is not None:
            key = address.lower()
            if self.tempfailed.get(key, 0) < int(tempfail.group(1)):
                self.tempfailed[key] = self.tempfailed.get(key, 0) + 1
                print(f"tempfail {address} ({self.tempfailed[key]}/{tempfail.group(1)})", flush=True)
                return TEMPFAIL_REPLY
        elif local.startswith("bounce-"):
            print(f"bounce {address}", flush=True)
            return BOUNCE_REPLY
        elif local.startswith("drop-"):
            print(f"drop {address}", flush=True)
            server.transport.close()  # no answer: the client sees the connection lost
            return "421 4.4.2 closing"  # written nowhere, the transport is closed
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        path = self.store.save(envelope.mail_from or "", list(envelope.rcpt_tos), raw)
        print(f"stored {path.name} from={envelope.mail_from} to={','.join(envelope.rcpt_tos)}", flush=True)
        return "250 Message accepted for delivery"


async def serve(host: str, port: int, directory: Path) -> None:
    """Run the sink until SIGTERM or SIGINT."""
    from aiosmtpd.smtp import SMTP

    handler = _Handler(MessageStore(directory))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        # A fixed hostname avoids the default getfqdn() DNS lookup on every connection.
        lambda: SMTP(handler, hostname="lifecycle-smtp-sink", enable_SMTPUTF8=True, data_size_limit=None),
        host=host,
        port=port,
    )
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    print(f"smtp sink listening on {host}:{port}, storing in {directory}", flush=True)
    await stopping.wait()
    server.close()
    await server.wait_closed()
    print("smtp sink stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.smtp_sink")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--dir", type=Path, required=True, help="where to store <n>.eml files")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args.host, args.port, args.dir))
    except OSError as exc:  # typically: address already in use
        print(f"smtp sink: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


# --- stack control ----------------------------------------------------------------------


def start(settings: Settings, timeout: float = 15.0) -> None:
    run_dir = absolute(settings.run_dir)
    host, port = settings.smtp_host, settings.smtp_port
    if processes.is_running(run_dir, NAME):
        say(f"smtp sink: already running on {host}:{port}")
        return
    if processes.port_open(host, port):
        raise StackError(
            f"smtp sink: port {host}:{port} is already in use by another process "
            "(another stack? set LIFECYCLE_SMTP_PORT)"
        )
    directory = mail_dir(settings)
    argv = [sys.executable, "-m", "devstack.smtp_sink", "--host", host, "--port", str(port),
            "--dir", str(directory)]  # fmt: skip
    log = processes.log_file(run_dir, NAME)
    processes.spawn(run_dir, NAME, argv, log=log)
    if not processes.wait_port(host, port, timeout, alive=lambda: processes.is_running(run_dir, NAME)):
        processes.stop(run_dir, NAME)
        raise StackError(f"smtp sink: did not come up on {host}:{port}; see {log}:\n{processes.tail(log)}")
    say(f"smtp sink: up on {host}:{port}, messages in {directory}")


def stop(settings: Settings) -> bool:
    stopped = processes.stop(absolute(settings.run_dir), NAME, timeout=10.0)
    if stopped:
        say("smtp sink: stopped")
    return stopped


def server_pid(settings: Settings) -> int | None:
    """The sink's pid, None if it is down."""
    return processes.read_pid(absolute(settings.run_dir), NAME)


def status(settings: Settings) -> tuple[bool, str]:
    pid = server_pid(settings)
    if pid is None:
        return False, "stopped"
    return True, f"pid {pid}, {settings.smtp_host}:{settings.smtp_port}, mail in {mail_dir(settings)}"


if __name__ == "__main__":
    sys.exit(main())
