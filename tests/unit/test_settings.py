"""Settings refused with a clear message: at load (URLs), and at start-up in production (development secrets)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from lifecycle.cli import main
from lifecycle.settings import (
    SERVICE_SECRETS,
    Settings,
    describe_invalid_settings,
    insecure_defaults,
    recipient_facing_problems,
    startup_problems,
)


def settings_with(values: dict[str, Any]) -> Settings:
    return Settings(**values)


@pytest.mark.parametrize("field", ["shop_url", "public_url", "shop_logo_url"])
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("shop.example", "absolute http(s) URL with a host"),
        ("/shop", "absolute http(s) URL with a host"),
        ("ftp://shop.example", "absolute http(s) URL with a host"),
        ("javascript:alert(1)", "absolute http(s) URL with a host"),
        ("https://", "absolute http(s) URL with a host"),
        ("https://shop.example/a b", "without spaces"),
        (" https://shop.example", "without spaces"),
        ("https://shop.example\n", "without spaces"),
        ("", "without spaces"),
        ("https://shop.example:port", "not a valid URL"),
    ],
)
def test_urls_must_be_absolute_web_urls(field: str, value: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings_with({field: value})
    [line] = describe_invalid_settings(caught.value)
    assert line.startswith(f"LIFECYCLE_{field.upper()}: ") and reason in line


@pytest.mark.parametrize("field", ["shop_url", "public_url"])
@pytest.mark.parametrize("value", ["https://shop.example/?ref=mail", "https://shop.example/#top"])
def test_base_urls_take_no_query_or_fragment(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="no \\?query or #fragment"):
        settings_with({field: value})


def test_good_urls_are_kept_as_given() -> None:
    settings = Settings(shop_url="https://shop.example/fr/", public_url="http://127.0.0.1:8080",
                        shop_logo_url="https://cdn.example/logo.png?v=3")
    assert (settings.shop_url, settings.public_url, settings.shop_logo_url) == (
        "https://shop.example/fr/", "http://127.0.0.1:8080", "https://cdn.example/logo.png?v=3")


def test_the_command_line_names_each_bad_setting_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("LIFECYCLE_SHOP_URL", "shop.example")
    monkeypatch.setenv("LIFECYCLE_SIGNING_KEYS", "k1:s3cr3t-one,k1:s3cr3t-two")
    assert main(["journeys", "validate"]) == 1
    errors = capsys.readouterr().err
    assert "error: LIFECYCLE_SHOP_URL: must be an absolute http(s) URL" in errors
    assert "error: LIFECYCLE_SIGNING_KEYS: entry 2: the id 'k1' is used twice" in errors
    assert "Traceback" not in errors and "s3cr3t" not in errors  # secrets never reach the output


# --- production refuses the development keys and secrets ----------------------------------------

OWN: dict[str, Any] = {"api_keys": "sha256:" + "1" * 64, "admin_keys": "admin-of-ours",
                       "signing_secret": "ours-0123456789"}


def test_production_is_the_default_and_refuses_every_development_secret() -> None:
    settings = Settings()
    assert settings.environment == "production"
    assert [line.split(" ")[0] for line in insecure_defaults(settings, "ingest")] == [
        "LIFECYCLE_API_KEYS", "LIFECYCLE_ADMIN_KEYS", "LIFECYCLE_SIGNING_SECRET"]
    [signing] = insecure_defaults(settings, "dispatcher")
    assert signing == ("LIFECYCLE_SIGNING_SECRET is the development default and LIFECYCLE_SIGNING_KEYS is empty; "
                       "set your own secret (or LIFECYCLE_ENVIRONMENT=local for a local stack)")
    assert insecure_defaults(settings, "stager") == []  # it holds none of these secrets


def test_the_local_environment_runs_with_the_development_defaults() -> None:
    local = Settings(environment="local")
    assert all(insecure_defaults(local, service) == [] for service in SERVICE_SECRETS)


def test_own_keys_and_secrets_start_everywhere() -> None:
    settings = settings_with(OWN)
    assert all(insecure_defaults(settings, service) == [] for service in SERVICE_SECRETS)
    rotated = settings_with({**OWN, "signing_secret": "", "signing_keys": "k2:ours-abcdef"})
    assert insecure_defaults(rotated, "ingest") == []


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"api_keys": ""}, "LIFECYCLE_API_KEYS is empty"),
        ({"admin_keys": " , "}, "LIFECYCLE_ADMIN_KEYS is empty"),
        ({"api_keys": "sha256:" + hashlib.sha256(b"dev-key").hexdigest()}, "LIFECYCLE_API_KEYS is the development"),
        ({"admin_keys": "ours, dev-key"}, "LIFECYCLE_ADMIN_KEYS still holds a development key"),
        ({"api_keys": "ours, dev-admin-key"}, "LIFECYCLE_API_KEYS still holds a development key"),
        ({"signing_secret": "dev-signing-secret-change-me", "signing_keys": "k1:ours-abcdef"},
         "LIFECYCLE_SIGNING_SECRET is the development default and still verifies links"),
        ({"signing_keys": "k1:dev-signing-secret-change-me"}, "LIFECYCLE_SIGNING_KEYS holds the development secret"),
    ],
)
def test_each_insecure_setting_is_named(changes: dict[str, str], expected: str) -> None:
    [problem] = insecure_defaults(settings_with({**OWN, **changes}), "ingest")
    assert problem.startswith(expected)
    assert problem.endswith("(or LIFECYCLE_ENVIRONMENT=local for a local stack)")
    assert "ours-abcdef" not in problem


@pytest.mark.parametrize("service", ["ingest", "dispatcher"])
def test_a_service_refuses_to_start_with_one_line_per_setting_and_exit_1(
        service: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("ENVIRONMENT", "API_KEYS", "ADMIN_KEYS", "SIGNING_SECRET", "SIGNING_KEYS", "SECRETS_DIR"):
        monkeypatch.delenv(f"LIFECYCLE_{name}", raising=False)
    assert main([service]) == 1  # refused before it reaches for a database or Kafka
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith(f"{service}: not starting: LIFECYCLE_") for line in lines)
    assert any("LIFECYCLE_SIGNING_SECRET is the development default" in line for line in lines)


def test_the_local_stack_runs_its_services_as_local() -> None:
    from devstack import SAMPLE_SENDER_ADDRESS, service_env

    assert service_env(Settings())["LIFECYCLE_ENVIRONMENT"] == "local"
    # with a sample postal address in the footers, unless one is set
    assert service_env(Settings())["LIFECYCLE_SENDER_ADDRESS"] == SAMPLE_SENDER_ADDRESS
    own = Settings(sender_address="Ours, 2 rue Y, Lyon")
    assert service_env(own)["LIFECYCLE_SENDER_ADDRESS"] == "Ours, 2 rue Y, Lyon"


# --- what recipients see: an https public URL, the postal address ---------------------------------

READY: dict[str, Any] = {**OWN, "public_url": "https://mail.shop.example", "sender_address": "Shop, 1 rue X, Paris"}


def test_outside_local_an_http_public_url_is_refused_by_the_services_that_put_it_in_front_of_recipients() -> None:
    settings = settings_with({**READY, "public_url": "http://mail.shop.example"})
    for service in ("ingest", "dispatcher"):
        [problem] = recipient_facing_problems(settings, service)
        assert problem == ("LIFECYCLE_PUBLIC_URL is http://mail.shop.example, not https: List-Unsubscribe and the "
                           "links in emails must be https; set the https URL of the ingest API (or "
                           "LIFECYCLE_ENVIRONMENT=local for a local stack)")
    assert recipient_facing_problems(settings, "stager") == []  # it links to nothing
    assert all(startup_problems(settings_with(READY), service) == [] for service in SERVICE_SECRETS)


def test_outside_local_the_dispatcher_needs_the_postal_address() -> None:
    settings = settings_with({**READY, "sender_address": ""})
    [problem] = recipient_facing_problems(settings, "dispatcher")
    assert problem.startswith("LIFECYCLE_SENDER_ADDRESS is not set: every marketing email must show the shop's "
                              "postal address in its footer; set it")
    assert recipient_facing_problems(settings, "ingest") == []  # it composes no email


def test_the_local_environment_takes_http_and_no_address() -> None:
    local = Settings(environment="local")
    assert local.public_url.startswith("http://") and local.sender_address == ""
    assert all(startup_problems(local, service) == [] for service in SERVICE_SECRETS)


def test_the_dispatcher_refuses_to_start_with_an_http_url_and_no_address(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("ENVIRONMENT", "SIGNING_KEYS", "SECRETS_DIR", "SENDER_ADDRESS"):
        monkeypatch.delenv(f"LIFECYCLE_{name}", raising=False)
    monkeypatch.setenv("LIFECYCLE_SIGNING_SECRET", "ours-0123456789")
    monkeypatch.setenv("LIFECYCLE_PUBLIC_URL", "http://mail.shop.example")
    assert main(["dispatcher"]) == 1  # refused before it reaches for a database or Kafka
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" ")[3] for line in lines] == ["LIFECYCLE_PUBLIC_URL", "LIFECYCLE_SENDER_ADDRESS"]
    assert all(line.startswith("dispatcher: not starting: ") for line in lines)


@pytest.mark.parametrize(("given", "kept"), [
    ("Maison Lin, 12 rue des Lilas, 75011 Paris, France", "Maison Lin, 12 rue des Lilas, 75011 Paris, France"),
    ("Maison Lin\n12 rue des Lilas\n\n75011 Paris\nFrance\n", "Maison Lin, 12 rue des Lilas, 75011 Paris, France"),
    ("  Maison Lin,\r\n 12  rue des Lilas\t ", "Maison Lin, 12 rue des Lilas"),
    ("", ""),
])
def test_a_postal_address_is_kept_on_one_line(given: str, kept: str) -> None:
    assert settings_with({"sender_address": given}).sender_address == kept


@pytest.mark.parametrize(("given", "reason"), [
    ("Maison Lin\x00, Paris", "must be printable text"),
    ("x" * 301, "is 301 characters long: a postal address fits in 300"),
])
def test_a_postal_address_that_cannot_be_printed_in_a_footer_is_refused(given: str, reason: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings_with({"sender_address": given})
    [line] = describe_invalid_settings(caught.value)
    assert line.startswith("LIFECYCLE_SENDER_ADDRESS: ") and reason in line


# --- rate limits and the client's address ---------------------------------------------------------


@pytest.mark.parametrize("value", ["127.0.0.1", "10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16", "::1, fd00::/8", "*"])
def test_trusted_proxies_are_addresses_networks_or_everyone(value: str) -> None:
    assert settings_with({"forwarded_allow_ips": value}).forwarded_allow_ips == value


@pytest.mark.parametrize("value", ["localhost", "10.0.0.0/33", "127.0.0.1,", "10.0.0.1 10.0.0.2"])
def test_a_trusted_proxy_typo_is_an_error_not_a_silent_no_match(value: str) -> None:
    with pytest.raises(ValidationError, match=r"not an IP address, a network like 10\.0\.0\.0/8, or \*"):
        settings_with({"forwarded_allow_ips": value})


def test_limits_cannot_be_negative() -> None:
    with pytest.raises(ValidationError):
        settings_with({"page_limit_per_ip_per_minute": -1})
    assert settings_with({"page_limit_per_ip_per_minute": 0}).page_limit_per_ip_per_minute == 0  # 0: no limit


@pytest.mark.parametrize("offset", [0, 100, 200, 300, 600, 900, 1200, 2000])
def test_the_stack_ports_stay_below_the_ephemeral_range(offset: int, tmp_path: Path) -> None:
    # a port in 32768-60999 can be taken by a client's self-connection while its server restarts
    from devstack import private_settings
    from devstack.kafka import ports

    settings = private_settings(tmp_path, offset)
    _, kafka, controller = ports(settings)
    used = [kafka, controller, settings.postgres_port, settings.smtp_port, settings.ingest_port,
            settings.ingest_metrics_port, settings.stager_port, settings.dispatcher_port]
    assert max(used) < 32768, used


@pytest.mark.parametrize("argv", [["stack", "status"], ["demo"], ["chaos", "--runs", "1"],
                                  ["scenario", "run", "x.yaml"]])
def test_without_the_local_stack_tools_their_commands_say_so(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # as in the container image, which carries lifecycle and services only
    import sys

    monkeypatch.setitem(sys.modules, "devstack", None)
    assert main(argv) == 1
    assert "needs the local stack tools (the devstack package)" in capsys.readouterr().err
