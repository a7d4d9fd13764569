"""`lifecycle doctor`: the configuration checked the way a mailbox provider sees the email it sends.

Findings, each one plain line saying what is right, or what is wrong and what to do:

- the settings: the production environment, no development key or secret (`insecure_defaults` of each
  service), an https public URL that recipients can reach, the shop's postal address;
- the SMTP relay: it answers, with TLS and AUTH as configured;
- DNS, through the system resolver (or `--nameserver`): one SPF record on the envelope sender's domain
  (the bounce domain),
  the DKIM public key published under the selector matching the private key the dispatcher signs with,
  a DMARC record with a policy, and the DKIM domain aligned with the From domain.

The checks of records are pure functions of the records found (`TxtLookup` is their only I/O); the
relay is reached with aiosmtplib, as the dispatcher does; the resolver adapter at the end uses
dnspython, which reads /etc/resolv.conf as the system's resolver does.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from lifecycle.dkim import DkimKeyError, dns_txt_record
from lifecycle.settings import (
    LOCAL_HINT,
    SERVICE_RECIPIENT_SETTINGS,
    SERVICE_SECRETS,
    Settings,
    insecure_defaults,
    recipient_facing_problems,
)

Level = Literal["ok", "warn", "fail"]
_LABELS: Final[dict[Level, str]] = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}


@dataclass(frozen=True)
class Finding:
    level: Level
    topic: str  # what was checked: "SPF", "DKIM", "public URL"...
    text: str

    def line(self) -> str:
        return f"{_LABELS[self.level]}  {self.topic}: {self.text}"


class DnsLookupError(Exception):
    """DNS gave no answer at all (timeout, server failure): not the same as "no such record"."""


# The TXT records at a name, each record's strings joined; [] when the name or its TXT records do not exist.
TxtLookup = Callable[[str], list[str]]


# --- settings ---------------------------------------------------------------------------------------


def _without_local_hint(problem: str) -> str:
    # the services' messages offer the local environment as a way out; a production check does not
    return problem.replace(f" {LOCAL_HINT}", "")


def environment_findings(settings: Settings) -> list[Finding]:
    if settings.environment == "local":
        return [Finding("fail", "environment", "LIFECYCLE_ENVIRONMENT is local: the services accept development "
                        "secrets and an http public URL; set LIFECYCLE_ENVIRONMENT=production")]
    return [Finding("ok", "environment", "production")]


def secrets_findings(settings: Settings, services: Sequence[str]) -> list[Finding]:
    """The development keys and secrets any of `services` would refuse, as if in production."""
    production = settings.model_copy(update={"environment": "production"})
    problems = _unique(_without_local_hint(p) for service in services for p in insecure_defaults(production, service))
    if problems:
        return [Finding("fail", "secrets", problem) for problem in problems]
    return [Finding("ok", "secrets", f"no development key or secret ({', '.join(services)})")]


def recipient_findings(settings: Settings) -> list[Finding]:
    """The public URL (https, reachable from outside) and the postal address, as the services check them."""
    production = settings.model_copy(update={"environment": "production"})
    problems = _unique(_without_local_hint(p) for service in SERVICE_RECIPIENT_SETTINGS
                       for p in recipient_facing_problems(production, service))
    findings = [Finding("fail", "public URL" if "PUBLIC_URL" in p else "postal address", p) for p in problems]
    host = urlsplit(settings.public_url).hostname or ""
    if not _publicly_reachable(host):
        findings.append(Finding("fail", "public URL", f"LIFECYCLE_PUBLIC_URL points at {host}, which recipients "
                                "cannot reach; set the public https address of the ingest API"))
    elif not any("PUBLIC_URL" in p for p in problems):
        findings.append(Finding("ok", "public URL", f"{settings.public_url} (https: the links and List-Unsubscribe)"))
    if settings.sender_address:
        findings.append(Finding("ok", "postal address", f"the footers show {settings.sender_address!r}"))
    return sorted(findings, key=lambda f: f.topic != "public URL")


def _publicly_reachable(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: DNS decides
    return address.is_global


# --- SPF --------------------------------------------------------------------------------------------


def _is_spf(record: str) -> bool:
    lowered = record.lower()
    return lowered == "v=spf1" or lowered.startswith("v=spf1 ")


def spf_findings(domain: str, records: Sequence[str]) -> list[Finding]:
    """One SPF record (RFC 7208 §4.5: more is a permanent error), ending in ~all or -all."""
    found = [record for record in records if _is_spf(record)]
    if not found:
        return [Finding("fail", "SPF", f"{domain} has no SPF record: publish one TXT record there, like "
                        f"\"v=spf1 include:<your relay's SPF domain> ~all\" (your relay's documentation names it)")]
    if len(found) > 1:
        return [Finding("fail", "SPF", f"{domain} has {len(found)} SPF records, which receivers treat as an error "
                        "(no SPF at all): merge them into one")]
    [record] = found
    terms = record.split()[1:]
    endings = [term for term in terms if term.lower().lstrip("+-~?") == "all"]
    redirect = any(term.lower().startswith("redirect=") for term in terms)
    if endings and endings[-1][0] in "+aA":
        return [Finding("warn", "SPF", f"{domain}'s SPF record ends in {endings[-1]}: any server may send as "
                        f"{domain}; end it with ~all or -all ({record})")]
    if endings and endings[-1].startswith("?"):
        return [Finding("warn", "SPF", f"{domain}'s SPF record ends in ?all, which says nothing about other "
                        f"servers; end it with ~all or -all ({record})")]
    if not endings and not redirect:
        return [Finding("warn", "SPF", f"{domain}'s SPF record has no 'all' at its end: mail from other servers "
                        f"gets a neutral result; end it with ~all or -all ({record})")]
    return [Finding("ok", "SPF", f"{domain} has one SPF record ({record}); it must name your SMTP relay")]


# --- DKIM -------------------------------------------------------------------------------------------


def parse_tags(record: str) -> dict[str, str]:
    """A DKIM or DMARC tag list (`v=DKIM1; k=rsa; p=...`) as {tag: value}, names lower-cased, blanks gone
    around tags and values; the first of a repeated tag wins."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, separator, value = part.partition("=")
        if separator and name.strip():
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _public_key(tags: dict[str, str]) -> bytes | None:
    """The decoded p= (whitespace inside it allowed); None when it is not base64."""
    text = "".join(tags.get("p", "").split())
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def dkim_key_findings(name: str, records: Sequence[str], expected_record: str) -> list[Finding]:
    """The key published at `name` (<selector>._domainkey.<domain>) against the one of the private key."""
    keys = [record for record in records if "p" in parse_tags(record)]
    publish = f"publish one TXT record \"{expected_record}\" there"
    if not keys:
        return [Finding("fail", "DKIM", f"no DKIM key is published at {name}: receivers cannot check the "
                        f"signatures; {publish}")]
    if len(keys) > 1:
        return [Finding("fail", "DKIM", f"{name} has {len(keys)} DKIM key records: keep only one; {publish}")]
    published, expected = parse_tags(keys[0]), parse_tags(expected_record)
    kind, expected_kind = published.get("k", "rsa").lower(), expected["k"]
    key = _public_key(published)
    if not "".join(published.get("p", "").split()):
        return [Finding("fail", "DKIM", f"the key at {name} is revoked (empty p=); {publish}")]
    if kind != expected_kind:
        return [Finding("fail", "DKIM", f"{name} publishes a k={kind} key but LIFECYCLE_DKIM_PRIVATE_KEY_FILE is "
                        f"an {expected_kind} key; {publish}")]
    if key is None:
        return [Finding("fail", "DKIM", f"the p= of the key at {name} is not base64; {publish}")]
    if key != _public_key(expected):
        return [Finding("fail", "DKIM", f"the public key at {name} does not match LIFECYCLE_DKIM_PRIVATE_KEY_FILE: "
                        f"every signature would fail; {publish}")]
    findings = [Finding("ok", "DKIM", f"{name} publishes the public key of LIFECYCLE_DKIM_PRIVATE_KEY_FILE "
                        f"({expected_kind})")]
    if "y" in published.get("t", "").lower().split(":"):
        findings.append(Finding("warn", "DKIM", f"the key at {name} has t=y (testing): receivers may ignore "
                                "failed signatures; remove the flag once mail verifies"))
    return findings


def dkim_findings(settings: Settings, lookup: TxtLookup) -> list[Finding]:
    selector, domain, key_file = settings.dkim_selector, settings.dkim_domain, settings.dkim_private_key_file
    if not (selector or domain or key_file):
        return [Finding("fail", "DKIM", "signing is off: set LIFECYCLE_DKIM_SELECTOR, LIFECYCLE_DKIM_DOMAIN and "
                        "LIFECYCLE_DKIM_PRIVATE_KEY_FILE (large mailbox providers refuse bulk mail without DKIM)")]
    if not (selector and domain and key_file):
        return [Finding("fail", "DKIM", "signing needs all of LIFECYCLE_DKIM_SELECTOR, LIFECYCLE_DKIM_DOMAIN and "
                        "LIFECYCLE_DKIM_PRIVATE_KEY_FILE; set the missing ones")]
    try:
        expected = dns_txt_record(Path(key_file).read_bytes())
    except OSError as exc:
        return [Finding("fail", "DKIM", f"cannot read LIFECYCLE_DKIM_PRIVATE_KEY_FILE {key_file}: {exc.strerror}")]
    except DkimKeyError as exc:
        return [Finding("fail", "DKIM", f"LIFECYCLE_DKIM_PRIVATE_KEY_FILE {key_file}: {exc}")]
    name = f"{selector}._domainkey.{domain}".lower()
    return dkim_key_findings(name, lookup(name), expected)


# --- DMARC ------------------------------------------------------------------------------------------

_POLICIES: Final = ("none", "quarantine", "reject")


def _is_dmarc(record: str) -> bool:
    return record.replace(" ", "").upper().startswith("V=DMARC1;") or record.strip().upper() == "V=DMARC1"


def organizational_domain(domain: str) -> str:
    """The registered domain, taken as the last two labels (no public suffix list: under a two-label
    suffix such as co.uk it is one label short)."""
    return ".".join(domain.lower().rstrip(".").split(".")[-2:])


def aligned(from_domain: str, dkim_domain: str, strict: bool) -> bool:
    """DMARC identifier alignment (RFC 7489 §3.1.1): the same domain (strict), or the same registered one."""
    if strict:
        return from_domain.lower() == dkim_domain.lower()
    return organizational_domain(from_domain) == organizational_domain(dkim_domain)


def dmarc_findings(from_domain: str, found_at: str, records: Sequence[str], dkim_domain: str | None) -> list[Finding]:
    """The DMARC record found at `_dmarc.<found_at>` (the From domain, or its registered domain) for mail
    from `from_domain` signed with d=`dkim_domain`."""
    dmarc = [record for record in records if _is_dmarc(record)]
    name = f"_dmarc.{found_at}"
    if not dmarc:
        return [Finding("fail", "DMARC", f"no DMARC record for {from_domain}: publish a TXT record at "
                        f"_dmarc.{organizational_domain(from_domain)}, like \"v=DMARC1; p=none; "
                        f"rua=mailto:dmarc-reports@{organizational_domain(from_domain)}\", then move to "
                        "p=quarantine once the reports show your mail passing")]
    if len(dmarc) > 1:
        return [Finding("fail", "DMARC", f"{name} has {len(dmarc)} DMARC records, and receivers then apply none: "
                        "keep one")]
    tags = parse_tags(dmarc[0])
    # a subdomain's mail follows sp= of its registered domain's record when there is one
    policy_tag = "sp" if found_at != from_domain and "sp" in tags else "p"
    policy = tags.get(policy_tag, "").lower()
    findings: list[Finding] = []
    if "p" not in tags:
        findings.append(Finding("fail", "DMARC", f"the record at {name} has no p= tag, so receivers ignore it: add "
                                f"p=none, p=quarantine or p=reject ({dmarc[0]})"))
    elif policy not in _POLICIES:
        findings.append(Finding("fail", "DMARC", f"the record at {name} has {policy_tag}={policy}, which is not "
                                f"none, quarantine or reject ({dmarc[0]})"))
    elif policy == "none":
        findings.append(Finding("warn", "DMARC", f"{name} has {policy_tag}=none: receivers act on nothing that "
                                "fails DMARC; once the reports show your mail passing, move to p=quarantine or "
                                "p=reject"))
    else:
        findings.append(Finding("ok", "DMARC", f"{name} has {policy_tag}={policy}"))
    if dkim_domain:
        strict = tags.get("adkim", "r").lower() == "s"
        mode = "strict" if strict else "relaxed"
        if aligned(from_domain, dkim_domain, strict):
            findings.append(Finding("ok", "DMARC", f"the DKIM domain {dkim_domain} is aligned with the From domain "
                                    f"{from_domain} ({mode})"))
        else:
            wanted = from_domain if strict else f"{organizational_domain(from_domain)} or a domain under it"
            findings.append(Finding("fail", "DMARC", f"the DKIM domain {dkim_domain} is not aligned with the From "
                                    f"domain {from_domain} ({mode} alignment): DMARC fails even with a valid "
                                    f"signature; sign with LIFECYCLE_DKIM_DOMAIN={wanted}"))
    return findings


def dmarc_lookup(from_domain: str, lookup: TxtLookup) -> tuple[str, list[str]]:
    """Where the DMARC record of `from_domain` is (RFC 7489 §6.6.3): at the domain, else at its registered one."""
    records = lookup(f"_dmarc.{from_domain}")
    registered = organizational_domain(from_domain)
    if any(_is_dmarc(record) for record in records) or registered == from_domain:
        return from_domain, records
    return registered, lookup(f"_dmarc.{registered}")


# --- all together -----------------------------------------------------------------------------------


def _dns(topic: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return check()
    except DnsLookupError as exc:
        return [Finding("fail", topic, f"DNS did not answer: {exc}; check the resolver (or --nameserver)")]


def diagnose(settings: Settings, lookup: TxtLookup, services: Sequence[str] = tuple(SERVICE_SECRETS)) -> list[Finding]:
    """Every finding about `settings`, DNS asked through `lookup`."""
    findings = [*environment_findings(settings), *secrets_findings(settings, services), *recipient_findings(settings)]
    from_domain = settings.mail_from_address.rpartition("@")[2].lower().rstrip(".")
    if not from_domain:
        findings.append(Finding("fail", "From", f"LIFECYCLE_MAIL_FROM ({settings.mail_from}) has no domain: set an "
                                "address like Shop <hello@shop.example>"))
        return findings
    # SMTP's MAIL FROM is each send's VERP address at the bounce domain (LIFECYCLE_BOUNCE_DOMAIN, else the
    # From address's): SPF is checked there
    envelope_domain = settings.bounce_domain_name.rstrip(".")
    findings += _dns("SPF", lambda: spf_findings(envelope_domain, lookup(envelope_domain)))
    findings += _dns("DKIM", lambda: dkim_findings(settings, lookup))

    def dmarc() -> list[Finding]:
        found_at, records = dmarc_lookup(from_domain, lookup)
        dkim_domain = settings.dkim_domain if settings.dkim_selector and settings.dkim_private_key_file else None
        return dmarc_findings(from_domain, found_at, records, dkim_domain)

    findings += _dns("DMARC", dmarc)
    return findings


def summary(findings: Iterable[Finding]) -> str:
    levels = [finding.level for finding in findings]
    failed, warned = levels.count("fail"), levels.count("warn")
    warnings = f"{warned} warning{'s' if warned != 1 else ''}"
    if failed:
        return f"{failed} problem{'s' if failed != 1 else ''} to fix, {warnings}"
    return f"all is well, {warnings}"


def _unique(lines: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(lines))


# --- the SMTP relay ---------------------------------------------------------------------------------


def smtp_findings(settings: Settings) -> list[Finding]:
    """The relay as the dispatcher reaches it: connected, with TLS and AUTH as configured, then QUIT."""
    import asyncio
    import ssl

    import aiosmtplib

    from lifecycle.smtp import SmtpConfig, tls_context

    config = SmtpConfig.from_settings(settings)
    where = f"{config.host}:{config.port}"

    async def probe() -> None:
        context = tls_context(config.ca_file) if config.tls != "none" else None
        smtp = aiosmtplib.SMTP(hostname=config.host, port=config.port, timeout=config.timeout,
                               use_tls=config.tls == "implicit", start_tls=config.tls == "starttls",
                               tls_context=context, username=config.username, password=config.password)
        try:
            await smtp.connect()  # TLS, EHLO and AUTH happen here
            await smtp.quit()
        finally:
            smtp.close()

    try:
        asyncio.run(probe())
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError, TimeoutError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        credentials = ", the user name and password" if config.username else ""
        return [Finding("fail", "SMTP", f"the relay {where} could not be used: {detail}; check LIFECYCLE_SMTP_HOST, "
                        f"LIFECYCLE_SMTP_PORT, LIFECYCLE_SMTP_TLS{credentials}")]
    how = {"none": "without TLS", "starttls": "with STARTTLS", "implicit": "over TLS"}[config.tls]
    login = f", AUTH as {config.username}" if config.username else ""
    findings = [Finding("ok", "SMTP", f"the relay {where} answers ({how}{login})")]
    if config.tls == "none" and _publicly_reachable(config.host):
        findings.append(Finding("warn", "SMTP", f"mail goes to {where} unencrypted; set LIFECYCLE_SMTP_TLS=starttls "
                                "(or implicit) if the relay offers it"))
    return findings


# --- DNS through dnspython ----------------------------------------------------------------------------


def parse_nameserver(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` as (ip, port); ValueError saying what is expected."""
    host, port = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or "53"
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address with an optional port, like 127.0.0.1:5353") from None
    if not 0 < number < 65536:
        raise ValueError(f"{text!r}: the port must be from 1 to 65535")
    return host, number


def resolver_lookup(nameserver: str | None = None, timeout: float = 5.0) -> TxtLookup:
    """TXT lookups through the system's resolver (/etc/resolv.conf), or one name server `IP[:PORT]`."""
    import dns.exception
    import dns.resolver

    try:
        resolver = dns.resolver.Resolver(configure=nameserver is None)
    except dns.exception.DNSException as exc:
        raise DnsLookupError(f"no system resolver: {exc}") from None
    if nameserver is not None:
        host, port = parse_nameserver(nameserver)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.lifetime = timeout
    # EDNS, as resolvers ask today: an RSA 2048 DKIM record does not fit in DNS's 512-byte UDP answers
    resolver.use_edns(0, 0, 1232)

    def lookup(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name, "TXT", search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout:
            raise DnsLookupError(f"no answer for {name} within {timeout:g} s") from None
        except dns.exception.DNSException as exc:
            raise DnsLookupError(f"{name}: {exc}") from None
        return [b"".join(record.strings).decode("utf-8", "replace") for record in answer]

    return lookup
