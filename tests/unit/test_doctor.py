"""lifecycle/doctor.py: the checks of records and settings, each finding one plain line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from lifecycle.dkim import dns_txt_record
from lifecycle.doctor import (
    DnsLookupError,
    Finding,
    aligned,
    diagnose,
    dkim_key_findings,
    dmarc_findings,
    dmarc_lookup,
    organizational_domain,
    parse_nameserver,
    parse_tags,
    recipient_findings,
    secrets_findings,
    spf_findings,
    summary,
)
from lifecycle.settings import Settings

DKIM_NAME = "s2026._domainkey.shop.example"


def _pem(key: Any) -> bytes:
    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem


@pytest.fixture(scope="module")
def rsa_pem() -> bytes:
    return _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ed25519_pem() -> bytes:
    return _pem(ed25519.Ed25519PrivateKey.generate())


def levels(findings: list[Finding]) -> list[str]:
    return [finding.level for finding in findings]


# --- SPF --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("records", "level", "says"), [
    (["v=spf1 include:_spf.relay.example ~all"], "ok", "shop.example has one SPF record"),
    (["google-site-verification=abc", "v=spf1 ip4:192.0.2.1 -all"], "ok", "(v=spf1 ip4:192.0.2.1 -all)"),
    (["V=SPF1 redirect=_spf.relay.example"], "ok", "one SPF record"),
    ([], "fail", "shop.example has no SPF record: publish one TXT record there"),
    (["v=spf10 -all", "spf1 -all"], "fail", "no SPF record"),
    (["v=spf1 a -all", "v=spf1 mx ~all"], "fail", "has 2 SPF records, which receivers treat as an error"),
    (["v=spf1 include:_spf.relay.example +all"], "warn", "ends in +all: any server may send as shop.example"),
    (["v=spf1 include:_spf.relay.example all"], "warn", "ends in all: any server may send"),
    (["v=spf1 mx ?all"], "warn", "ends in ?all"),
    (["v=spf1 mx"], "warn", "has no 'all' at its end"),
])
def test_spf(records: list[str], level: str, says: str) -> None:
    [finding] = spf_findings("shop.example", records)
    assert finding.level == level and says in finding.text


# --- DKIM -------------------------------------------------------------------------------------------


def test_tags_are_parsed_like_dkim_and_dmarc_records() -> None:
    assert parse_tags(" v=DKIM1 ;k = rsa; p=MIIB AQAB;;t=y:s; K=ed25519") == {
        "v": "DKIM1", "k": "rsa", "p": "MIIB AQAB", "t": "y:s"}


@pytest.mark.parametrize("form", ["rsa", "ed25519"])
def test_the_published_key_of_the_private_key_matches(form: str, rsa_pem: bytes, ed25519_pem: bytes) -> None:
    expected = dns_txt_record(rsa_pem if form == "rsa" else ed25519_pem)
    # as DNS often holds it: split into strings (joined by the lookup), blanks inside p=, no v=
    published = expected.removeprefix("v=DKIM1; ").replace("p=", "p= ")
    published = published[:60] + " " + published[60:]
    [finding] = dkim_key_findings(DKIM_NAME, ["unrelated=1", published], expected)
    assert finding.level == "ok"
    assert finding.line() == (f"ok    DKIM: {DKIM_NAME} publishes the public key of LIFECYCLE_DKIM_PRIVATE_KEY_FILE "
                              f"({form})")


def test_another_key_under_the_selector_fails(rsa_pem: bytes) -> None:
    other = dns_txt_record(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    [finding] = dkim_key_findings(DKIM_NAME, [other], dns_txt_record(rsa_pem))
    assert finding.level == "fail"
    assert finding.text.startswith(f"the public key at {DKIM_NAME} does not match LIFECYCLE_DKIM_PRIVATE_KEY_FILE: "
                                   "every signature would fail; publish one TXT record \"v=DKIM1; k=rsa; p=")


@pytest.mark.parametrize(("records", "says"), [
    ([], "no DKIM key is published at s2026._domainkey.shop.example"),
    (["v=DKIM1; k=rsa; p="], "is revoked (empty p=)"),
    (["v=DKIM1; p=!!!notbase64"], "is not base64"),
    (["v=DKIM1; k=rsa; p=AAAA", "v=DKIM1; k=rsa; p=BBBB"], "has 2 DKIM key records: keep only one"),
])
def test_missing_revoked_or_garbled_keys_fail(records: list[str], says: str, rsa_pem: bytes) -> None:
    expected = dns_txt_record(rsa_pem)
    [finding] = dkim_key_findings(DKIM_NAME, records, expected)
    assert finding.level == "fail" and says in finding.text
    assert finding.text.endswith(f"publish one TXT record \"{expected}\" there")


def test_a_key_of_another_kind_fails_and_says_which(rsa_pem: bytes, ed25519_pem: bytes) -> None:
    [finding] = dkim_key_findings(DKIM_NAME, [dns_txt_record(rsa_pem)], dns_txt_record(ed25519_pem))
    assert finding.level == "fail"
    assert f"{DKIM_NAME} publishes a k=rsa key but LIFECYCLE_DKIM_PRIVATE_KEY_FILE is an ed25519 key" in finding.text


def test_a_key_in_testing_mode_is_a_warning(ed25519_pem: bytes) -> None:
    expected = dns_txt_record(ed25519_pem)
    assert levels(dkim_key_findings(DKIM_NAME, [expected + "; t=y"], expected)) == ["ok", "warn"]


# --- DMARC ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("record", "level", "says"), [
    ("v=DMARC1; p=reject; rua=mailto:d@shop.example", "ok", "_dmarc.shop.example has p=reject"),
    ("v=DMARC1;p=quarantine", "ok", "has p=quarantine"),
    ("v=DMARC1; p=none", "warn", "has p=none: receivers act on nothing that fails DMARC"),
    ("v=DMARC1; rua=mailto:d@shop.example", "fail", "has no p= tag, so receivers ignore it"),
    ("v=DMARC1; p=block", "fail", "has p=block, which is not none, quarantine or reject"),
])
def test_dmarc_policy(record: str, level: str, says: str) -> None:
    [finding] = dmarc_findings("shop.example", "shop.example", ["other", record], None)
    assert finding.level == level and says in finding.text


def test_no_dmarc_record_or_two_fail() -> None:
    [missing] = dmarc_findings("news.shop.example", "shop.example", ["v=spf1 -all"], None)
    assert missing.level == "fail"
    assert missing.text.startswith("no DMARC record for news.shop.example: publish a TXT record at "
                                   "_dmarc.shop.example, like \"v=DMARC1; p=none;")
    [two] = dmarc_findings("shop.example", "shop.example", ["v=DMARC1; p=none", "v=DMARC1; p=reject"], None)
    assert two.level == "fail" and "has 2 DMARC records" in two.text


def test_a_subdomain_follows_the_subdomain_policy_of_its_registered_domain() -> None:
    [policy] = dmarc_findings("news.shop.example", "shop.example", ["v=DMARC1; p=reject; sp=none"], None)
    assert policy.level == "warn" and "_dmarc.shop.example has sp=none" in policy.text


def test_the_dmarc_record_is_looked_up_at_the_domain_then_at_its_registered_domain() -> None:
    asked: list[str] = []
    zone = {"_dmarc.shop.example": ["v=DMARC1; p=reject"]}

    def lookup(name: str) -> list[str]:
        asked.append(name)
        return zone.get(name, [])

    assert dmarc_lookup("news.shop.example", lookup) == ("shop.example", ["v=DMARC1; p=reject"])
    assert asked == ["_dmarc.news.shop.example", "_dmarc.shop.example"]
    asked.clear()
    assert dmarc_lookup("shop.example", lookup) == ("shop.example", ["v=DMARC1; p=reject"])
    assert asked == ["_dmarc.shop.example"]


@pytest.mark.parametrize(("from_domain", "dkim_domain", "strict", "expected"), [
    ("shop.example", "shop.example", True, True),
    ("news.shop.example", "shop.example", False, True),
    ("news.shop.example", "mail.shop.example", False, True),
    ("news.shop.example", "shop.example", True, False),
    ("shop.example", "relay.example", False, False),
    ("Shop.Example", "shop.example.", False, True),
])
def test_alignment(from_domain: str, dkim_domain: str, strict: bool, expected: bool) -> None:
    assert aligned(from_domain, dkim_domain, strict) is expected


def test_alignment_findings_say_which_domain_to_sign_with() -> None:
    record = ["v=DMARC1; p=reject"]
    assert levels(dmarc_findings("shop.example", "shop.example", record, "mail.shop.example")) == ["ok", "ok"]
    [_, misaligned] = dmarc_findings("shop.example", "shop.example", record, "relay.example")
    assert misaligned.level == "fail"
    assert misaligned.text == ("the DKIM domain relay.example is not aligned with the From domain shop.example "
                               "(relaxed alignment): DMARC fails even with a valid signature; sign with "
                               "LIFECYCLE_DKIM_DOMAIN=shop.example or a domain under it")
    [_, strict] = dmarc_findings("shop.example", "shop.example", ["v=DMARC1; p=reject; adkim=s"], "m.shop.example")
    assert strict.level == "fail" and "(strict alignment)" in strict.text
    assert strict.text.endswith("LIFECYCLE_DKIM_DOMAIN=shop.example")
    assert organizational_domain("a.b.shop.example.") == "shop.example"


# --- settings ---------------------------------------------------------------------------------------

OWN: dict[str, Any] = {"api_keys": "sha256:" + "1" * 64, "admin_keys": "admin-of-ours",
                       "signing_secret": "ours-0123456789", "public_url": "https://mail.shop.example",
                       "sender_address": "Shop, 1 rue X, 75002 Paris"}


def test_the_development_secrets_are_named_once_without_the_local_way_out() -> None:
    findings = secrets_findings(Settings(environment="local"), ["ingest", "stager", "dispatcher"])
    assert [f.text.split(" ")[0] for f in findings] == [
        "LIFECYCLE_API_KEYS", "LIFECYCLE_ADMIN_KEYS", "LIFECYCLE_SIGNING_SECRET"]  # ingest's and the dispatcher's
    assert all(f.level == "fail" and "LIFECYCLE_ENVIRONMENT=local" not in f.text for f in findings)
    # a dispatcher's pod holds only its own secrets
    [own] = secrets_findings(Settings(**{**OWN, "api_keys": "dev-key"}), ["dispatcher"])
    assert own == Finding("ok", "secrets", "no development key or secret (dispatcher)")


@pytest.mark.parametrize(("public_url", "expected"), [
    ("https://mail.shop.example", [("ok", "https://mail.shop.example (https: the links and List-Unsubscribe)")]),
    ("http://mail.shop.example", [("fail", "LIFECYCLE_PUBLIC_URL is http://mail.shop.example, not https")]),
    ("https://127.0.0.1:8080", [("fail", "LIFECYCLE_PUBLIC_URL points at 127.0.0.1, which recipients cannot reach")]),
    ("https://localhost", [("fail", "points at localhost")]),
    ("https://10.1.2.3", [("fail", "points at 10.1.2.3")]),
    ("http://192.168.1.1", [("fail", "not https"), ("fail", "points at 192.168.1.1")]),
])
def test_the_public_url(public_url: str, expected: list[tuple[str, str]]) -> None:
    findings = [f for f in recipient_findings(Settings(**{**OWN, "public_url": public_url}))
                if f.topic == "public URL"]
    assert [f.level for f in findings] == [level for level, _ in expected]
    assert all(says in f.text for f, (_, says) in zip(findings, expected, strict=True))


def test_the_postal_address() -> None:
    [ok] = [f for f in recipient_findings(Settings(**OWN)) if f.topic == "postal address"]
    assert ok.line() == "ok    postal address: the footers show 'Shop, 1 rue X, 75002 Paris'"
    [missing] = [f for f in recipient_findings(Settings(**{**OWN, "sender_address": ""}))
                 if f.topic == "postal address"]
    assert missing.level == "fail" and missing.text.startswith("LIFECYCLE_SENDER_ADDRESS is not set")


def test_diagnose_asks_dns_for_spf_dkim_and_dmarc_and_says_when_dns_does_not_answer(
        tmp_path: Path, ed25519_pem: bytes) -> None:
    key = tmp_path / "dkim.pem"
    key.write_bytes(ed25519_pem)
    settings = Settings(**OWN, mail_from="Shop <hello@news.shop.example>", dkim_selector="s1",
                        dkim_domain="shop.example", dkim_private_key_file=key)
    zone = {"news.shop.example": ["v=spf1 include:_spf.relay.example -all"],
            "s1._domainkey.shop.example": [dns_txt_record(ed25519_pem)],
            "_dmarc.shop.example": ["v=DMARC1; p=quarantine"]}
    findings = diagnose(settings, lambda name: zone.get(name, []))
    assert [(f.topic, f.level) for f in findings] == [
        ("environment", "ok"), ("secrets", "ok"), ("public URL", "ok"), ("postal address", "ok"), ("SPF", "ok"),
        ("DKIM", "ok"), ("DMARC", "ok"), ("DMARC", "ok")]
    assert summary(findings) == "all is well, 0 warnings"

    def silent(name: str) -> list[str]:
        raise DnsLookupError(f"no answer for {name} within 5 s")

    broken = [f for f in diagnose(settings, silent) if f.topic in ("SPF", "DKIM", "DMARC")]
    assert [f.line() for f in broken] == [
        f"FAIL  {topic}: DNS did not answer: no answer for {name} within 5 s; check the resolver (or --nameserver)"
        for topic, name in (("SPF", "news.shop.example"), ("DKIM", "s1._domainkey.shop.example"),
                            ("DMARC", "_dmarc.news.shop.example"))]
    assert summary(broken) == "3 problems to fix, 0 warnings"


@pytest.mark.parametrize(("settings", "says"), [
    ({}, "signing is off: set LIFECYCLE_DKIM_SELECTOR, LIFECYCLE_DKIM_DOMAIN and LIFECYCLE_DKIM_PRIVATE_KEY_FILE"),
    ({"dkim_selector": "s1"}, "signing needs all of"),
    ({"dkim_selector": "s1", "dkim_domain": "shop.example", "dkim_private_key_file": "/nonexistent/dkim.pem"},
     "cannot read LIFECYCLE_DKIM_PRIVATE_KEY_FILE /nonexistent/dkim.pem: No such file or directory"),
])
def test_dkim_settings_that_cannot_sign(settings: dict[str, Any], says: str) -> None:
    [dkim] = [f for f in diagnose(Settings(**OWN, **settings), lambda name: []) if f.topic == "DKIM"]
    assert dkim.level == "fail" and says in dkim.text


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1", ("127.0.0.1", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)), ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
])
def test_a_nameserver_is_an_ip_and_a_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize("text", ["dns.example", "127.0.0.1:0", "127.0.0.1:x", "[::1]:70000"])
def test_a_bad_nameserver_says_what_is_expected(text: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:5353|from 1 to 65535"):
        parse_nameserver(text)
