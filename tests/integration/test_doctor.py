"""`lifecycle doctor` as an operator runs it, asking a real DNS server and reaching a real SMTP relay.

The DNS server is a small UDP responder written with dnspython's message API, on 127.0.0.1 and a
free port, serving the zone each test writes; the relay is aiosmtpd with STARTTLS (a certificate
made with the openssl command) and AUTH. The command runs as its own process, pointed at them with
`--nameserver` and the LIFECYCLE_SMTP_* settings, and is read by its output lines and exit code.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lifecycle.dkim import dns_txt_record

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class TxtServer:
    """Answers TXT questions from `zone` (name -> records); NXDOMAIN for a name it does not hold.
    With `silent`, it reads questions and answers none (a resolver that times out)."""

    def __init__(self, silent: bool = False) -> None:
        self.zone: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.silent = silent
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.1)
        self.port = int(self.socket.getsockname()[1])
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, client = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            [question] = query.question
            name = question.name.to_text(omit_final_dot=True).lower()
            self.asked.append(name)
            if self.silent:
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            records = self.zone.get(name)
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                answer = response.find_rrset(response.answer, question.name, dns.rdataclass.IN, dns.rdatatype.TXT,
                                             create=True)
                for record in records:
                    raw = record.encode()
                    # a TXT record is strings of at most 255 bytes: long ones are split, as zone files do
                    strings = [raw[at:at + 255] for at in range(0, len(raw), 255)] or [b""]
                    answer.add(dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, strings), ttl=60)
            self.socket.sendto(response.to_wire(), client)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.socket.close()


@pytest.fixture
def dns_server() -> Iterator[TxtServer]:
    server = TxtServer()
    yield server
    server.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Relay:
    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        return "250 OK"


def _accounts(server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"shop", b"s3cret")
    return AuthResult(success=ok, handled=False)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An SMTP relay on 127.0.0.1 that wants STARTTLS, then AUTH as shop/s3cret; (port, its CA file)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed (Debian: apt-get install openssl)"
    directory = tmp_path_factory.mktemp("relay")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    port = _free_port()
    controller = Controller(_Relay(), hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True,
                            authenticator=_accounts, auth_required=True)
    controller.start()
    try:
        yield port, cert
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("doctor") / "dkim.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def production(dkim_key: Path, relay: tuple[int, Path], **changes: str) -> dict[str, str]:
    """A configuration ready for real mailboxes, as LIFECYCLE_* variables."""
    port, ca_file = relay
    values = {"smtp_host": "127.0.0.1", "smtp_port": str(port), "smtp_tls": "starttls", "smtp_username": "shop",
              "smtp_password": "s3cret", "smtp_ca_file": str(ca_file), "smtp_timeout_seconds": "5",
              "environment": "production", "api_keys": "sha256:" + "1" * 64, "admin_keys": "admin-of-ours",
              "signing_secret": "ours-0123456789", "public_url": "https://mail.shop.example",
              "sender_address": "Maison Lin, 12 rue des Lilas, 75011 Paris, France",
              "mail_from": "Maison Lin <hello@shop.example>", "dkim_selector": "s2026", "dkim_domain": "shop.example",
              "dkim_private_key_file": str(dkim_key), **changes}
    return {f"LIFECYCLE_{name.upper()}": value for name, value in values.items()}


def good_zone(dkim_key: Path) -> dict[str, list[str]]:
    return {
        "shop.example": ["google-site-verification=abc", "v=spf1 include:_spf.relay.example -all"],
        "s2026._domainkey.shop.example": [dns_txt_record(dkim_key.read_bytes())],
        "_dmarc.shop.example": ["v=DMARC1; p=reject; rua=mailto:dmarc@shop.example"],
    }


def doctor(server: TxtServer, variables: dict[str, str], *args: str) -> tuple[int, list[str]]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("LIFECYCLE_")}
    result = subprocess.run([sys.executable, "-m", "lifecycle.cli", "doctor", "--nameserver",
                             f"127.0.0.1:{server.port}", *args], cwd=ROOT, env={**env, **variables},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stderr == "" and "Traceback" not in result.stdout
    return result.returncode, result.stdout.splitlines()


def test_a_configuration_ready_for_mailbox_providers(dns_server: TxtServer, dkim_key: Path,
                                                     relay: tuple[int, Path]) -> None:
    dns_server.zone = good_zone(dkim_key)
    code, lines = doctor(dns_server, production(dkim_key, relay))
    assert lines == [
        "ok    environment: production",
        "ok    secrets: no development key or secret (ingest, stager, dispatcher, bounces)",
        "ok    public URL: https://mail.shop.example (https: the links and List-Unsubscribe)",
        "ok    postal address: the footers show 'Maison Lin, 12 rue des Lilas, 75011 Paris, France'",
        "ok    SPF: shop.example has one SPF record (v=spf1 include:_spf.relay.example -all); it must name your "
        "SMTP relay",
        "ok    DKIM: s2026._domainkey.shop.example publishes the public key of LIFECYCLE_DKIM_PRIVATE_KEY_FILE (rsa)",
        "ok    DMARC: _dmarc.shop.example has p=reject",
        "ok    DMARC: the DKIM domain shop.example is aligned with the From domain shop.example (relaxed)",
        f"ok    SMTP: the relay 127.0.0.1:{relay[0]} answers (with STARTTLS, AUTH as shop)",
        "all is well, 0 warnings",
    ]
    assert code == 0
    assert dns_server.asked == ["shop.example", "s2026._domainkey.shop.example", "_dmarc.shop.example"]


def test_what_a_mailbox_provider_would_hold_against_a_configuration(dns_server: TxtServer, dkim_key: Path,
                                                                     relay: tuple[int, Path]) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    dns_server.zone = {
        "news.shop.example": ["v=spf1 include:_spf.relay.example ~all", "v=spf1 a -all"],
        # the key of an earlier private key, left in DNS
        "s2026._domainkey.relay.example": [dns_txt_record(other_pem)],
        "_dmarc.shop.example": ["v=DMARC1; p=none"],
    }
    closed = _free_port()  # nothing listens there
    variables = production(dkim_key, relay, mail_from="Maison Lin <hello@news.shop.example>",
                           public_url="http://127.0.0.1", sender_address="",
                           signing_secret="dev-signing-secret-change-me", dkim_domain="relay.example",
                           smtp_port=str(closed), smtp_tls="none", smtp_username="")
    code, lines = doctor(dns_server, variables, "--service", "dispatcher")
    # the connection error in the SMTP line is aiosmtplib's
    smtp = lines[-2]
    assert smtp.startswith(f"FAIL  SMTP: the relay 127.0.0.1:{closed} could not be used: Error connecting to ")
    assert smtp.endswith("; check LIFECYCLE_SMTP_HOST, LIFECYCLE_SMTP_PORT, LIFECYCLE_SMTP_TLS")
    lines[-2] = "SMTP"
    expected_key = dns_txt_record(dkim_key.read_bytes())
    assert lines == [
        "ok    environment: production",
        "FAIL  secrets: LIFECYCLE_SIGNING_SECRET is the development default and LIFECYCLE_SIGNING_KEYS is empty; "
        "set your own secret",
        "FAIL  public URL: LIFECYCLE_PUBLIC_URL is http://127.0.0.1, not https: List-Unsubscribe and the links in "
        "emails must be https; set the https URL of the ingest API",
        "FAIL  public URL: LIFECYCLE_PUBLIC_URL points at 127.0.0.1, which recipients cannot reach; set the public "
        "https address of the ingest API",
        "FAIL  postal address: LIFECYCLE_SENDER_ADDRESS is not set: every marketing email must show the shop's "
        "postal address in its footer; set it, like 'Shop, 1 rue de la Paix, 75002 Paris, France'",
        "FAIL  SPF: news.shop.example has 2 SPF records, which receivers treat as an error (no SPF at all): merge "
        "them into one",
        "FAIL  DKIM: the public key at s2026._domainkey.relay.example does not match "
        "LIFECYCLE_DKIM_PRIVATE_KEY_FILE: every signature would fail; publish one TXT record "
        f"\"{expected_key}\" there",
        "warn  DMARC: _dmarc.shop.example has p=none: receivers act on nothing that fails DMARC; once the reports "
        "show your mail passing, move to p=quarantine or p=reject",
        "FAIL  DMARC: the DKIM domain relay.example is not aligned with the From domain news.shop.example (relaxed "
        "alignment): DMARC fails even with a valid signature; sign with LIFECYCLE_DKIM_DOMAIN=shop.example or a "
        "domain under it",
        "SMTP",
        "8 problems to fix, 1 warning",
    ]
    assert code == 1
    # the subdomain has no DMARC record of its own: its registered domain's applies
    assert dns_server.asked[-2:] == ["_dmarc.news.shop.example", "_dmarc.shop.example"]


def test_warnings_alone_leave_the_exit_code_at_0(dns_server: TxtServer, dkim_key: Path,
                                                  relay: tuple[int, Path]) -> None:
    dns_server.zone = {**good_zone(dkim_key), "shop.example": ["v=spf1 include:_spf.relay.example +all"],
                       "_dmarc.shop.example": ["v=DMARC1; p=none; rua=mailto:dmarc@shop.example"]}
    code, lines = doctor(dns_server, production(dkim_key, relay))
    assert [line for line in lines if line.startswith("warn")] == [
        "warn  SPF: shop.example's SPF record ends in +all: any server may send as shop.example; end it with ~all "
        "or -all (v=spf1 include:_spf.relay.example +all)",
        "warn  DMARC: _dmarc.shop.example has p=none: receivers act on nothing that fails DMARC; once the reports "
        "show your mail passing, move to p=quarantine or p=reject",
    ]
    assert lines[-1] == "all is well, 2 warnings" and code == 0


def test_no_records_at_all_say_what_to_publish(dns_server: TxtServer, dkim_key: Path,
                                                relay: tuple[int, Path]) -> None:
    code, lines = doctor(dns_server, production(dkim_key, relay))
    dns_lines = [line for line in lines if line.split()[1] in ("SPF:", "DKIM:", "DMARC:")]
    assert dns_lines == [
        "FAIL  SPF: shop.example has no SPF record: publish one TXT record there, like \"v=spf1 include:<your "
        "relay's SPF domain> ~all\" (your relay's documentation names it)",
        "FAIL  DKIM: no DKIM key is published at s2026._domainkey.shop.example: receivers cannot check the "
        f"signatures; publish one TXT record \"{dns_txt_record(dkim_key.read_bytes())}\" there",
        "FAIL  DMARC: no DMARC record for shop.example: publish a TXT record at _dmarc.shop.example, like "
        "\"v=DMARC1; p=none; rua=mailto:dmarc-reports@shop.example\", then move to p=quarantine once the reports "
        "show your mail passing",
    ]
    assert lines[-2:] == [f"ok    SMTP: the relay 127.0.0.1:{relay[0]} answers (with STARTTLS, AUTH as shop)",
                          "3 problems to fix, 0 warnings"]
    assert code == 1


def test_a_dns_server_that_does_not_answer_is_said_so(dkim_key: Path, relay: tuple[int, Path]) -> None:
    server = TxtServer(silent=True)
    try:
        code, lines = doctor(server, production(dkim_key, relay), "--timeout", "0.5")
    finally:
        server.close()
    assert [line for line in lines if "DNS did not answer" in line] == [
        f"FAIL  {topic}: DNS did not answer: no answer for {name} within 0.5 s; check the resolver (or --nameserver)"
        for topic, name in (("SPF", "shop.example"), ("DKIM", "s2026._domainkey.shop.example"),
                            ("DMARC", "_dmarc.shop.example"))]
    assert code == 1


def test_a_bad_nameserver_is_one_line(dkim_key: Path, relay: tuple[int, Path]) -> None:
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")}
    result = subprocess.run([sys.executable, "-m", "lifecycle.cli", "doctor", "--nameserver", "dns.example"],
                            cwd=ROOT, env={**env, **production(dkim_key, relay)}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == "doctor: 'dns.example' is not an IP address with an optional port, like 127.0.0.1:5353\n"


def test_a_relay_that_refuses_the_credentials_or_the_certificate(dns_server: TxtServer, dkim_key: Path,
                                                                relay: tuple[int, Path]) -> None:
    dns_server.zone = good_zone(dkim_key)
    code, lines = doctor(dns_server, production(dkim_key, relay, smtp_password="wrong"))
    [smtp] = [line for line in lines if " SMTP: " in line]
    assert smtp.startswith(f"FAIL  SMTP: the relay 127.0.0.1:{relay[0]} could not be used: (535, ")
    assert smtp.endswith("check LIFECYCLE_SMTP_HOST, LIFECYCLE_SMTP_PORT, LIFECYCLE_SMTP_TLS, the user name and "
                         "password")
    assert code == 1
    # its certificate is verified: without its CA, the relay is not trusted
    without_ca = {k: v for k, v in production(dkim_key, relay).items() if k != "LIFECYCLE_SMTP_CA_FILE"}
    code, lines = doctor(dns_server, without_ca)
    [smtp] = [line for line in lines if " SMTP: " in line]
    assert "certificate verify failed" in smtp and code == 1
    # and --skip-smtp leaves the relay alone
    code, lines = doctor(dns_server, production(dkim_key, relay, smtp_password="wrong"), "--skip-smtp")
    assert not [line for line in lines if " SMTP: " in line] and code == 0
