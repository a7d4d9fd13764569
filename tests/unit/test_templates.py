"""Templates: every shipped one in every locale, locales and fallback, formatting, errors, sandbox, links."""

from __future__ import annotations

import re
import shutil
import socket
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lifecycle.journey_files import load_journeys
from lifecycle.templates import (
    BUILTIN_DIR,
    Links,
    Rendered,
    TemplateError,
    Templates,
    links,
    sample_contexts,
    with_open_pixel,
)
from lifecycle.templates.links import is_web_url, product_image_url, product_url
from lifecycle.templates.text import mjml_to_text

NBSP = "\u00a0"
SHIPPED = sorted(p.stem for p in (BUILTIN_DIR / "fr").glob("*.mjml"))
TRACKED = re.compile(r"https://track\.example/t/c/sample-(\d+)")


def context(**changes: Any) -> dict[str, Any]:
    """The full sample context, with `customer` keys or other variables changed."""
    values = sample_contexts()[0]
    for key, value in changes.items():
        if key == "customer":
            values["customer"].update(value)
        elif value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


def write(root: Path, relative: str, text: str) -> Path:
    path = root / "templates" / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def minimal(body: str, subject: str = "Hello {{ customer.first_name or 'you' }}") -> str:
    """A template on the shipped layout; `body` goes into the content block (line 7 onwards)."""
    return (f"---\nsubject: {subject}\n---\n{{% extends \"_base.mjml\" %}}\n"
            f"{{% import \"_components.mjml\" as ui with context %}}\n{{% block content %}}\n{body}\n"
            "{% endblock %}\n")


# --- what ships ------------------------------------------------------------------------------


def test_every_journey_template_ships_in_french_and_english() -> None:
    templates = Templates()
    names = {name for journey in load_journeys(None, templates) for step in journey.steps
             if hasattr(step, "templates") for name in step.templates()}
    assert len(SHIPPED) == 28 and "post_purchase_4" in SHIPPED and "browse_abandonment_1" in SHIPPED
    assert names <= set(SHIPPED)
    for name in SHIPPED:
        assert templates.locales(name) == ["en", "fr"], name


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_renders_every_branch_in_every_locale(name: str) -> None:
    assert Templates().problems(name) == []


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("locale", ["fr", "en"])
def test_every_sample_gives_a_subject_html_and_text(name: str, locale: str) -> None:
    templates = Templates()
    for values in sample_contexts():
        rendered = templates.render(name, values, locale=locale)
        assert rendered.locale == locale
        assert rendered.subject and "\n" not in rendered.subject and "{" not in rendered.subject
        assert rendered.html.startswith("<!doctype html>") or rendered.html.lower().startswith("<!doctype html>")
        assert rendered.text.strip() and "<" not in rendered.text.replace("<https", "")
        assert "{{" not in rendered.html and "{%" not in rendered.html and "{name}" not in rendered.text


def test_cart_items_names_quantities_prices_and_images() -> None:
    rendered = Templates().render("abandoned_cart_1", context(), locale="fr")
    assert "Linen shirt" in rendered.text and "Wool scarf" in rendered.text
    assert f"Quantité{NBSP}: 2" in rendered.text and f"34,50{NBSP}€" in rendered.text
    assert f"128,00{NBSP}€" in rendered.text  # the cart's value
    assert 'src="https://shop.example/images/p1.jpg"' in rendered.html  # default image URL
    assert 'src="https://shop.example/media/scarf.jpg"' in rendered.html  # the item's own image_url
    assert 'src="https://shop.example/logo.png"' in rendered.html


@pytest.mark.parametrize("locale", ["fr", "en"])
@pytest.mark.parametrize("name", ["abandoned_cart_1", "abandoned_cart_2", "abandoned_cart_3"])
def test_the_cart_button_goes_to_the_carts_own_checkout_page_when_given(name: str, locale: str) -> None:
    templates = Templates()
    checkout = "https://checkout.shop.example/c/k1/recover?key=a1"
    given = context()
    given["context"] = {**given["context"], "checkout_url": checkout}
    templates.render(name, given, locale=locale)
    assert [link["url"] for link in given["links"].collected() if link["name"] == "cart"] == [checkout]
    plain = context()
    templates.render(name, plain, locale=locale)
    assert [link["url"] for link in plain["links"].collected() if link["name"] == "cart"] == [
        "https://shop.example/cart"]


def test_first_name_or_a_friendly_greeting() -> None:
    templates = Templates()
    named = templates.render("abandoned_cart_1", context(), locale="en")
    assert named.subject == "Ana, your cart is waiting for you" and "Hi Ana," in named.text
    anonymous = templates.render("abandoned_cart_1", context(customer={"first_name": None}), locale="en")
    assert anonymous.subject == "Your cart is waiting for you"
    assert "Hello," in anonymous.text and "None" not in anonymous.text
    french = templates.render("abandoned_cart_1", context(customer={"first_name": None}), locale="fr")
    assert french.text.count("Bonjour,") == 1


def test_coupon_or_a_sensible_default() -> None:
    templates = Templates()
    with_coupon = templates.render("abandoned_cart_3", context(), locale="fr")
    assert "AC-7K2Q9" in with_coupon.subject and "AC-7K2Q9" in with_coupon.text
    assert "10 juillet 2026, 23:59" in with_coupon.text  # 21:59 UTC in Paris
    without = templates.render("abandoned_cart_3", context(coupon=None, offer=None, tier=None), locale="fr")
    assert "code" not in without.subject and "AC-" not in without.text
    assert "Linen shirt" in without.text


def test_recommendations_are_shown_and_an_empty_list_shows_nothing_special() -> None:
    templates = Templates()
    shown = templates.render("new_customer_welcome_3", context(), locale="en")
    assert shown.text.index("Silk tie") < shown.text.index("Felt hat") < shown.text.index("Canvas tote")
    assert "€35.00" in shown.text
    empty = templates.render("new_customer_welcome_3", context(recommendations=[]), locale="en")
    assert "Silk tie" not in empty.text and "See all new arrivals" in empty.text


# --- locales -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("wanted", "expected"), [
    ("en", "en"), ("en-GB", "en"), ("en_US", "en"), ("EN-gb", "en"), ("fr-CA", "fr"), ("fr", "fr"),
    ("de", "fr"), ("pt-BR", "fr"), (None, "fr"), ("", "fr"),
])
def test_the_customers_locale_falls_back_to_its_language_then_the_default(wanted: str | None,
                                                                          expected: str) -> None:
    assert Templates().resolve_locale("abandoned_cart_1", wanted) == expected


def test_the_default_locale_is_a_setting() -> None:
    assert Templates().resolve_locale("abandoned_cart_1", "de", default="en") == "en"
    assert Templates(default_locale="en").resolve_locale("abandoned_cart_1", None) == "en"
    rendered = Templates().render("birthday_1", context(customer={"locale": "de"}), locale="de", default_locale="en")
    assert rendered.locale == "en" and rendered.subject.startswith("Happy birthday")


# --- formatting --------------------------------------------------------------------------------


def render_line(source: str, locale: str = "fr", **changes: Any) -> str:
    return Templates().render_string(source, context(**changes), locale)


@pytest.mark.parametrize(("locale", "amount", "currency", "expected"), [
    ("fr", 59, "EUR", f"59,00{NBSP}€"),
    ("fr", 1234.5, "EUR", "1\u202f234,50\u00a0€"),
    ("en", 59, "EUR", "€59.00"),
    ("en", 1234.5, "USD", "$1,234.50"),
    ("en-GB", 10, "GBP", "£10.00"),
    ("en-US", 10, "GBP", "£10.00"),
])
def test_money_follows_the_locale_and_currency(locale: str, amount: float, currency: str, expected: str) -> None:
    line = f"{{{{ {amount}|money('{currency}') }}}}"
    assert render_line(line, locale.split("-")[0], customer={"locale": locale}) == expected


def test_a_customers_regional_variant_formats_money_in_their_language() -> None:
    templates = Templates()
    british = templates.render("referral_1", context(customer={"locale": "en-GB"}), locale="en-GB")
    american = templates.render("referral_1", context(customer={"locale": "en-US"}), locale="en-US")
    assert "€10.00" in british.subject and "€10.00" in american.subject
    assert british.locale == american.locale == "en"
    german = templates.render("referral_1", context(customer={"locale": "de"}), locale="de")
    assert f"10,00{NBSP}€" in german.subject  # French template, French formatting


def test_dates_are_in_the_customers_time_zone() -> None:
    moment = datetime(2026, 7, 10, 21, 59, 59, tzinfo=UTC)
    extras = {"coupon": {"code": "X", "kind": "percent", "amount": 10, "currency": "EUR", "expires_at": moment}}
    paris = render_line("{{ coupon.expires_at|datetime }}", "fr", customer={"timezone": "Europe/Paris"}, **extras)
    assert paris == "10 juillet 2026, 23:59"
    york = render_line("{{ coupon.expires_at|datetime }} / {{ coupon.expires_at|date }}", "en",
                       customer={"timezone": "America/New_York", "locale": "en-GB"}, **extras)
    assert york == "10 July 2026, 17:59 / 10 July 2026"
    tokyo = render_line("{{ coupon.expires_at|date('full') }}", "fr", customer={"timezone": "Asia/Tokyo"}, **extras)
    assert tokyo == "samedi 11 juillet 2026"
    # no (or an unknown) zone: UTC, not an error
    utc = render_line("{{ coupon.expires_at|datetime('short') }}", "en",
                      customer={"timezone": "Mars/Olympus", "locale": "en-GB"}, **extras)
    assert utc == "10/07/2026, 21:59"


def test_percent_and_discount_filters() -> None:
    fixed = {"code": "X", "kind": "fixed", "amount": 5, "currency": "EUR", "expires_at": datetime.now(UTC)}
    assert render_line("{{ 15|percent }}", "fr") == f"15{NBSP}%"
    assert render_line("{{ 15|percent }}", "en") == "15%"
    assert render_line("{{ coupon|discount }}", "en", coupon=fixed) == "€5.00"


def test_a_bad_value_for_a_filter_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "fr/bad.mjml", minimal("{% call ui.prose() %}\n{{ 'abc'|money('EUR') }}\n{% endcall %}"))
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("bad", context(), locale="fr")
    assert caught.value.path.name == "bad.mjml" and caught.value.line == 8
    assert "money: expected a number" in caught.value.message


# --- errors ------------------------------------------------------------------------------------


def test_a_missing_variable_is_an_error_with_file_line_and_variable(tmp_path: Path) -> None:
    body = "{% call ui.prose() %}\n<p>{{ discount_code }}</p>\n{% endcall %}"
    path = write(tmp_path, "fr/broken.mjml", minimal(body))
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("broken", context(), locale="fr")
    assert caught.value.path == path and caught.value.line == 8
    assert "discount_code" in caught.value.message and "undefined" in caught.value.message
    assert str(caught.value).startswith(f"{path}:8: ")


def test_a_missing_variable_in_the_subject_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "fr/subject.mjml", minimal("", subject="Hello {{ customer.nickname }}"))
    [problem] = Templates(tmp_path).problems("subject")
    assert (problem.path, problem.line) == (path, 2) and "nickname" in problem.message


def test_a_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "fr/syntax.mjml", minimal("{% call ui.prose() %}\n{% if %}\n{% endcall %}"))
    problems = Templates(tmp_path).problems("syntax")
    assert [(p.path, p.line) for p in problems] == [(path, 8)]


def test_problems_reports_every_locale_and_check_raises_the_first(tmp_path: Path) -> None:
    fr = write(tmp_path, "fr/twice.mjml", minimal("{% call ui.prose() %}\n{{ nope_fr }}\n{% endcall %}"))
    en = write(tmp_path, "en/twice.mjml", minimal("{% call ui.prose() %}\n\n{{ nope_en }}\n{% endcall %}"))
    templates = Templates(tmp_path)
    problems = templates.problems("twice")
    assert {(p.path, p.line) for p in problems} == {(fr, 8), (en, 9)}
    assert any("nope_fr" in p.message for p in problems) and any("nope_en" in p.message for p in problems)
    with pytest.raises(TemplateError):
        templates.check("twice")


def test_a_branch_only_some_samples_take_is_still_checked(tmp_path: Path) -> None:
    # the typo is only reached without a coupon: the bare sample finds it
    write(tmp_path, "fr/branch.mjml", minimal(
        "{% call ui.prose() %}\n{% if coupon is defined %}{{ coupon.code }}{% else %}{{ coupn.code }}{% endif %}\n"
        "{% endcall %}"))
    [problem] = Templates(tmp_path).problems("branch")
    assert problem.line == 8 and "coupn" in problem.message


def test_a_template_missing_from_the_default_locale_is_a_problem(tmp_path: Path) -> None:
    write(tmp_path, "en/english_only.mjml", minimal("{% call ui.prose() %}<p>Hi</p>{% endcall %}"))
    templates = Templates(tmp_path)
    assert templates.exists("english_only")
    assert any("default locale 'fr'" in p.message for p in templates.problems("english_only"))
    assert not templates.exists("nowhere")
    assert "no template named 'nowhere'" in templates.problems("nowhere")[0].message


def test_front_matter_errors(tmp_path: Path) -> None:
    write(tmp_path, "fr/nofront.mjml", "<mjml><mj-body></mj-body></mjml>\n")
    write(tmp_path, "fr/nosubject.mjml", "---\npreheader: hi\n---\n<mjml></mjml>\n")
    write(tmp_path, "fr/badkey.mjml", "---\nsubject: hi\ntitle: no\n---\n<mjml></mjml>\n")
    templates = Templates(tmp_path)
    assert "front matter" in templates.problems("nofront")[0].message
    assert "'subject:'" in templates.problems("nosubject")[0].message
    [bad] = templates.problems("badkey")
    assert bad.line == 3 and "title" in bad.message


def test_unknown_mjml_elements_and_includes_are_reported_with_their_line(tmp_path: Path) -> None:
    write(tmp_path, "fr/typo.mjml", minimal("<mj-sectoin>\n</mj-sectoin>\n<mj-include path=\"/etc/passwd\" />"))
    problems = Templates(tmp_path).problems("typo")
    assert (7, "unknown MJML element <mj-sectoin>") in [(p.line, p.message) for p in problems]
    assert any(p.line == 9 and "mj-include" in p.message for p in problems)


def test_invalid_mjml_is_a_template_error(tmp_path: Path) -> None:
    write(tmp_path, "fr/unclosed.mjml", minimal("<mj-section><mj-column><mj-text>hi</mj-column></mj-section>"))
    [problem] = Templates(tmp_path).problems("unclosed")
    assert "invalid MJML" in problem.message


def test_the_sandbox_refuses_python_internals(tmp_path: Path) -> None:
    write(tmp_path, "fr/evil.mjml", minimal("{% call ui.prose() %}\n{{ ''.__class__.__mro__ }}\n{% endcall %}"))
    with pytest.raises(TemplateError) as caught:
        Templates(tmp_path).render("evil", context(), locale="fr")
    assert caught.value.line == 8 and "unsafe" in caught.value.message
    with pytest.raises(TemplateError):
        Templates().render_string("{{ customer.__class__.__init__.__globals__ }}", context())
    with pytest.raises(TemplateError):
        Templates().render_string("{{ links._tracker }}", context())


def test_the_text_part_is_never_empty(tmp_path: Path) -> None:
    write(tmp_path, "fr/picture.mjml", "---\nsubject: A picture\n---\n<mjml><mj-body><mj-section><mj-column>"
                                       "<mj-image src=\"https://x.example/a.png\" /></mj-column></mj-section>"
                                       "</mj-body></mjml>\n")
    [problem] = Templates(tmp_path).problems("picture")
    assert "text part is empty" in problem.message


def test_an_authored_text_part_replaces_the_derived_one(tmp_path: Path) -> None:
    write(tmp_path, "fr/abandoned_cart_1.txt",
          "Bonjour {{ customer.first_name }},\n{% for item in context['items'] %}* {{ item.name }}\n{% endfor %}"
          "Panier : {{ links.cart }}\n")
    values = context()
    rendered = Templates(tmp_path).render("abandoned_cart_1", values, locale="fr")
    assert rendered.text.startswith("Bonjour Ana,\n* Linen shirt\n* Wool scarf\nPanier : https://track.example/")
    cart = [i for i, link in enumerate(values["links"].collected()) if link["name"] == "cart"]
    assert rendered.text.strip().endswith(f"/t/c/sample-{cart[0]}")  # the same index as the HTML's


def test_extra_templates_override_the_package_and_strings_merge(tmp_path: Path) -> None:
    write(tmp_path, "fr/abandoned_cart_1.mjml", minimal("{% call ui.prose() %}<p>Custom</p>{% endcall %}",
                                                        subject="Custom subject"))
    write(tmp_path, "fr/_strings.yaml", "signoff: \"Bien à vous,\"\n")
    templates = Templates(tmp_path)
    rendered = templates.render("abandoned_cart_1", context(), locale="fr")
    assert rendered.subject == "Custom subject" and "Custom" in rendered.text
    assert "Bien à vous," in rendered.text and "Me désinscrire" in rendered.text  # other keys still the package's
    assert templates.render("abandoned_cart_1", context(), locale="en").subject.startswith("Ana, your cart")


def test_yes_and_no_in_the_strings_stay_words(tmp_path: Path) -> None:
    write(tmp_path, "en/_strings.yaml", "signoff: No\nanswer: yes\nsince: 2026-01-01\n")
    strings = Templates(tmp_path).strings("en")
    assert (strings["signoff"], strings["answer"], strings["since"]) == ("No", "yes", "2026-01-01")


# --- links -------------------------------------------------------------------------------------


def test_links_are_tracked_collected_in_index_order_and_unsubscribe_is_not() -> None:
    values = context()
    rendered = Templates().render("post_purchase_1", values, locale="en")
    collected = values["links"].collected()
    names = [link["name"] for link in collected]
    assert names[0] == "shop" and {"satisfied", "not_satisfied", "support", "product:p1"} <= set(names)
    assert len(names) == len(set(names))  # each link once, however often it appears
    by_name = {link["name"]: link["url"] for link in collected}
    assert by_name["satisfied"] == "https://shop.example/feedback?answer=satisfied"
    assert by_name["not_satisfied"] == "https://shop.example/feedback?answer=not_satisfied"
    hrefs = re.findall(r'href="([^"]+)"', rendered.html)
    assert hrefs and all(TRACKED.fullmatch(h) or (h.startswith("https://shop.example/") and h.endswith("/sample"))
                         for h in hrefs), hrefs
    assert 'href="https://shop.example/u/sample"' in rendered.html  # unsubscribe, as is
    assert "https://shop.example/u/sample" not in by_name.values()
    used = {int(m) for m in TRACKED.findall(rendered.html)}
    assert used == set(range(len(collected)))


def test_any_url_written_in_a_template_is_tracked(tmp_path: Path) -> None:
    write(tmp_path, "fr/guide.mjml", minimal(
        "{% call ui.prose() %}<p><a href=\"https://shop.example/guide?a=1&amp;b=2\">Guide</a> "
        "<a href=\"{{ track('https://blog.example/post', 'blog') }}\">Blog</a> "
        "<a href=\"mailto:hello@shop.example\">Mail</a></p>{% endcall %}"))
    values = context()
    rendered = Templates(tmp_path).render("guide", values, locale="fr")
    links = values["links"].collected()
    assert {"name": "https://shop.example/guide?a=1&b=2", "url": "https://shop.example/guide?a=1&b=2"} in links
    assert {"name": "blog", "url": "https://blog.example/post"} in links
    assert "guide?a=1" not in rendered.html and 'href="mailto:hello@shop.example"' in rendered.html
    assert "Guide (https://track.example/t/c/sample-" in rendered.text


def test_an_unknown_link_name_is_an_error() -> None:
    with pytest.raises(TemplateError) as caught:
        Templates().render_string("{{ links.carrt }}", context())
    assert "no link named 'carrt'" in caught.value.message


def test_the_confirm_link_is_not_tracked() -> None:
    values = context()
    rendered = Templates().render("double_opt_in_1", values, locale="fr")
    assert 'href="https://shop.example/c/sample"' in rendered.html
    assert "https://shop.example/c/sample" in rendered.text
    assert all(link["name"] != "confirm" for link in values["links"].collected())


def test_links_without_a_tracker_stay_as_they_are() -> None:
    links = Links("https://shop.example", {"unsubscribe": "https://u"}, None)
    assert links["cart"] == "https://shop.example/cart" and links["product:p9"] == "https://shop.example/products/p9"
    assert links.collected() == [{"name": "cart", "url": "https://shop.example/cart"},
                                 {"name": "product:p9", "url": "https://shop.example/products/p9"}]
    assert "cart" in links and "unsubscribe" in links and "nope" not in links


# Product ids come from events: each must stay one path segment of the shop's URL.
HOSTILE_PRODUCT_IDS = {
    "../admin": "https://shop.example/products/..%2Fadmin",
    "a/b": "https://shop.example/products/a%2Fb",
    "p1?redirect=https://evil.example": "https://shop.example/products/p1%3Fredirect%3Dhttps%3A%2F%2Fevil.example",
    "p1#frag": "https://shop.example/products/p1%23frag",
    "p 1": "https://shop.example/products/p%201",
    "pâté-日本": "https://shop.example/products/p%C3%A2t%C3%A9-%E6%97%A5%E6%9C%AC",
    '"><script>': "https://shop.example/products/%22%3E%3Cscript%3E",
    "100%": "https://shop.example/products/100%25",
    "@evil.example": "https://shop.example/products/%40evil.example",
    "..": "https://shop.example",  # a dot segment is no product page: the shop instead
    ".": "https://shop.example",
}


@pytest.mark.parametrize(("product_id", "url"), HOSTILE_PRODUCT_IDS.items())
def test_product_ids_are_encoded_as_one_path_segment(product_id: str, url: str) -> None:
    links = Links("https://shop.example/", {}, None)
    assert links[f"product:{product_id}"] == url
    assert product_url("https://shop.example", product_id) == url


def test_product_image_urls_encode_the_id_too() -> None:
    assert product_image_url("https://shop.example/", "../x?y") == "https://shop.example/images/..%2Fx%3Fy.jpg"


def test_hostile_product_ids_and_names_cannot_change_a_links_meaning_in_an_email() -> None:
    items = [{"product_id": product_id, "name": f'Mug "{index}"><img src=x onerror=alert(1)>', "quantity": 1,
              "price": 10.0} for index, product_id in enumerate(HOSTILE_PRODUCT_IDS)]
    values = context(context={**sample_contexts()[0]["context"], "items": items})
    rendered = Templates().render("abandoned_cart_1", values, locale="en")
    stored = {link["name"]: link["url"] for link in values["links"].collected()}
    for product_id, url in HOSTILE_PRODUCT_IDS.items():
        assert stored[f"product:{product_id}"] == url  # the redirect target is the encoded URL, nothing else
    # as a browser parses it: names stay text and attribute values, never elements or attributes
    tags = _parsed_tags(rendered.html)
    assert not [tag for tag, _ in tags if tag == "script"]
    assert not [attrs for _, attrs in tags if "onerror" in attrs]
    alts = [attrs["alt"] for tag, attrs in tags if tag == "img" and attrs.get("alt", "").startswith("Mug")]
    assert alts == [item["name"] for item in items]
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert "https://shop.example/images/..%2Fadmin.jpg" in images
    assert "https://shop.example/images/p1%3Fredirect%3Dhttps%3A%2F%2Fevil.example.jpg" in images
    assert all(src.startswith("https://shop.example/") for src in images)


def _parsed_tags(markup: str) -> list[tuple[str, dict[str, str]]]:
    found: list[tuple[str, dict[str, str]]] = []

    class Collector(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, {name: value or "" for name, value in attrs}))

    Collector().feed(markup)
    return found


@pytest.mark.parametrize("url", ["javascript:alert(1)", "//evil.example", "https://shop.example/a b", "", "mailto:x@y"])
def test_only_web_urls_can_be_tracked(url: str) -> None:
    with pytest.raises(TemplateError, match="http"):
        Templates().render_string("{{ track(url) }}", context(url=url))


def test_a_recommendation_with_a_non_web_url_falls_back_to_the_shops_links() -> None:
    values = context(recommendations=[{"product_id": "p9", "name": "Tie", "price": 5.0, "currency": "EUR",
                                       "url": "javascript:alert(1)", "image_url": "data:image/png;base64,AAAA"}])
    rendered = Templates().render("win_back_2", values, locale="en")
    assert "javascript:" not in rendered.html and "data:image" not in rendered.html
    assert {"name": "product:p9", "url": "https://shop.example/products/p9"} in values["links"].collected()


def test_a_plain_mapping_of_links_still_renders() -> None:
    values = context(links={"unsubscribe": "https://u.example", "preferences": "https://p.example",
                            "confirm": "https://c.example"})
    rendered = Templates().render("abandoned_cart_1", values, locale="fr")
    assert 'href="https://shop.example/cart"' in rendered.html and "https://u.example" in rendered.html


def test_the_open_pixel_goes_last_in_the_body() -> None:
    html = with_open_pixel("<html><body><p>x</p></body></html>", "https://t.example/t/o/tok.gif")
    assert html.endswith('<img src="https://t.example/t/o/tok.gif" width="1" height="1" alt="" '
                         'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0;" /></body></html>')


# --- the text part -----------------------------------------------------------------------------


def test_text_from_mjml_keeps_paragraphs_links_buttons_and_lists() -> None:
    text = mjml_to_text(
        "<mjml><mj-head><mj-title>T</mj-title><mj-style>a{}</mj-style></mj-head><mj-body><mj-section><mj-column>"
        "<mj-image css-class=\"html-only\" src=\"x\" alt=\"logo\" />"
        "<mj-text><p>Hello   <strong>Ana</strong>,</p><p>See <a href=\"https://x.example/a\">this</a> &amp; "
        "<a href=\"https://x.example/b\">https://x.example/b</a>.</p><ul><li>One</li><li>Two</li></ul>"
        f"<p>59,00{NBSP}€<br/>next</p></mj-text>"
        "<mj-button href=\"https://x.example/c\">Go   there</mj-button>"
        "<mj-text css-class=\"html-only\">hidden</mj-text>"
        "</mj-column></mj-section></mj-body></mjml>")
    assert text == (f"Hello Ana,\n\nSee this (https://x.example/a) & https://x.example/b.\n\n- One\n- Two\n\n"
                    f"59,00{NBSP}€\nnext\n\nGo there\nhttps://x.example/c\n")


def test_body_is_the_text_part() -> None:
    assert Rendered(subject="s", html="<p>h</p>", text="t\n", locale="fr", preheader="").body == "t\n"


def test_keys_of_data_win_over_dict_methods() -> None:
    assert render_line("{{ context.items|length }} {{ context['items'][0].name }}") == "2 Linen shirt"
    with pytest.raises(TemplateError) as caught:
        render_line("{{ context['values'] }}")
    assert "'values' is undefined (keys here: cart_id, consent, currency" in caught.value.message


# --- the `lifecycle templates` command ---------------------------------------------------------


def templates_command(argv: list[str], settings: Any) -> int:
    import argparse

    from lifecycle.cli_templates import add_templates_parser, run_templates_command

    parser = argparse.ArgumentParser(prog="lifecycle")
    add_templates_parser(parser.add_subparsers(dest="command", required=True))
    return run_templates_command(parser.parse_args(["templates", *argv]), settings)


def test_preview_writes_html_text_headers_and_the_eml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lifecycle.settings import Settings

    code = templates_command(["preview", "abandoned_cart", "2", "--locale", "en", "--out", str(tmp_path)], Settings())
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"abandoned_cart_2.en.{ext}" for ext in ("eml", "headers.txt", "html", "links.txt", "txt")]
    text = (tmp_path / "abandoned_cart_2.en.txt").read_text()
    assert "AC-PREVIEW" in text and "Linen shirt" in text  # the step's coupon, sample cart
    headers = (tmp_path / "abandoned_cart_2.en.headers.txt").read_text()
    assert "X-Lifecycle-Journey: abandoned_cart\n" in headers and "X-Lifecycle-Step: 2\n" in headers
    assert "cart\thttps://shop.example/cart" in (tmp_path / "abandoned_cart_2.en.links.txt").read_text()
    assert "subject: " in capsys.readouterr().out


def test_preview_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from lifecycle import cli_templates
    from lifecycle.settings import Settings

    assert templates_command(["preview", "nope", "1"], Settings()) == 1
    assert "no journey named 'nope'" in capsys.readouterr().err
    assert templates_command(["preview", "abandoned_cart", "4"], Settings()) == 1
    assert "abandoned_cart has send steps 1 to 3, not 4" in capsys.readouterr().err
    assert templates_command(["preview", "post_purchase", "2", "--template", "x"], Settings()) == 1
    assert "post_purchase_2, post_purchase_4" in capsys.readouterr().err
    monkeypatch.setattr(cli_templates, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert templates_command(["preview", "birthday", "1", "--png", "--out", str(tmp_path)], Settings()) == 1
    assert "apt-get install -y chromium" in capsys.readouterr().err


def test_send_test_goes_through_the_configured_smtp_server(capsys: pytest.CaptureFixture[str]) -> None:
    from aiosmtpd.controller import Controller

    from lifecycle.settings import Settings

    received: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope.original_content)
            return "250 OK"

    with socket.socket() as probe:  # a free port for the test's own SMTP server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        settings = Settings(smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none")
        code = templates_command(["send-test", "post_purchase", "2", "--template", "post_purchase_4",
                                  "--locale", "en", "--to", "qa@shop.example"], settings)
    finally:
        controller.stop()
    assert code == 0 and len(received) == 1
    assert b"To: qa@shop.example" in received[0] and b"X-Lifecycle-Journey: post_purchase" in received[0]
    assert "sent post_purchase_4 (en) to qa@shop.example" in capsys.readouterr().out


def test_a_web_url_has_no_character_str_isspace_calls_whitespace_nor_a_control_character() -> None:
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        unreadable = char.isspace() or code < 0x20 or char == "\x7f"
        assert is_web_url(f"https://shop.example/a{char}b") is not unreadable, hex(code)


def test_the_href_pattern_matches_where_the_ignore_case_word_boundary_pattern_does() -> None:
    # links._HREF spells "\bhref" in any case with classes and a look-behind: the same matches
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        for letter in "href":
            folds = re.fullmatch(letter, char, re.IGNORECASE) is not None
            assert folds is (char in (letter, letter.upper())), hex(code)
    reference = re.compile(r"""(\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
    markup = ("<a HREF='https://a.example/x'>a</a><a data-href=\"https://b.example\">b</a>"
              "<a xhref=\"https://c.example\">c</a><a href = \"https://d.example/\u00e9\">d</a>"
              "<a Href=\"\n\">e</a>é_href=\"https://f.example\" -href='https://g.example' hReF=\"x\"")
    expected = [m.span(0) for m in reference.finditer(markup)]
    assert len(expected) == 6 and [m.span(0) for m in links._HREF.finditer(markup)] == expected
    assert [m.groups() for m in links._HREF.finditer(markup)] == [m.groups() for m in reference.finditer(markup)]


# --- the shop's postal address in the footer ---------------------------------------------------


@pytest.mark.parametrize("locale", ["fr", "en"])
@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_email_shows_the_postal_address_in_its_footer(name: str, locale: str) -> None:
    # journeys' marketing emails, campaigns and the double opt-in alike: the footer is shared
    address = "Maison Lin, 3 quai Voltaire, 75007 Paris, France"
    values = context(shop={**context()["shop"], "address": address})
    rendered = Templates().render(name, values, locale=locale)
    footer = rendered.text.split("\n\n")[-3:]  # the footer note, the address, preferences and unsubscribe
    assert footer[1] == address
    strings = Templates().strings(locale)
    assert footer[2].startswith(strings["preferences"]) and strings["unsubscribe"] in footer[2]
    html_footer = rendered.html[rendered.html.index(strings["help"]):]
    assert f">{address}</p>" in html_footer


def test_the_postal_address_is_escaped_in_the_html() -> None:
    values = context(shop={**context()["shop"], "address": "Lin & Fils <SARL>, 1 rue X, Lyon"})
    rendered = Templates().render("win_back_1", values, locale="fr")
    assert "Lin &amp; Fils &lt;SARL&gt;, 1 rue X, Lyon" in rendered.html
    assert "Lin & Fils <SARL>, 1 rue X, Lyon" in rendered.text


def test_a_template_without_the_postal_address_is_a_problem(tmp_path: Path) -> None:
    # its own layout, no footer: the address is in neither part
    own = write(tmp_path, "fr/own_layout.mjml", "---\nsubject: Hello\n---\n<mjml><mj-body><mj-section><mj-column>"
                                                "<mj-text>Bonjour</mj-text></mj-column></mj-section></mj-body>"
                                                "</mjml>\n")
    [problem] = Templates(tmp_path).problems("own_layout")
    assert (problem.path, problem.line) == (own, 1)
    assert problem.message.startswith("the HTML and text part does not show the shop's postal address")
    # an authored text part without it: the text part is named, in its own file
    write(tmp_path, "fr/abandoned_cart_1.txt", "Bonjour {{ customer.first_name }}, votre panier : {{ links.cart }}\n")
    [text_problem] = Templates(tmp_path).problems("abandoned_cart_1")
    assert text_problem.path == tmp_path / "templates" / "fr" / "abandoned_cart_1.txt"
    assert text_problem.message.startswith("the text part does not show the shop's postal address")
    write(tmp_path, "fr/abandoned_cart_1.txt", "Bonjour, votre panier : {{ links.cart }}\n-- \n{{ shop.address }}\n")
    assert Templates(tmp_path).problems("abandoned_cart_1") == []


def test_the_preview_shows_a_sample_address_until_the_setting_is_set(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lifecycle.settings import Settings
    from lifecycle.templates import SAMPLE_POSTAL_ADDRESS

    assert templates_command(["preview", "win_back", "1", "--locale", "en", "--out", str(tmp_path)], Settings()) == 0
    assert SAMPLE_POSTAL_ADDRESS in (tmp_path / "win_back_1.en.txt").read_text()
    assert "LIFECYCLE_SENDER_ADDRESS is not set; the footer shows a sample address" in capsys.readouterr().err
    own = Settings(sender_address="Maison Lin, 3 quai Voltaire, 75007 Paris")
    assert templates_command(["preview", "win_back", "1", "--locale", "en", "--out", str(tmp_path)], own) == 0
    assert "3 quai Voltaire" in (tmp_path / "win_back_1.en.html").read_text()
    assert "not set" not in capsys.readouterr().err
