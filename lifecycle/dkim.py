"""DKIM signing of outgoing messages (RSA-SHA256, relaxed/relaxed), with dkimpy.

Messages are signed when handed to SMTP, not when composed: the stored message stays the one
composed, and a retried or reclaimed send is signed again with the key configured at that moment
(a key rotated in between still verifies) and a signature time that is the sending time.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dkim  # type: ignore[import-untyped]

from lifecycle.settings import Settings

# What a receiver must be able to trust; List-Unsubscribe(-Post) signed is what one-click
# unsubscribe requires (RFC 8058). Only the headers present in a message are signed.
SIGNED_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
                  "MIME-Version", "Content-Type")

_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1, rsaEncryption


class DkimKeyError(ValueError):
    """The configured key cannot be used for signing."""


def _der_item(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at `at`."""
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(data[at:at + size], "big")
        at += size
    return tag, at, at + length


def _pkcs1_from_pkcs8(der: bytes) -> bytes:
    """The RSAPrivateKey inside a PKCS#8 PrivateKeyInfo (what `openssl genrsa` writes since 3.0)."""
    _, content, _ = _der_item(der, 0)  # PrivateKeyInfo SEQUENCE
    _, _, after_version = _der_item(der, content)  # version INTEGER
    _, algorithm, after_algorithm = _der_item(der, after_version)  # AlgorithmIdentifier SEQUENCE
    _, oid_start, oid_end = _der_item(der, algorithm)
    if der[oid_start:oid_end] != _RSA_OID:
        raise DkimKeyError("only RSA keys are supported for DKIM")
    tag, key_start, key_end = _der_item(der, after_algorithm)  # privateKey OCTET STRING
    if tag != 0x04:
        raise DkimKeyError("malformed PKCS#8 key")
    return der[key_start:key_end]


def _pkcs1_der(pem: bytes) -> bytes:
    match = re.search(rb"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", pem, re.DOTALL)
    if match is None:
        raise DkimKeyError("no PEM private key found")
    kind, body = match.group(1), base64.b64decode(b"".join(match.group(2).split()))
    if kind == b"RSA PRIVATE KEY":
        return body
    if kind != b"PRIVATE KEY":
        raise DkimKeyError(f"unsupported key type {kind.decode()!r} (an unencrypted RSA key is needed)")
    try:
        return _pkcs1_from_pkcs8(body)
    except IndexError:
        raise DkimKeyError("malformed PKCS#8 key") from None


def load_private_key(pem: bytes) -> bytes:
    """A PEM RSA key, PKCS#1 or unencrypted PKCS#8, as the PKCS#1 PEM that dkimpy reads."""
    body = _pkcs1_der(pem)
    lines = [base64.b64encode(body[i:i + 48]) for i in range(0, len(body), 48)]
    return b"-----BEGIN RSA PRIVATE KEY-----\n" + b"\n".join(lines) + b"\n-----END RSA PRIVATE KEY-----\n"


def _crlf(message: bytes) -> bytes:
    # SMTP sends CRLF; sign exactly the bytes that go out
    return re.sub(rb"(?<!\r)\n", b"\r\n", message)


class DkimSigner:
    def __init__(self, selector: str, domain: str, private_key: bytes) -> None:
        self.selector = selector.encode()
        self.domain = domain.encode()
        self.private_key = load_private_key(private_key)
        self.sign(b"From: check@" + self.domain + b"\r\n\r\nkey check\r\n")  # a bad key fails now, not per send

    def sign(self, message: bytes) -> bytes:
        """The message with a DKIM-Signature header in front, CRLF line endings."""
        message = _crlf(message)
        head = message.split(b"\r\n\r\n", 1)[0].lower()
        present = [h for h in SIGNED_HEADERS if re.search(rb"(^|\r\n)" + re.escape(h.lower().encode()) + rb":", head)]
        signature: bytes = dkim.sign(message, self.selector, self.domain, self.private_key,
                                     canonicalize=(b"relaxed", b"relaxed"),
                                     include_headers=[h.encode() for h in present])
        return signature + message


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
    """The TXT record to publish at <selector>._domainkey.<domain> for this key."""
    public = _public_key_info(_pkcs1_der(private_key))
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _public_key_info(pkcs1: bytes) -> bytes:
    """SubjectPublicKeyInfo (modulus, exponent) from an RSAPrivateKey."""
    _, content, _ = _der_item(pkcs1, 0)
    _, _, at = _der_item(pkcs1, content)  # version
    _, _, n_end = _der_item(pkcs1, at)  # modulus
    _, _, e_end = _der_item(pkcs1, n_end)  # publicExponent
    rsa_public = _der(0x30, pkcs1[at:e_end])  # both INTEGERs as they are
    algorithm = _der(0x30, _der(0x06, _RSA_OID) + b"\x05\x00")
    return _der(0x30, algorithm + _der(0x03, b"\x00" + rsa_public))
