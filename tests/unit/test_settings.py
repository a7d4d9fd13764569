"""Settings refused at load with a clear message: URLs, and how the command line reports them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lifecycle.cli import main
from lifecycle.settings import Settings, describe_invalid_settings


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
        Settings(**{field: value})
    [line] = describe_invalid_settings(caught.value)
    assert line.startswith(f"LIFECYCLE_{field.upper()}: ") and reason in line


@pytest.mark.parametrize("field", ["shop_url", "public_url"])
@pytest.mark.parametrize("value", ["https://shop.example/?ref=mail", "https://shop.example/#top"])
def test_base_urls_take_no_query_or_fragment(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match="no \\?query or #fragment"):
        Settings(**{field: value})


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
