"""lifecycle/dkim.py: signatures that dkimpy's verifier accepts (RSA and Ed25519), relaxed
canonicalization as RFC 6376 spells it, and the keys it refuses.

Keys are made here with `cryptography`; dkimpy (a test dependency, with PyNaCl for Ed25519) is the
independent verifier, fed the key's TXT record through a DNS stub.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x25519
from dkim.canonicalization import Relaxed as DkimpyRelaxed  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from lifecycle.dkim import (
    DkimKeyError,
    DkimSigner,
    dns_txt_record,
    relaxed_body,
    relaxed_header,
    signer_from_settings,
)
from lifecycle.dkim import _crlf as _crlf_of_the_signer
from lifecycle.settings import Settings

SELECTOR, DOMAIN = "s2026", "shop.example"
ALL_SIGNED = ["from", "to", "subject", "date", "message-id", "list-unsubscribe", "list-unsubscribe-post",
              "mime-version", "content-type"]


def _pem(key: Any, form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
         encryption: serialization.KeySerializationEncryption | None = None) -> bytes:
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, form, encryption or serialization.NoEncryption())
    return pem


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    """One RSA 2048 key as PKCS#8 (what `openssl genrsa` writes since 3.0) and PKCS#1, one Ed25519 key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {"rsa-pkcs8": _pem(key), "rsa-pkcs1": _pem(key, serialization.PrivateFormat.TraditionalOpenSSL),
            "ed25519": _pem(ed25519.Ed25519PrivateKey.generate())}


@pytest.fixture(scope="module")
def signers(keys: dict[str, bytes]) -> dict[str, DkimSigner]:
    """One signer per key (loading a key checks it, which takes OpenSSL a while for RSA)."""
    return {form: DkimSigner(SELECTOR, DOMAIN, pem) for form, pem in keys.items()}


@pytest.fixture(scope="module")
def dns(keys: dict[str, bytes]) -> dict[str, Any]:
    """dkimpy's `dnsfunc` for each key."""
    return {form: dns_stub(dns_txt_record(pem)) for form, pem in keys.items()}


def dns_stub(record: str, selector: str = SELECTOR, domain: str = DOMAIN) -> Any:
    """dkimpy's `dnsfunc`: the one TXT record of the test key, nothing else."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name == f"{selector}._domainkey.{domain}.".encode() else None

    return lookup


def _composed() -> bytes:
    """A message as the composer makes it: LF line endings, a UTF-8 subject as encoded words."""
    message = EmailMessage()
    message["From"] = "Shop <hello@shop.example>"
    message["To"] = "ana@example.com"
    message["Subject"] = "Bienvenue chez Shop — votre code, Ana, et merci d’être là"
    message["Date"] = format_datetime(datetime(2026, 9, 1, 9, 0, tzinfo=UTC))
    message["Message-ID"] = "<1.1.abcdef@shop.example>"
    message["X-Lifecycle-Journey"] = "prospect_welcome"
    message["List-Unsubscribe"] = "<https://shop.example/u/abc>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("Bonjour Ana,\n\nMerci ! Ça arrive bientôt.\n.\n", cte="8bit")
    return bytes(message)


MESSAGES = {
    "composed": _composed(),
    "folded headers": (b"From: Shop\r\n <hello@shop.example>\r\nTo: ana@example.com,\r\n\tbob@example.com\r\n"
                       b"Subject: a subject\r\n  folded twice\r\n   and thrice\r\n\r\nHello\r\n"),
    "repeated whitespace": (b"From:   Shop   <hello@shop.example>  \r\nSubject:\t two\t\t tabs  \r\n"
                            b"\r\n  lead  and\t\ttrail  \t\r\nmiddle \t \t spaces\r\n"),
    "trailing blank lines": b"From: hello@shop.example\r\nSubject: hi\r\n\r\nbody\r\n\r\n\r\n \r\n\t\r\n\r\n",
    "empty body": b"From: hello@shop.example\r\nSubject: nothing\r\n\r\n",
    "blank lines only": b"From: hello@shop.example\r\nSubject: nothing\r\n\r\n\r\n\r\n",
    "utf-8": ("From: =?utf-8?q?Boutique_=C3=A9t=C3=A9?= <hello@shop.example>\r\n"
              "Subject: =?utf-8?b?w4dhIGFycml2ZSDwn5OmIGJpZW50w7R0?=\r\n"
              "To: Zoë Ångström <zoe@example.com>\r\nMIME-Version: 1.0\r\n"
              "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
              "Ça arrive 📦 bientôt,  Zoë.\r\n").encode(),
    "lf only": b"From: hello@shop.example\nSubject: lf\n continued\n\nline one  \nline two\n\n",
}


@pytest.mark.parametrize("form", ["rsa-pkcs8", "rsa-pkcs1", "ed25519"])
@pytest.mark.parametrize("case", list(MESSAGES))
def test_signatures_verify_with_dkimpy(signers: dict[str, DkimSigner], dns: dict[str, Any], form: str,
                                       case: str) -> None:
    signed = signers[form].sign(MESSAGES[case])
    assert dkim.verify(signed, dnsfunc=dns[form])
    assert re.search(rb"(?<!\r)\n", signed) is None  # CRLF everywhere, as SMTP sends it


@pytest.mark.parametrize("case", list(MESSAGES))
def test_the_body_hash_is_the_one_dkimpy_computes(keys: dict[str, bytes], signers: dict[str, DkimSigner],
                                                  case: str) -> None:
    ours = signers["rsa-pkcs1"].sign(MESSAGES[case])
    theirs = dkim.sign(_crlf(MESSAGES[case]), SELECTOR.encode(), DOMAIN.encode(), keys["rsa-pkcs1"],
                       canonicalize=(b"relaxed", b"relaxed"))
    assert _tag(ours, "bh") == _tag(theirs, "bh")


def _crlf(message: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", message)


def _signature_header(signed: bytes) -> str:
    return re.match(rb"DKIM-Signature:.*?\r\n(?![ \t])", signed, re.DOTALL).group(0).decode()  # type: ignore[union-attr]


def _tag(signed: bytes, name: str) -> str:
    header = _signature_header(signed).split(":", 1)[1]
    tags = dict(part.split("=", 1) for part in re.sub(r"\s+", "", header).split(";") if part)
    return tags[name]


@pytest.mark.parametrize("form", ["rsa-pkcs8", "ed25519"])
def test_the_signature_header(signers: dict[str, DkimSigner], form: str) -> None:
    signed = signers[form].sign(MESSAGES["composed"], now=1_790_000_000)
    header = _signature_header(signed)
    algorithm = "ed25519-sha256" if form == "ed25519" else "rsa-sha256"
    assert header.startswith(f"DKIM-Signature: v=1; a={algorithm}; c=relaxed/relaxed; d=shop.example;")
    assert _tag(signed, "s") == SELECTOR and _tag(signed, "t") == "1790000000"
    # the headers present, in the fixed order (X-Lifecycle-Journey is not one of them)
    assert _tag(signed, "h").split(":") == ALL_SIGNED
    # folded: no line longer than 78 characters, every continuation line starts with a space
    lines = header.removesuffix("\r\n").split("\r\n")
    assert len(lines) > 1 and all(len(line) <= 78 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert signed.endswith(_crlf(MESSAGES["composed"]))
    assert len(base64.b64decode(_tag(signed, "b"))) == (64 if form == "ed25519" else 256)


def test_only_the_headers_present_are_signed(signers: dict[str, DkimSigner]) -> None:
    signed = signers["ed25519"].sign(b"To: a@example.com\r\nFROM: b@shop.example\r\n\r\nx")
    assert _tag(signed, "h") == "from:to"


@pytest.mark.parametrize("form", ["rsa-pkcs8", "ed25519"])
def test_changes_break_the_signature(signers: dict[str, DkimSigner], dns: dict[str, Any], form: str) -> None:
    signed = signers[form].sign(MESSAGES["composed"])
    assert dkim.verify(signed, dnsfunc=dns[form])
    # what a receiver adds in front does not matter, nor refolding a signed header (relaxed)
    assert dkim.verify(b"Received: from somewhere\r\n" + signed, dnsfunc=dns[form])
    assert dkim.verify(signed.replace(b"To: ana@example.com", b"To:  \r\n ana@example.com"), dnsfunc=dns[form])
    # a changed signed header or body does
    assert not dkim.verify(signed.replace(b"Subject: ", b"Subject: Re: "), dnsfunc=dns[form])
    assert not dkim.verify(signed.replace(b"Merci", b"Mercy"), dnsfunc=dns[form])
    assert not dkim.verify(signed + b"one more line\r\n", dnsfunc=dns[form])
    # nor does another key published under the selector
    other = _pem(ed25519.Ed25519PrivateKey.generate() if form == "ed25519"
                 else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert not dkim.verify(signed, dnsfunc=dns_stub(dns_txt_record(other)))


def test_a_repeated_header_is_signed_in_its_last_instance(signers: dict[str, DkimSigner],
                                                          dns: dict[str, Any]) -> None:
    """RFC 6376 §5.4.2: a name in h= stands for the last instance; verifiers look bottom-up too."""
    message = b"From: hello@shop.example\r\nSubject: first\r\nTo: a@example.com\r\nSubject: second\r\n\r\nbody\r\n"
    signed = signers["rsa-pkcs8"].sign(message)
    assert dkim.verify(signed, dnsfunc=dns["rsa-pkcs8"])
    assert dkim.verify(signed.replace(b"Subject: first", b"Subject: changed"), dnsfunc=dns["rsa-pkcs8"])
    assert not dkim.verify(signed.replace(b"Subject: second", b"Subject: changed"), dnsfunc=dns["rsa-pkcs8"])


def test_the_signature_time_is_injected(keys: dict[str, bytes]) -> None:
    signer = DkimSigner(SELECTOR, DOMAIN, keys["ed25519"], clock=lambda: 1_790_000_123.9)
    assert _tag(signer.sign(MESSAGES["empty body"]), "t") == "1790000123"
    moment = datetime(2026, 9, 1, 9, 0, tzinfo=UTC)
    assert _tag(signer.sign(MESSAGES["empty body"], now=moment), "t") == str(int(moment.timestamp()))
    assert _tag(signer.sign(MESSAGES["empty body"], now=1_800_000_000), "t") == "1800000000"
    with pytest.raises(ValueError, match="time zone"):
        signer.sign(MESSAGES["empty body"], now=datetime(2026, 9, 1, 9, 0))


def test_a_message_without_from_is_not_signed(signers: dict[str, DkimSigner]) -> None:
    with pytest.raises(ValueError, match="without a From header"):
        signers["ed25519"].sign(b"To: a@example.com\r\n\r\nx\r\n")


# RFC 6376 §3.4.5, the example message
RFC_HEADER = b"A: X\r\nB : Y\t\r\n\tZ  \r\n"
RFC_BODY = b" C \r\nD \t E\r\n\r\n\r\n"


def test_relaxed_canonicalization_of_the_rfc_example() -> None:
    fields = re.split(rb"\r\n(?![ \t])", RFC_HEADER.removesuffix(b"\r\n"))  # one field and its continuations
    assert [relaxed_header(field) for field in fields] == [b"a:X", b"b:Y Z"]
    assert relaxed_body(RFC_BODY) == b" C\r\nD E\r\n"


@pytest.mark.parametrize(("body", "canonical"), [
    (b"", b""),
    (b"\r\n", b""),
    (b"\r\n\r\n \t\r\n", b""),
    (b"x", b"x\r\n"),
    (b"x  \t", b"x\r\n"),  # SMTP ends the last line with CRLF, so its trailing WSP goes as well
    (b"x\r\n\r\ny\r\n\r\n", b"x\r\n\r\ny\r\n"),
    (b"\tindented\r\n", b" indented\r\n"),
    (b"a\rb \r\n", b"a\rb\r\n"),  # a lone CR is not a line end
])
def test_relaxed_body(body: bytes, canonical: bytes) -> None:
    assert relaxed_body(body) == canonical


def test_the_empty_body_hashes_as_the_empty_string(signers: dict[str, DkimSigner], dns: dict[str, Any]) -> None:
    signed = signers["ed25519"].sign(b"From: hello@shop.example\r\n")  # no body at all
    assert _tag(signed, "bh") == base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert dkim.verify(signed, dnsfunc=dns["ed25519"])


@pytest.mark.parametrize(("field", "canonical"), [
    (b"Subject: Hello", b"subject:Hello"),
    (b"SUBJECT \t:  a  b\t c \t", b"subject:a b c"),
    (b"To: a@example.com,\r\n b@example.com", b"to:a@example.com, b@example.com"),
    (b"X-Empty:", b"x-empty:"),
    ("Subject: Zoë  😀".encode(), "subject:Zoë 😀".encode()),
])
def test_relaxed_header(field: bytes, canonical: bytes) -> None:
    assert relaxed_header(field) == canonical


def test_the_dns_records(keys: dict[str, bytes], signers: dict[str, DkimSigner]) -> None:
    spki = signers["rsa-pkcs8"].key.public_key().public_bytes(serialization.Encoding.DER,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert dns_txt_record(keys["rsa-pkcs8"]) == "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()
    assert dns_txt_record(keys["rsa-pkcs1"]) == dns_txt_record(keys["rsa-pkcs8"])
    record = dns_txt_record(keys["ed25519"])
    assert record.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(record.split("p=", 1)[1])
    assert raw == signers["ed25519"].key.public_key().public_bytes(serialization.Encoding.Raw,
                                                                   serialization.PublicFormat.Raw)
    assert len(raw) == 32


def _rsa_512() -> bytes:
    """A 512-bit RSA key: `cryptography` makes none under 1024 bits, so the primes are found here."""
    rng = random.Random(512)

    def probably_prime(n: int) -> bool:
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(40):
            x = pow(rng.randrange(2, n - 1), d, n)
            if x in (1, n - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                return False
        return True

    def prime() -> int:
        while True:
            candidate = rng.getrandbits(256) | (3 << 254) | 1
            if probably_prime(candidate) and (candidate - 1) % 65537:
                return candidate

    p, q = prime(), prime()
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                                    rsa.RSAPublicNumbers(65537, p * q))
    return _pem(numbers.private_key())


def _refused_key(name: str) -> bytes:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    password = serialization.BestAvailableEncryption(b"secret")
    match name:
        case "not pem":
            return b"hello"
        case "broken pem":
            return b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        case "public key":
            return rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo)
        case "encrypted pkcs8":
            return _pem(rsa_key, encryption=password)
        case "encrypted pkcs1":
            return _pem(rsa_key, serialization.PrivateFormat.TraditionalOpenSSL, password)
        case "rsa 512":
            return _rsa_512()
        case "ec":
            return _pem(ec.generate_private_key(ec.SECP256R1()))
        case "ed448":
            return _pem(ed448.Ed448PrivateKey.generate())
        case "x25519":
            return _pem(x25519.X25519PrivateKey.generate())
        case "dsa":
            return _pem(dsa.generate_private_key(1024))
    raise AssertionError(name)


REFUSED = {
    "not pem": "no PEM private key found",
    "broken pem": "not a usable PEM private key",
    "public key": "not a usable PEM private key",
    "encrypted pkcs8": "the DKIM key is encrypted",
    "encrypted pkcs1": "the DKIM key is encrypted",
    "rsa 512": "the RSA key has 512 bits: DKIM needs at least 1024",
    "ec": "unsupported key type EC: DKIM signs with an RSA key",
    "ed448": "unsupported key type Ed448",
    "x25519": "unsupported key type X25519",
    "dsa": "unsupported key type DSA",
}


@pytest.mark.parametrize(("name", "message"), REFUSED.items(), ids=list(REFUSED))
def test_unusable_keys_are_refused_when_the_signer_is_made(name: str, message: str) -> None:
    pem = _refused_key(name)
    with pytest.raises(DkimKeyError, match=message):
        DkimSigner("s1", DOMAIN, pem)
    with pytest.raises(DkimKeyError, match=message):
        dns_txt_record(pem)


def test_a_1024_bit_rsa_key_is_accepted() -> None:
    pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    signed = DkimSigner(SELECTOR, DOMAIN, pem).sign(MESSAGES["composed"])
    assert dkim.verify(signed, dnsfunc=dns_stub(dns_txt_record(pem)))


def test_signing_is_only_on_when_all_three_settings_are_set(keys: dict[str, bytes], tmp_path: Path) -> None:
    assert signer_from_settings(Settings()) is None
    with pytest.raises(DkimKeyError, match="needs all of"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain=DOMAIN))
    with pytest.raises(DkimKeyError, match="cannot read"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain=DOMAIN,
                                      dkim_private_key_file=tmp_path / "missing.pem"))
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    with pytest.raises(DkimKeyError, match="no PEM private key"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain=DOMAIN, dkim_private_key_file=not_a_key))
    for form, algorithm in (("rsa-pkcs8", "rsa-sha256"), ("ed25519", "ed25519-sha256")):
        path = tmp_path / f"{form}.pem"
        path.write_bytes(keys[form])
        signer = signer_from_settings(Settings(dkim_selector="s1", dkim_domain=DOMAIN, dkim_private_key_file=path))
        assert signer is not None and signer.selector == b"s1" and signer.algorithm == algorithm


_TEXT_BITS = [b" ", b"\t", b"\r\n", b"\n", b"a", b"b", "é".encode(), b"."]
_WSP_TEXT = st.lists(st.sampled_from([*_TEXT_BITS, b"\r"]), max_size=40).map(b"".join)
# no lone CR in a header: dkimpy strips it at the end of a value, RFC 6376 only strips WSP (SP, HTAB)
_HEADER_TEXT = st.lists(st.sampled_from(_TEXT_BITS), max_size=40).map(b"".join)


@given(_WSP_TEXT)
def test_crlf_turns_each_lone_lf_into_crlf(text: bytes) -> None:
    assert _crlf_of_the_signer(text) == re.sub(rb"(?<!\r)\n", b"\r\n", text)


@given(_WSP_TEXT.map(_crlf))
def test_relaxed_body_agrees_with_dkimpy(body: bytes) -> None:
    """dkimpy's canonicalization, for bodies as SMTP sends them (ending with CRLF, or empty)."""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    assert relaxed_body(body) == DkimpyRelaxed.canonicalize_body(body)


@given(st.sampled_from([b"Subject", b"TO", b"x-Other \t"]), _HEADER_TEXT.map(_crlf))
def test_relaxed_header_agrees_with_dkimpy(name: bytes, value: bytes) -> None:
    value = re.sub(rb"\r\n(?![ \t])", b"\r\n ", value).removesuffix(b"\r\n ")  # folded: CRLF then WSP
    [(theirs_name, theirs_value)] = DkimpyRelaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(name + b":" + value) + b"\r\n" == theirs_name + b":" + theirs_value


@pytest.mark.parametrize("form", ["rsa-pkcs8", "ed25519"])
def test_both_unsubscribe_headers_of_a_composed_email_are_signed(signers: dict[str, DkimSigner],
                                                                 dns: dict[str, Any], form: str) -> None:
    """One-click unsubscribe (RFC 8058) counts only when the signature covers both headers."""
    from lifecycle.templates import Templates
    from lifecycle.tokens import SigningKeys
    from services.dispatcher.compose import MessageSpec, compose_wire

    settings = Settings(public_url="https://mail.shop.example", signing_secret="test-secret",
                        sender_address="Shop, 1 rue X, Paris")
    spec = MessageSpec(journey="win_back", step=1, template="win_back_1", message_id="<9.1.abc@shop.example>",
                       to_address="ana@example.com", customer={"customer_id": "c1", "first_name": "Ana"},
                       context={}, extras={}, date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC))
    wire = compose_wire(settings, SigningKeys.from_settings(settings), Templates(), spec).message
    signed = signers[form].sign(wire)
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(_tag(signed, "h").split(":"))
    assert dkim.verify(signed, dnsfunc=dns[form])
    unsubscribe = re.search(rb"\r\nList-Unsubscribe: <(https://mail\.shop\.example/v1/unsubscribe/[^>]+)>", signed)
    assert unsubscribe is not None
    # another unsubscribe URL, or the one-click header removed or changed, and the signature fails
    assert not dkim.verify(signed.replace(unsubscribe.group(1), b"https://evil.example/u"), dnsfunc=dns[form])
    assert not dkim.verify(signed.replace(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n", b""),
                           dnsfunc=dns[form])
    assert not dkim.verify(signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=No"), dnsfunc=dns[form])
