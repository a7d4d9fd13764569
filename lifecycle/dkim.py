"""DKIM signing of outgoing messages (RFC 6376), relaxed/relaxed, with `cryptography`.

Two algorithms, chosen by the key: RSA keys sign `rsa-sha256`, Ed25519 keys `ed25519-sha256`
(RFC 8463). Canonicalization, the body hash and the DKIM-Signature header are built here; only the
signature itself is `cryptography`'s (OpenSSL): a millisecond or two for RSA 2048, where dkimpy's
pure-Python RSA took ten times as long.

Messages are signed when handed to SMTP, not when composed: the stored message stays the one
composed, and a retried or reclaimed send is signed again with the key configured at that moment
(a key rotated in between still verifies) and a signature time that is the sending time.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, padding, rsa, x448, x25519

from lifecycle.settings import Settings

# What a receiver must be able to trust; List-Unsubscribe(-Post) signed is what one-click
# unsubscribe requires (RFC 8058). Only the headers present in a message are signed.
SIGNED_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
                  "MIME-Version", "Content-Type")

MIN_RSA_BITS = 1024  # RFC 8301: signers MUST use at least 1024 bits, SHOULD use 2048

SigningKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
# The signature time (t=) is what receivers compare with their own clocks, so it is wall-clock time
# (never a virtual business time): seconds since the epoch, `time.time` unless a test passes another.
WallClock = Callable[[], float]

_SIGNED = tuple(name.lower().encode() for name in SIGNED_HEADERS)
_WSP = re.compile(rb"[ \t]+")
_WSP_RUN = re.compile(rb" [ \t]+|\t[ \t]*")  # WSP other than a lone space: the same result as _WSP, faster
_SPACE_RUN = re.compile(rb"  +")
_WIDTH = 78  # longest line of the DKIM-Signature header, as RFC 5322 recommends
_KEY_KINDS: tuple[tuple[type[object], str], ...] = (
    (ec.EllipticCurvePrivateKey, "EC"), (dsa.DSAPrivateKey, "DSA"), (ed448.Ed448PrivateKey, "Ed448"),
    (x25519.X25519PrivateKey, "X25519"), (x448.X448PrivateKey, "X448"))


class DkimKeyError(ValueError):
    """The configured key cannot be used for signing."""


def load_private_key(pem: bytes) -> SigningKey:
    """An unencrypted PEM key usable for DKIM: RSA (PKCS#1 or PKCS#8) of 1024 bits or more, or Ed25519."""
    if b"-----BEGIN" not in pem:
        raise DkimKeyError("no PEM private key found")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # what cryptography raises for a key that needs a password
        raise DkimKeyError("the DKIM key is encrypted: an unencrypted PEM key is needed") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DkimKeyError(f"not a usable PEM private key: {exc}") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"the RSA key has {key.key_size} bits: DKIM needs at least {MIN_RSA_BITS} "
                               "(2048 recommended, RFC 8301)")
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    kind = next((name for cls, name in _KEY_KINDS if isinstance(key, cls)), type(key).__name__)
    raise DkimKeyError(f"unsupported key type {kind}: DKIM signs with an RSA key (rsa-sha256) "
                       "or an Ed25519 key (ed25519-sha256)")


def _crlf(message: bytes) -> bytes:
    # SMTP sends CRLF; sign exactly the bytes that go out. Every LF not after a CR becomes CRLF
    # (the same as re.sub(rb"(?<!\r)\n", b"\r\n", ...), in a fraction of the time).
    if message.count(b"\n") == message.count(b"\r\n"):
        return message
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def relaxed_header(field: bytes) -> bytes:
    """One header field ("Name: value", folded or not, without its final CRLF), canonicalized the
    relaxed way (RFC 6376 §3.4.2): name lowercased, unfolded, runs of WSP made one space, no WSP
    around the colon nor at the end."""
    name, _, value = field.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value


def relaxed_body(body: bytes) -> bytes:
    """The body (CRLF line endings) canonicalized the relaxed way (RFC 6376 §3.4.4): runs of WSP made
    one space, none at the end of a line, no empty lines at the end, a CRLF at the end; an empty body
    (or one of empty lines only) stays empty."""
    # without a tab (a quoted-printable body has none) only runs of spaces change: an expression that
    # starts with two spaces is found by a literal search, ten times faster than any WSP at every space
    body = (_WSP_RUN if b"\t" in body else _SPACE_RUN).sub(b" ", body).replace(b" \r\n", b"\r\n")
    # A last line without CRLF gets one from SMTP on its way out, so its trailing WSP goes too.
    end = len(body) - 1 if body.endswith(b" ") else len(body)
    while body.endswith(b"\r\n", 0, end):
        end -= 2
    return body[:end] + b"\r\n" if end else b""


def _fields(head: bytes) -> list[bytes]:
    """The header block's fields, each as it stands (continuation lines included, no final CRLF)."""
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif line:
            fields.append(line)
    return fields


def _fold(tags: list[list[str]]) -> list[str]:
    """The lines of a DKIM-Signature header with these tags, each a list of the pieces it may be broken
    between, folded to at most `_WIDTH` characters a line."""
    lines = ["DKIM-Signature:"]
    for pieces in tags:
        for index, piece in enumerate(pieces):
            glue = " " if index == 0 else ""  # tags are apart; the pieces of one tag are not
            if len(lines[-1]) + len(glue) + len(piece) <= _WIDTH:
                lines[-1] += glue + piece
            else:
                lines.append(" " + piece)
    return lines


def _with_b(lines: list[str], b: str) -> bytes:
    """The header (no final CRLF) of these lines ended by the b= tag, its value broken anywhere (base64
    may hold folding whitespace, RFC 6376 §3.5)."""
    tag = "b=" + b
    room = _WIDTH - len(lines[-1]) - 1
    if room < 3:  # not even "b=" and a character
        lines, room = [*lines, ""], _WIDTH - 1
    folded = [*lines[:-1], lines[-1] + " " + tag[:room]]
    folded += [" " + tag[at:at + _WIDTH - 1] for at in range(room, len(tag), _WIDTH - 1)]
    return "\r\n".join(folded).encode()


def _timestamp(now: datetime | float) -> int:
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise ValueError("the signing time needs a time zone")
        return int(now.timestamp())
    return int(now)


class DkimSigner:
    def __init__(self, selector: str, domain: str, private_key: bytes, clock: WallClock = time.time) -> None:
        self.selector = selector.encode()
        self.domain = domain.encode()
        self.key = load_private_key(private_key)
        self.algorithm = "rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else "ed25519-sha256"
        self.clock = clock
        self.sign(b"From: check@" + self.domain + b"\r\n\r\nkey check\r\n")  # a bad key fails now, not per send

    def sign(self, message: bytes, now: datetime | int | None = None) -> bytes:
        """The message with a DKIM-Signature header in front, CRLF line endings.

        `now` is the signature time (t=): an aware datetime or seconds since the epoch; the signer's
        clock when not given.
        """
        message = _crlf(message)
        end = message.find(b"\r\n\r\n")
        head, body = (message, b"") if end < 0 else (message[:end], message[end + 4:])
        last: dict[bytes, bytes] = {}
        for field in _fields(head):
            if b":" in field:
                # RFC 6376 §5.4.2: a name signed once stands for its last instance
                last[field.partition(b":")[0].rstrip(b" \t").lower()] = field
        present = [name.decode() for name in _SIGNED if name in last]
        if "from" not in present:
            raise ValueError("a message without a From header cannot be DKIM-signed (RFC 6376 §5.4)")
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest()).decode()
        t = _timestamp(self.clock() if now is None else now)
        tags = [["v=1;"], [f"a={self.algorithm};"], ["c=relaxed/relaxed;"], [f"d={self.domain.decode()};"],
                [f"s={self.selector.decode()};"], [f"t={t};"],
                [f"{'h=' if i == 0 else ''}{name}{';' if i == len(present) - 1 else ':'}"
                 for i, name in enumerate(present)],
                [f"bh={body_hash};"]]
        lines = _fold(tags)
        unsigned = _with_b(lines, "")
        signed_data = b"".join(relaxed_header(last[name.encode()]) + b"\r\n" for name in present)
        signed_data += relaxed_header(unsigned)  # the signature header itself: b= empty, no CRLF (§3.7)
        if isinstance(self.key, rsa.RSAPrivateKey):
            signature = self.key.sign(signed_data, padding.PKCS1v15(), hashes.SHA256())
        else:  # RFC 8463: Ed25519 (pure) over the SHA-256 hash
            signature = self.key.sign(hashlib.sha256(signed_data).digest())
        return _with_b(lines, base64.b64encode(signature).decode()) + b"\r\n" + message


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """A signer when selector, domain and key file are all set; None when none is; an error otherwise."""
    values = (settings.dkim_selector, settings.dkim_domain, settings.dkim_private_key_file)
    if not any(values):
        return None
    if not all(values):
        raise DkimKeyError("DKIM needs all of dkim_selector, dkim_domain and dkim_private_key_file")
    assert settings.dkim_selector and settings.dkim_domain and settings.dkim_private_key_file
    try:
        key = Path(settings.dkim_private_key_file).read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"cannot read the DKIM key {settings.dkim_private_key_file}: {exc}") from None
    return DkimSigner(settings.dkim_selector, settings.dkim_domain, key)


def dns_txt_record(private_key: bytes) -> str:
    """The TXT record to publish at <selector>._domainkey.<domain> for this key: for RSA the
    SubjectPublicKeyInfo (RFC 6376 §3.6.1), for Ed25519 the raw 32-byte public key (RFC 8463)."""
    key = load_private_key(private_key)
    if isinstance(key, rsa.RSAPrivateKey):
        public = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
        return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode()
