"""lifecycle/dkim.py: signatures that dkimpy's verifier accepts, keys as openssl writes them."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest

from lifecycle.dkim import DkimKeyError, DkimSigner, dns_txt_record, load_private_key, signer_from_settings
from lifecycle.settings import Settings


def _openssl(*args: str) -> bytes:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed (Debian: apt-get install openssl)"
    return subprocess.run([openssl, *args], check=True, capture_output=True).stdout


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A PKCS#8 key (what `openssl genrsa` writes), the same key as PKCS#1, and its public half."""
    directory = tmp_path_factory.mktemp("dkim")
    pkcs8 = directory / "dkim.pem"
    _openssl("genrsa", "-out", str(pkcs8), "2048")
    pkcs1 = _openssl("rsa", "-in", str(pkcs8), "-traditional")
    public = _openssl("rsa", "-in", str(pkcs8), "-pubout", "-outform", "DER")
    return {"path": pkcs8, "pkcs8": pkcs8.read_bytes(), "pkcs1": pkcs1, "public": public}


def dns_stub(selector: str, domain: str, record: str) -> Any:
    """dkimpy's `dnsfunc`: the one TXT record of the test key, nothing else."""

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name == f"{selector}._domainkey.{domain}.".encode() else None

    return lookup


def _message() -> bytes:
    message = EmailMessage()
    message["From"] = "Shop <hello@shop.example>"
    message["To"] = "ana@example.com"
    message["Subject"] = "Bienvenue chez Shop — votre code"
    message["Date"] = format_datetime(datetime(2026, 9, 1, 9, 0, tzinfo=UTC))
    message["Message-ID"] = "<1.1.abcdef@shop.example>"
    message["X-Lifecycle-Journey"] = "prospect_welcome"
    message["List-Unsubscribe"] = "<https://shop.example/u/abc>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content("Bonjour Ana,\n\nMerci !\n.\n")
    return bytes(message)


def test_the_dns_record_holds_the_public_key(keys: dict[str, Any]) -> None:
    import base64

    assert dns_txt_record(keys["pkcs8"]) == "v=DKIM1; k=rsa; p=" + base64.b64encode(keys["public"]).decode()
    assert dns_txt_record(keys["pkcs1"]) == dns_txt_record(keys["pkcs8"])
    assert load_private_key(keys["pkcs8"]) == load_private_key(keys["pkcs1"])


@pytest.mark.parametrize("form", ["pkcs8", "pkcs1"])
def test_a_signed_message_verifies(keys: dict[str, Any], form: str) -> None:
    signer = DkimSigner("s2026", "shop.example", keys[form])
    signed = signer.sign(_message())
    head = signed.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example;")
    signed_headers = head.split(" h=", 1)[1].split(";", 1)[0].replace("\r\n", "").replace(" ", "")
    assert signed_headers.split(":") == ["from", "to", "subject", "date", "message-id", "list-unsubscribe",
                                         "list-unsubscribe-post", "mime-version", "content-type"]
    dns = dns_stub("s2026", "shop.example", dns_txt_record(keys["pkcs8"]))
    assert dkim.verify(signed, dnsfunc=dns)
    # what a receiver adds in front does not matter; a changed signed header or body does
    assert dkim.verify(b"Received: from somewhere\r\n" + signed, dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Subject: ", b"Subject: Re: "), dnsfunc=dns)
    assert not dkim.verify(signed.replace(b"Merci", b"Mercy"), dnsfunc=dns)
    assert not dkim.verify(signed, dnsfunc=dns_stub("s2026", "shop.example", dns_txt_record(_other_key())))


def _other_key() -> bytes:
    return _openssl("genrsa", "2048")


def test_signing_is_only_on_when_all_three_settings_are_set(keys: dict[str, Any], tmp_path: Path) -> None:
    assert signer_from_settings(Settings()) is None
    with pytest.raises(DkimKeyError, match="needs all of"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain="shop.example"))
    with pytest.raises(DkimKeyError, match="cannot read"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain="shop.example",
                                      dkim_private_key_file=tmp_path / "missing.pem"))
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("hello")
    with pytest.raises(DkimKeyError, match="no PEM private key"):
        signer_from_settings(Settings(dkim_selector="s1", dkim_domain="shop.example",
                                      dkim_private_key_file=not_a_key))
    signer = signer_from_settings(Settings(dkim_selector="s1", dkim_domain="shop.example",
                                           dkim_private_key_file=keys["path"]))
    assert signer is not None and signer.selector == b"s1"


def test_an_ec_key_is_refused_with_a_clear_error() -> None:
    ec = _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    with pytest.raises(DkimKeyError, match="only RSA"):
        DkimSigner("s1", "shop.example", ec)
