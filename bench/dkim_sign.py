"""DKIM signing alone, in-process, no stack: ms of CPU to sign the welcome email (about 25 KB, as
`lifecycle templates preview` composes it) with an RSA 2048 key, ours against dkimpy's the same way."""

from __future__ import annotations

import email
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lifecycle.dkim import SIGNED_HEADERS, DkimSigner


def best_ms(call: Callable[[], object], count: int, repeats: int = 5) -> float:
    """ms per call, the best of `repeats` rounds of `count` calls (the least disturbed by other work)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            call()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1000


def measure() -> tuple[float, float]:
    """(ours, dkimpy's): ms to sign the welcome email."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "preview"
        subprocess.run([sys.executable, "-m", "lifecycle.cli", "templates", "preview", "prospect_welcome", "1",
                        "--out", str(out)], check=True, capture_output=True)
        message = next(out.glob("*.eml")).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    signer = DkimSigner("bench", "shop.example", pem)
    parsed = email.message_from_bytes(message)
    headers = [name.encode() for name in SIGNED_HEADERS if name in parsed]
    ours = best_ms(lambda: signer.sign(message), 100)
    theirs = best_ms(lambda: dkim.sign(message, b"bench", b"shop.example", pem, include_headers=headers,
                                       canonicalize=(b"relaxed", b"relaxed")), 10)
    return ours, theirs


def report() -> int:
    ours, theirs = measure()
    print(f"DKIM signing, ms per email (RSA 2048): {ours:.2f}, dkimpy {theirs:.2f}, ratio {ours / theirs:.2f}")
    return 0
