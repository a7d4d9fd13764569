"""The conversion cache (lifecycle/templates/converted.py): every email is what converting it alone gives."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from lifecycle.templates import Templates
from lifecycle.templates.converted import ConvertedCache
from lifecycle.templates.links import Links
from lifecycle.templates.samples import SAMPLE_SHOP_URL, sample_contexts


def _send_links(send: str, shop_url: str = SAMPLE_SHOP_URL) -> Links:
    """Links as a send makes them: every URL carries the send's own token."""
    return Links(shop_url,
                 {"unsubscribe": f"https://t.example/u/{send}", "preferences": f"https://t.example/p/{send}",
                  "confirm": f"https://t.example/c/{send}?k=1"},
                 lambda index: f"https://t.example/t/{send}.{index}")


def _with_links(context: dict[str, Any], send: str) -> dict[str, Any]:
    values = copy.deepcopy({k: v for k, v in context.items() if k != "links"})
    values["links"] = _send_links(send)
    return values


def _uncached(extra_dir: Path | None = None) -> Templates:
    templates = Templates(extra_dir)
    templates.converted = ConvertedCache(size=0)
    return templates


def test_every_shipped_email_is_the_same_cached_or_not() -> None:
    cached, alone = Templates(), _uncached()
    for name in cached.names():
        for locale in cached.locales(name):
            for number, context in enumerate(sample_contexts()):
                for send in (f"s{number}a", f"s{number}b"):
                    expected = alone.render(name, _with_links(context, send), locale)
                    got = cached.render(name, _with_links(context, send), locale)
                    assert got == expected, (name, locale, number, send)
                    assert f"/t/{send}." in got.html or "/t/" not in expected.html
    # the second send of each content differs only by its URLs: converted once
    assert cached.converted.hits > 0
    assert cached.converted.hits >= cached.converted.misses


def test_content_that_differs_is_converted_again() -> None:
    cached = Templates()
    context = sample_contexts()[0]
    first = cached.render("prospect_welcome_1", _with_links(context, "a"), "fr")
    other = _with_links(context, "b")
    other["customer"]["first_name"] = "Zoé"
    second = cached.render("prospect_welcome_1", other, "fr")
    assert cached.converted.misses == 2 and cached.converted.hits == 0
    assert "Zoé" in second.html and "Zoé" not in first.html
    assert "https://t.example/u/b" in second.text and "https://t.example/u/a" not in second.text


_ODD_TEMPLATE = """---
subject: Odd links
---
{% extends "_base.mjml" %}
{% block content %}
<mj-section><mj-column>
<mj-text>
<p>As text: {{ links.cart }} and again {{ links.cart }}.</p>
<p>Upper: {{ links.cart|upper }}; cut: {{ links.cart[:22] }}; length {{ links.cart|length }}.</p>
<p><a href="{{ links.cart }}">{{ links.cart }}</a> <a href="{{ links.unsubscribe }}">out</a></p>
<p><a href="mailto:help@shop.example">help@shop.example</a></p>
</mj-text>
<mj-social><mj-social-element name="facebook" href="{{ links.shop }}">Share</mj-social-element></mj-social>
<mj-raw><!-- {{ links.confirm }} --></mj-raw>
<mj-button href="{{ links.confirm }}">Confirm</mj-button>
</mj-column></mj-section>
{% endblock %}
"""


@pytest.mark.parametrize("locale", ["fr", "en"])
def test_links_used_in_odd_ways_give_the_same_email(tmp_path: Path, locale: str) -> None:
    folder = tmp_path / "templates" / locale
    folder.mkdir(parents=True)
    (folder / "odd_links.mjml").write_text(_ODD_TEMPLATE, encoding="utf-8")
    cached, alone = Templates(tmp_path), _uncached(tmp_path)
    context = sample_contexts()[0]
    for send in ("one", "two", "three"):
        expected = alone.render("odd_links", _with_links(context, send), locale)
        assert cached.render("odd_links", _with_links(context, send), locale) == expected
        assert f"https://t.example/c/{send}?k=1" in expected.html


def test_a_url_a_conversion_changes_falls_back_to_converting_alone(tmp_path: Path) -> None:
    cache = ConvertedCache()
    mjml = ('<mjml><mj-body><mj-section><mj-column><mj-text><a href="{u}">{u}</a></mj-text>'
            '</mj-column></mj-section></mj-body></mjml>')
    url = "https://t.example/t/x.0"
    html, text = cache.convert(tmp_path / "t.mjml", mjml.format(u=url), {url}, with_text=True)
    again, text_again = cache.convert(tmp_path / "t.mjml", mjml.format(u=url), {url}, with_text=True)
    assert (html, text) == (again, text_again) and cache.hits == 1
    assert url in html and text is not None and url in text
    # a URL that is not written the same escaped (an &) stays in the content: no placeholder for it
    odd = "https://t.example/t/x?a=1&b=2"
    escaped = odd.replace("&", "&amp;")
    first, _ = cache.convert(tmp_path / "t.mjml", mjml.format(u=escaped), {odd}, with_text=True)
    assert escaped in first


def test_the_cache_keeps_at_most_its_size(tmp_path: Path) -> None:
    cache = ConvertedCache(size=2)
    page = '<mjml><mj-body><mj-section><mj-column><mj-text>{n}</mj-text></mj-column></mj-section></mj-body></mjml>'
    for n in range(5):
        cache.convert(tmp_path / "t.mjml", page.format(n=n), set(), with_text=False)
    assert len(cache._entries) == 2
    cache.convert(tmp_path / "t.mjml", page.format(n=4), set(), with_text=False)
    assert cache.hits == 1


def test_a_conversion_that_rewrites_a_placeholder_is_not_cached(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import lifecycle.templates.converted as converted

    def shouting(path: Path, mjml: str, with_text: bool) -> tuple[str, str | None]:
        return mjml.upper(), None  # a converter that changes every URL it copies

    monkeypatch.setattr(converted, "_convert", shouting)
    cache = ConvertedCache()
    url = "https://t.example/t/x.0"
    html, _ = cache.convert(tmp_path / "t.mjml", f"<p>{url}</p>", {url}, with_text=False)
    assert html == f"<P>{url.upper()}</P>"
    assert not cache._entries


def test_checking_templates_keeps_nothing_in_the_cache() -> None:
    templates = Templates()
    assert templates.problems("prospect_welcome_1") == []
    assert not templates.converted._entries and templates.converted.misses == 0
