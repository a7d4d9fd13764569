"""All settings, read from `LIFECYCLE_*` environment variables.

Every field is documented in docs/settings.md; keep the two in step.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping
from datetime import time
from email.utils import parseaddr
from functools import lru_cache
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The id under which LIFECYCLE_SIGNING_SECRET signs and verifies; no entry of LIFECYCLE_SIGNING_KEYS may take it.
SIGNING_SECRET_KEY_ID: Final = "secret"
_SIGNING_KEY_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
_DOMAIN: Final = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}")


def parse_signing_keys(spec: str) -> list[tuple[str, str]]:
    """`id:secret,id:secret` as [(id, secret), ...] in the order given; ValueError naming the bad entry.

    Messages never repeat a secret: they end up in logs.
    """
    keys: list[tuple[str, str]] = []
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if not entry:
            continue
        key_id, separator, secret = (part.strip() for part in entry.partition(":"))
        if not separator or not secret:
            raise ValueError(f"entry {position} is not id:secret")
        if not _SIGNING_KEY_ID.fullmatch(key_id):
            raise ValueError(f"entry {position}: a key id is 1 to 32 letters, digits, '-' or '_'")
        if key_id == SIGNING_SECRET_KEY_ID:
            raise ValueError(f"entry {position}: the id {key_id!r} is reserved for LIFECYCLE_SIGNING_SECRET")
        if any(key_id == known for known, _ in keys):
            raise ValueError(f"entry {position}: the id {key_id!r} is used twice")
        keys.append((key_id, secret))
    return keys


MAX_SHOPIFY_SECRETS: Final = 2


def parse_shopify_secrets(spec: str) -> list[str]:
    """The Shopify app secrets of `spec` (comma-separated: one, or two during a rotation); ValueError
    past two. Messages never repeat a secret."""
    secrets = [entry.strip() for entry in spec.split(",") if entry.strip()]
    if len(secrets) > MAX_SHOPIFY_SECRETS:
        raise ValueError(f"at most {MAX_SHOPIFY_SECRETS} secrets (the current one and, during a rotation, the"
                         f" next), got {len(secrets)}")
    return secrets


def check_api_keys(spec: str) -> str:
    """`spec` if every entry is a plain key or `sha256:<64 hex digits>`; ValueError naming the bad entry."""
    for position, raw in enumerate(spec.split(","), start=1):
        entry = raw.strip()
        if entry.lower().startswith("sha256:") and not re.fullmatch(r"[0-9a-fA-F]{64}", entry[len("sha256:"):]):
            raise ValueError(f"entry {position} is not sha256:<64 hex digits>")
    return spec


def check_web_url(value: str, *, base: bool) -> str:
    """`value` if it is an absolute http(s) URL with a host and no whitespace; ValueError saying why not.

    A `base` URL has paths appended to it (`{shop_url}/cart`), so it may not carry a query or fragment.
    """
    example = "like https://shop.example"
    if not value or any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" for ch in value):
        raise ValueError(f"must be an absolute http(s) URL without spaces, {example}; got {value!r}")
    try:
        parts = urlsplit(value)
        _ = parts.port  # reading it checks it
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}); got {value!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an absolute http(s) URL with a host, {example}; got {value!r}")
    if base and (parts.query or parts.fragment):
        raise ValueError(f"is a base URL that paths are added to: no ?query or #fragment; got {value!r}")
    return value


MAX_POSTAL_ADDRESS = 300


def check_postal_address(value: str) -> str:
    """A postal address on one line: lines given apart (a multi-line variable) are joined with ", ";
    empty stays empty (unset). ValueError for control characters or an address too long for a footer."""
    lines = [" ".join(line.split()) for line in value.splitlines()]
    address = ", ".join(line.strip(" ,") for line in lines if line.strip(" ,"))
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in address):
        raise ValueError("must be printable text, like 'Shop, 1 rue de la Paix, 75002 Paris, France'")
    if len(address) > MAX_POSTAL_ADDRESS:
        raise ValueError(f"is {len(address)} characters long: a postal address fits in {MAX_POSTAL_ADDRESS}")
    return address


@lru_cache(maxsize=16)
def _address_of(mail_from: str) -> str:
    # asked for every email composed; parseaddr is pure Python
    return parseaddr(mail_from)[1] or mail_from


class Settings(BaseSettings):
    # Inputs stay out of error messages: several settings are secrets.
    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", extra="ignore", hide_input_in_errors=True)

    # Where things are. The local stack's ports (these, 2525 and 8080 to 8083, moved by a private
    # stack's offset) stay below Linux's ephemeral range (32768-60999): a client retrying a port with
    # nothing behind it can otherwise connect to itself and hold the port its server needs.
    database_url: str = "postgresql+asyncpg://lifecycle@127.0.0.1:15432/lifecycle"
    kafka_bootstrap: str = "127.0.0.1:19092"
    events_topic: str = "lifecycle.events"
    triggers_topic: str = "lifecycle.triggers"
    dlq_topic: str = "lifecycle.dead-letters"
    topic_partitions: int = Field(default=4, ge=1)
    kafka_session_timeout_ms: int = Field(default=10_000, ge=6_000, le=300_000)
    stager_group: str = "lifecycle-stager"
    dispatcher_group: str = "lifecycle-dispatcher"

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_timeout_seconds: float = 10.0
    mail_from: str = "Shop <hello@shop.example>"
    shop_name: str = "Shop"
    shop_url: str = "https://shop.example"
    # The shop's postal address, in the footer of every email (anti-spam laws and mailbox providers
    # want it in marketing email); required outside the local stack
    sender_address: str = ""

    # Public base URL of the ingest API, used in unsubscribe links.
    public_url: str = "http://127.0.0.1:8080"
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8080
    # /metrics of the ingest API, kept off its public port
    ingest_metrics_port: int = 8083
    # Idle keep-alive connections stay open this long: longer than a load balancer's idle timeout, so
    # the balancer (or client) closes first and never sends a request on a connection being closed.
    ingest_keep_alive_seconds: int = Field(default=75, ge=1)
    # processes serving the ingest API on the one port (`lifecycle ingest --workers N` overrides it)
    ingest_workers: int = Field(default=1, ge=1, le=64)
    stager_port: int = 8081
    dispatcher_port: int = 8082
    # `lifecycle bounces`: the SMTP (or LMTP) receiver of bounce and complaint reports, and its probes (on ingest_host)
    bounces_port: int = 2526
    bounces_metrics_port: int = 8084
    # the domain of the VERP envelope senders (bounces+<signed send id>@...); empty: mail_from's domain
    bounce_domain: str = ""

    # Comma-separated keys, plain or `sha256:<hex>` (store hashes). Write keys may only send events;
    # admin keys read customers (and the admin routes).
    api_keys: str = "dev-key"
    admin_keys: str = "dev-admin-key"
    # The legacy signing key: verifies links made before key ids, signs when signing_keys is empty.
    signing_secret: str = "dev-signing-secret-change-me"
    # Comma-separated id:secret pairs; the first signs, every one verifies (key rotation).
    signing_keys: str = ""
    # The Shopify app's secret that signs its webhooks, or two while it is rotated (comma-separated);
    # empty: POST /v1/webhooks/shopify answers 404
    shopify_secrets: str = ""

    # production refuses to start with the development keys and secrets; the local stack runs as local
    environment: Literal["local", "production"] = "production"
    # Rate limits, per minute (0: none). The pixel and the click always answer; beyond a limit they
    # record nothing. The pages answer 429.
    open_limit_per_token_per_minute: int = Field(default=1, ge=0)
    open_limit_per_ip_per_minute: int = Field(default=600, ge=0)  # image proxies share addresses
    click_limit_per_token_per_minute: int = Field(default=3, ge=0)
    click_limit_per_ip_per_minute: int = Field(default=120, ge=0)
    page_limit_per_token_per_minute: int = Field(default=20, ge=0)
    page_limit_per_ip_per_minute: int = Field(default=60, ge=0)
    rate_limit_max_keys: int = Field(default=10_000, ge=1)  # per limit: addresses or tokens remembered
    # Proxies whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips): addresses, CIDRs or *
    forwarded_allow_ips: str = "127.0.0.1"

    clock: Literal["system", "virtual"] = "system"
    log_format: Literal["auto", "json", "console"] = "auto"  # auto: JSON unless writing to a terminal
    log_level: str = "INFO"

    # Local stack
    run_dir: Path = Path(".run")
    cache_dir: Path = Path.home() / ".cache" / "lifecycle"
    kafka_version: str = "4.1.1"
    postgres_port: int = 15432

    # Lifecycle rules
    new_customer_days: int = 90
    lapsed_days: int = 365
    cart_abandon_minutes: float = Field(default=60, gt=0)  # fractions too: the fault harness uses seconds
    backfill_hours: int = 24
    birthday_hour: int = 9
    sunset_days: int = 365
    # soft bounces in a row (no open or click between them) that suppress the address like a hard bounce
    soft_bounce_limit: int = Field(default=3, ge=1)

    # Journeys and templates
    journeys_dir: Path | None = None
    segments_dir: Path | None = None  # segment files added to (or replacing) the built-in ones, by name
    campaigns_dir: Path | None = None  # campaign files (docs/campaigns.md), registered when the dispatcher starts
    default_locale: str = "fr"
    shop_logo_url: str = "https://shop.example/logo.png"

    # Offers and attribution
    attribution_days: int = Field(default=5, ge=0)
    # processed event and trigger ids (what makes a message delivered twice count once) and the bodies
    # of sends no longer in flight are kept this long; keep it above Kafka's retention (7 days)
    retention_days: int = Field(default=30, ge=1)
    # opens, clicks, bounces and complaints, and the record of each send (the reports' history), are kept
    # this long (docs/privacy.md); the profile and its consent proof stay as long as the customer
    email_event_retention_days: int = Field(default=395, ge=1)
    send_retention_days: int = Field(default=395, ge=1)
    # customer value tiers: total spent (and orders) from which a customer is silver / gold
    tier_silver_spent: float = 150.0
    tier_silver_orders: int = 3
    tier_gold_spent: float = 500.0
    tier_gold_orders: int = 6

    # Sending policy (both off by default)
    frequency_cap_count: int = Field(default=0, ge=0)  # 0: no cap
    frequency_cap_hours: int = Field(default=168, ge=1)
    quiet_hours_start: str | None = None  # "21:00", customer's local time
    quiet_hours_end: str | None = None  # "08:00"
    # the shop's time zone: local send times and quiet hours of customers without a `timezone` trait
    shop_timezone: str = "UTC"

    # SMTP beyond host and port
    smtp_tls: Literal["none", "starttls", "implicit"] = "none"
    smtp_username: str | None = None
    smtp_password: str | None = None
    # 16: with composing cheap, the dispatcher's rate is bound by messages in flight, not CPU
    # (docs/performance.md); a crash may leave one delivered message per connection unrecorded
    smtp_pool_size: int = Field(default=16, ge=1)
    # MAIL, RCPT and DATA in one write where the server offers PIPELINING (RFC 2920)
    smtp_pipelining: bool = True
    smtp_rate_per_second: float = Field(default=0.0, ge=0)  # 0: unlimited
    smtp_domain_rate_per_second: float = Field(default=0.0, ge=0)
    # how long the first 250 of a batch waits for others before their `sent` is written together
    record_gather_seconds: float = Field(default=0.005, ge=0, le=1)
    smtp_max_attempts: int = Field(default=8, ge=1)
    smtp_retry_base_seconds: float = Field(default=2.0, gt=0)
    smtp_retry_max_seconds: float = Field(default=300.0, gt=0)
    smtp_ca_file: Path | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key_file: Path | None = None

    # Work loops
    # events, triggers or due changes per transaction: each batch pays a dozen statements and a
    # commit whatever its size; 1,000 applied a quarter more events a second than 500 (docs/performance.md)
    batch_size: int = Field(default=1000, ge=1)
    send_batch_size: int = Field(default=100, ge=1)
    render_workers: int = Field(default=2, ge=0)
    poll_interval_seconds: float = 0.05
    send_lease_seconds: int = 60

    @field_validator("quiet_hours_start", "quiet_hours_end")
    @classmethod
    def _clock_time(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        try:
            time.fromisoformat(value)
        except ValueError:
            raise ValueError(f"expected a local time like 21:00, got {value!r}") from None
        return value

    @field_validator("shop_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone name such as Europe/Paris, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _lease_covers_an_attempt(self) -> Settings:
        # a send starts only with a whole attempt (2 x the SMTP timeout) and 5 s to record it left
        needed = 2 * self.smtp_timeout_seconds + 5
        if self.send_lease_seconds <= needed:
            raise ValueError(f"send_lease_seconds ({self.send_lease_seconds}) must be more than twice "
                             f"smtp_timeout_seconds plus 5 s ({needed:g})")
        return self

    @field_validator("bounce_domain")
    @classmethod
    def _bounce_domain(cls, value: str) -> str:
        domain = value.strip().lower()
        if domain and not _DOMAIN.fullmatch(domain):
            raise ValueError(f"expected a domain name such as bounces.shop.example, got {value!r}")
        return domain

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _forwarded_allow_ips(cls, value: str) -> str:
        # uvicorn would silently take a typo for a host name that never matches: say so here.
        for entry in (part.strip() for part in value.split(",")):
            if entry == "*":
                continue
            try:
                if "/" in entry:
                    ipaddress.ip_network(entry, strict=False)
                else:
                    ipaddress.ip_address(entry)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address, a network like 10.0.0.0/8, or *") from None
        return value

    @field_validator("api_keys", "admin_keys")
    @classmethod
    def _api_keys(cls, value: str) -> str:
        return check_api_keys(value)

    @field_validator("shop_url", "public_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_web_url(value, base=True)

    @field_validator("sender_address")
    @classmethod
    def _postal_address(cls, value: str) -> str:
        return check_postal_address(value)

    @field_validator("shop_logo_url")
    @classmethod
    def _web_url(cls, value: str) -> str:
        return check_web_url(value, base=False)

    @field_validator("shopify_secrets")
    @classmethod
    def _shopify_secrets(cls, value: str) -> str:
        parse_shopify_secrets(value)
        return value

    @field_validator("signing_keys")
    @classmethod
    def _signing_keys(cls, value: str) -> str:
        parse_signing_keys(value)
        return value

    @model_validator(mode="after")
    def _some_signing_key(self) -> Settings:
        if not self.signing_secret and not parse_signing_keys(self.signing_keys):
            raise ValueError(
                "links in emails need a signing key: set LIFECYCLE_SIGNING_KEYS or LIFECYCLE_SIGNING_SECRET"
            )
        return self

    @property
    def mail_from_address(self) -> str:
        return _address_of(self.mail_from)

    @property
    def bounce_domain_name(self) -> str:
        """Where bounces and complaints come back: LIFECYCLE_BOUNCE_DOMAIN, else the domain of mail_from."""
        return self.bounce_domain or self.mail_from_address.rpartition("@")[2].lower() or "lifecycle.local"

    def as_environment(self) -> dict[str, str]:
        """These settings as LIFECYCLE_* variables, to hand to a child process."""
        env: dict[str, str] = {}
        for name, value in self.model_dump().items():
            if value is not None:
                env[f"LIFECYCLE_{name.upper()}"] = str(value)
        return env


# The secrets each service holds: what it must not run with in production.
SERVICE_SECRETS: Final[Mapping[str, tuple[str, ...]]] = {
    "ingest": ("api_keys", "admin_keys", "signing"),
    "stager": (),  # it signs nothing and serves no API
    "dispatcher": ("signing",),  # the links in emails and the Message-IDs
    "bounces": ("signing",),  # verifies the VERP addresses the dispatcher signed
}
LOCAL_HINT: Final = "(or LIFECYCLE_ENVIRONMENT=local for a local stack)"


def insecure_defaults(settings: Settings, service: str) -> list[str]:
    """What keeps `service` from starting in production: development keys and secrets, or none at all.

    One line per setting, naming it; empty in the local environment. Secrets are never quoted.
    """
    if settings.environment == "local":
        return []
    problems: list[str] = []
    wanted = SERVICE_SECRETS[service]
    # either development key is refused in either setting, in plain or hashed form
    development_keys = {_key_digest(str(Settings.model_fields[name].default)) for name in ("api_keys", "admin_keys")}
    for name in ("api_keys", "admin_keys"):
        if name not in wanted:
            continue
        variable = f"LIFECYCLE_{name.upper()}"
        entries = [entry.strip() for entry in getattr(settings, name).split(",") if entry.strip()]
        digests = {_key_digest(entry) for entry in entries}
        if not entries:
            problems.append(f"{variable} is empty; set your own keys {LOCAL_HINT}")
        elif digests <= development_keys:
            problems.append(f"{variable} is the development default; set your own keys {LOCAL_HINT}")
        elif digests & development_keys:
            problems.append(f"{variable} still holds a development key; remove it {LOCAL_HINT}")
    if "signing" in wanted:
        default_secret = str(Settings.model_fields["signing_secret"].default)
        signing_keys = parse_signing_keys(settings.signing_keys)
        if settings.signing_secret == default_secret:
            if signing_keys:
                problems.append("LIFECYCLE_SIGNING_SECRET is the development default and still verifies links; "
                                "set it to your earlier secret, or empty to retire it, "
                                f"since LIFECYCLE_SIGNING_KEYS signs {LOCAL_HINT}")
            else:
                problems.append("LIFECYCLE_SIGNING_SECRET is the development default and LIFECYCLE_SIGNING_KEYS is "
                                f"empty; set your own secret {LOCAL_HINT}")
        if any(secret == default_secret for _, secret in signing_keys):
            problems.append(f"LIFECYCLE_SIGNING_KEYS holds the development secret; set your own {LOCAL_HINT}")
    return problems


# What a service puts in emails or pages that recipients see: what it must not start without outside local.
SERVICE_RECIPIENT_SETTINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "ingest": ("public_url",),  # the unsubscribe, preference and confirmation pages, the tracked links
    "stager": (),
    "dispatcher": ("public_url", "sender_address"),  # the links and List-Unsubscribe in emails, the footer
    "bounces": (),  # it reads reports and shows recipients nothing
}


def recipient_facing_problems(settings: Settings, service: str) -> list[str]:
    """What keeps `service` from starting outside the local stack because of what recipients would see:
    an http public URL (List-Unsubscribe and the links in emails must be https), no postal address.

    One line per setting, naming it; empty in the local environment.
    """
    if settings.environment == "local":
        return []
    problems: list[str] = []
    wanted = SERVICE_RECIPIENT_SETTINGS[service]
    if "public_url" in wanted and urlsplit(settings.public_url).scheme.lower() != "https":
        problems.append(f"LIFECYCLE_PUBLIC_URL is {settings.public_url}, not https: List-Unsubscribe and the links "
                        f"in emails must be https; set the https URL of the ingest API {LOCAL_HINT}")
    if "sender_address" in wanted and not settings.sender_address:
        problems.append("LIFECYCLE_SENDER_ADDRESS is not set: every marketing email must show the shop's postal "
                        f"address in its footer; set it, like 'Shop, 1 rue de la Paix, 75002 Paris, France' "
                        f"{LOCAL_HINT}")
    return problems


def startup_problems(settings: Settings, service: str) -> list[str]:
    """Everything that keeps `service` from starting: development secrets, then what recipients would see."""
    return [*insecure_defaults(settings, service), *recipient_facing_problems(settings, service)]


def _key_digest(entry: str) -> bytes:
    """The SHA-256 of an API key entry, plain or `sha256:<hex>`."""
    if entry.lower().startswith("sha256:"):
        return bytes.fromhex(entry[len("sha256:"):])
    return hashlib.sha256(entry.encode("utf-8")).digest()


def describe_invalid_settings(error: ValidationError) -> list[str]:
    """One line per problem, naming the variable (`LIFECYCLE_SHOP_URL: must be ...`), never a traceback."""
    lines = []
    for problem in error.errors():
        location = problem.get("loc") or ()
        name = f"LIFECYCLE_{str(location[0]).upper()}" if location else "settings"
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"{name}: {message}")
    return lines


def load_settings() -> Settings:
    """Settings from LIFECYCLE_* variables, and from files in LIFECYCLE_SECRETS_DIR (one file a setting, named
    like the variable in lower case, e.g. `lifecycle_database_url`: how Kubernetes mounts a Secret)."""
    secrets_dir = os.environ.get("LIFECYCLE_SECRETS_DIR")
    if secrets_dir:
        return Settings(_secrets_dir=secrets_dir)
    return Settings()

