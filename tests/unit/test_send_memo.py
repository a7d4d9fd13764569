"""Emails rendered once per content (lifecycle/templates/memo.py, reads.py): every email is the one
rendering it with its own links gives, byte for byte."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import SandboxedEnvironment

from lifecycle.settings import Settings
from lifecycle.templates import Templates
from lifecycle.templates.memo import SendMemo
from lifecycle.templates.reads import reads_of_source, reads_of_templates
from lifecycle.templates.samples import sample_contexts
from lifecycle.tokens import SigningKeys
from services.dispatcher.compose import MessageSpec, compose_wire

SETTINGS = Settings(shop_name="Maison Lin", shop_url="https://shop.example", public_url="https://t.shop.example",
                    mail_from="Maison Lin <hello@shop.example>", signing_secret="test-secret", default_locale="fr")
KEYS = SigningKeys.from_settings(SETTINGS)
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
_STANDARD = {"customer", "shop", "journey", "step", "now", "context", "links"}


def _alone(extra_dir: Path | None = None) -> Templates:
    templates = Templates(extra_dir)
    templates.memo = SendMemo(size=0)
    return templates


def _spec(template: str, sample: dict[str, Any], send: int, customer: dict[str, Any] | None = None,
          date: datetime = NOW) -> MessageSpec:
    """The sample's email for customer `send` (its own id, address and message id)."""
    profile = {k: v for k, v in copy.deepcopy(sample["customer"]).items() if k != "email"}
    return MessageSpec(journey="welcome", step=1, template=template, message_id=f"<{send}.1.abc@shop.example>",
                       to_address=f"customer{send}@example.com",
                       customer={**profile, "customer_id": f"c-{send}", **(customer or {})},
                       context=copy.deepcopy(sample["context"]),
                       extras=copy.deepcopy({k: v for k, v in sample.items() if k not in _STANDARD}), date=date)


def _same_with_or_without(templates: Templates, alone: Templates, spec: MessageSpec) -> bytes:
    got = compose_wire(SETTINGS, KEYS, templates, spec)
    expected = compose_wire(SETTINGS, KEYS, alone, spec)
    assert got == expected, (spec.template, spec.message_id)
    return got.message


def test_every_shipped_email_is_the_same_memoized_or_not() -> None:
    memoized, alone = Templates(), _alone()
    for name in memoized.names():
        for sample in sample_contexts():
            for send in (101, 202, 303):
                for locale in memoized.locales(name):
                    spec = _spec(name, sample, send, {"locale": locale})
                    message = _same_with_or_without(memoized, alone, spec)
                    assert f"c-{send}".encode() not in message  # ids only inside signed tokens
    # customers who differ by id, address and message id only: most emails come from the memo
    assert memoized.memo.hits > memoized.memo.misses > 0


def test_what_the_template_reads_keys_the_memo() -> None:
    memoized, alone = Templates(), _alone()
    sample = sample_contexts()[0]
    first = _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, 1))
    _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, 2))
    assert (memoized.memo.hits, memoized.memo.misses) == (1, 1)
    # a trait the template does not read, another date (it does not show `now`): the same content
    _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, 3, {"vip": True},
                                                 date=datetime(2026, 3, 3, tzinfo=UTC)))
    assert memoized.memo.hits == 2
    # the first name is read
    other = _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, 4, {"first_name": "Zoé"}))
    assert memoized.memo.misses == 2
    assert b"Zo=C3=A9" in other and b"Zo=C3=A9" not in first


_LINKS_TEMPLATE = """---
subject: {{ customer.first_name }}, links
---
{% extends "_base.mjml" %}
{% block content %}
<mj-section><mj-column>
<mj-text>
LINES
</mj-text>
</mj-column></mj-section>
{% endblock %}
"""
# uses that keep each link's token whole: the memo puts the send's own tokens in
_KEPT = """<p>As text: {{ links.cart }}; {{ links.cart[:20] }}; {{ links.cart|length }}.</p>
<p>{{ links.cart|truncate(300) }}</p>
<p>Encoded: {{ links.preferences|urlencode }}; {{ links.cart|replace("https", "http") }}.</p>
<p>{% if links.unsubscribe|length > 60 %}long{% else %}short{% endif %}</p>
<p><a href="{{ track('https://shop.example/guide?a=1', 'guide') }}">guide</a></p>"""
# uses that change a token: those emails are rendered with their own links
_CHANGED = ["{{ links.cart[:30] }}", "{{ links.unsubscribe[-5:] }}", "{{ links.cart|upper }}",
            "{{ links.unsubscribe|lower }}", "{{ ('See ' ~ links.shop)|wordwrap(20) }}",
            "{{ track(links.cart ~ 'x') }}", "{{ links.cart|replace('z', 'a') }}"]


def _write(tmp_path: Path, name: str, source: str, locale: str = "fr") -> None:
    folder = tmp_path / "templates" / locale
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.mjml").write_text(source, encoding="utf-8")


def test_links_used_in_any_way_give_the_email_its_own_links_give(tmp_path: Path) -> None:
    _write(tmp_path, "kept", _LINKS_TEMPLATE.replace("LINES", _KEPT))
    memoized, alone = Templates(tmp_path), _alone(tmp_path)
    for send in (101, 202, 303):
        _same_with_or_without(memoized, alone, _spec("kept", sample_contexts()[0], send))
    assert (memoized.memo.hits, memoized.memo.misses) == (2, 1)
    assert None not in memoized.memo._entries.values()


@pytest.mark.parametrize("line", _CHANGED)
def test_a_link_changed_by_the_template_gives_the_email_its_own_links_give(tmp_path: Path, line: str) -> None:
    _write(tmp_path, "changed", _LINKS_TEMPLATE.replace("LINES", f"{_KEPT}<p>{line}</p>"))
    memoized, alone = Templates(tmp_path), _alone(tmp_path)
    for send in (101, 202, 303):
        _same_with_or_without(memoized, alone, _spec("changed", sample_contexts()[0], send))
    assert list(memoized.memo._entries.values()) == [None]  # nothing kept of that content


@pytest.mark.parametrize("line", [
    "{{ customer.email }}",
    "{{ customer['email'] }}",
    "{{ customer.get('email') }}",
    "{% for key, value in customer.items() %}{{ value }} {% endfor %}",
    "{{ customer|tojson }}",
    "{% set who = customer %}{{ who.email }}",
    "{{ now }}",
    "{% include ('_' ~ 'greeting.mjml') %}",
])
def test_a_template_that_shows_the_customers_own_data_gets_it(tmp_path: Path, line: str) -> None:
    _write(tmp_path, "mine", "---\nsubject: Yours\n---\n{% extends \"_base.mjml\" %}{% block content %}"
                             f"<mj-section><mj-column><mj-text>{line}</mj-text></mj-column></mj-section>"
                             "{% endblock %}\n")
    (tmp_path / "templates" / "_greeting.mjml").write_text("{{ customer.email }}", encoding="utf-8")
    memoized, alone = Templates(tmp_path), _alone(tmp_path)
    sample = sample_contexts()[0]
    messages = [_same_with_or_without(memoized, alone,
                                      _spec("mine", sample, send, date=datetime(2026, 3, send, tzinfo=UTC)))
                for send in (1, 2, 3)]
    assert memoized.memo.hits == 0
    assert len(set(messages)) == 3


def test_values_that_render_differently_are_told_apart(tmp_path: Path) -> None:
    _write(tmp_path, "typed", "---\nsubject: Typed\n---\n{% extends \"_base.mjml\" %}{% block content %}"
                              "<mj-section><mj-column><mj-text>{{ context.value }} {{ context.at }}</mj-text>"
                              "</mj-column></mj-section>{% endblock %}\n")
    memoized, alone = Templates(tmp_path), _alone(tmp_path)
    sample = sample_contexts()[0]
    values: list[Any] = [1, 1.0, True, "1", Decimal("1.0"), Decimal("1.00"), [1], (1,)]
    ats: list[Any] = [datetime(2026, 3, 2, 12, tzinfo=UTC), datetime.fromisoformat("2026-03-02T13:00:00+01:00")]
    for send, (value, at) in enumerate([(v, ats[0]) for v in values] + [(1, at) for at in ats], start=1):
        spec = _spec("typed", sample, send)
        spec.context.update({"value": value, "at": at})
        _same_with_or_without(memoized, alone, spec)
    assert memoized.memo.hits == 1  # only the second (1, 12:00 UTC)


def test_a_value_of_another_type_is_rendered_each_time(tmp_path: Path) -> None:
    _write(tmp_path, "odd", "---\nsubject: Odd\n---\n{% extends \"_base.mjml\" %}{% block content %}"
                            "<mj-section><mj-column><mj-text>{{ context.thing }}</mj-text>"
                            "</mj-column></mj-section>{% endblock %}\n")
    memoized, alone = Templates(tmp_path), _alone(tmp_path)

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    for send in (1, 2):
        spec = _spec("odd", sample_contexts()[0], send)
        spec.context["thing"] = Thing()
        assert b"a thing" in _same_with_or_without(memoized, alone, spec)
    assert memoized.memo.hits == memoized.memo.misses == 0


def test_an_ab_subject_line_is_part_of_the_content() -> None:
    memoized, alone = Templates(), _alone()
    sample = sample_contexts()[0]
    subjects = set()
    for send, variant in ((1, "A {{ customer.first_name }}"), (2, "B {{ customer.first_name }}"),
                          (3, "A {{ customer.first_name }}"), (4, "A {{ customer.email }}")):
        spec = _spec("prospect_welcome_1", sample, send)
        spec.extras["variant"] = {"name": "x", "subject": variant}
        message = _same_with_or_without(memoized, alone, spec)
        subjects.add(next(line for line in message.split(b"\r\n") if line.startswith(b"Subject:")))
    assert subjects == {b"Subject: A Ana", b"Subject: B Ana", b"Subject: A customer4@example.com"}
    assert memoized.memo.hits == 1


def test_template_errors_are_those_of_the_email_itself(tmp_path: Path) -> None:
    _write(tmp_path, "broken", "---\nsubject: Broken\n---\n{% extends \"_base.mjml\" %}{% block content %}"
                               "{{ context.missing_key }}{% endblock %}\n")
    memoized, alone = Templates(tmp_path), _alone(tmp_path)
    spec = _spec("broken", sample_contexts()[0], 1)
    errors = []
    for templates in (memoized, alone):
        with pytest.raises(Exception) as caught:
            compose_wire(SETTINGS, KEYS, templates, spec)
        errors.append((type(caught.value), str(caught.value)))
    assert errors[0] == errors[1] and "missing_key" in errors[0][1]


def test_the_memo_keeps_at_most_its_size() -> None:
    templates = Templates()
    templates.memo = SendMemo(size=2)
    sample = sample_contexts()[0]
    for send, name in enumerate(("Ana", "Bo", "Cy", "Cy"), start=1):
        compose_wire(SETTINGS, KEYS, templates, _spec("prospect_welcome_1", sample, send, {"first_name": name}))
    assert len(templates.memo._entries) == 2 and templates.memo.hits == 1


def test_reads_follow_every_template_used() -> None:
    env = SandboxedEnvironment()
    sources = {
        "entry": '{% extends "base" %}{% import "parts" as p with context %}{{ customer.first_name }}'
                 '{{ p.x() }}{{ coupon is defined }}{{ customer["locale"] }}',
        "base": "{{ shop.name }}{% include ['a', 'b'] %}",
        "parts": "{% macro x() %}{{ context|tojson }}{% endmacro %}",
        "a": "{{ customer.last_name }}",
    }
    reads = reads_of_templates(env, ["entry", "missing"], sources.get)
    assert reads is not None
    assert reads.variables["customer"] == frozenset({"first_name", "locale", "last_name"})
    assert reads.variables["shop"] == frozenset({"name"})
    assert reads.variables["context"] is None and reads.variables["coupon"] is None
    assert reads_of_templates(env, ["dynamic"], {"dynamic": "{% include name %}"}.get) is None
    subject = reads_of_source(env, "{{ customer.get('first_name') }}")
    assert subject is not None and subject.variables["customer"] is None
    assert reads_of_source(env, "{% include 'a' %}") is None


def test_a_template_whose_emails_do_not_repeat_is_rendered_once_an_email() -> None:
    memoized, alone = Templates(), _alone()
    sample = sample_contexts()[0]
    for send in range(100, 164):
        _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, send, {"first_name": f"N{send}"}))
    # 31 misses kept to learn it, then one miss in 16 (the 32nd, 48th, 64th)
    assert memoized.memo.misses == 64 and len(memoized.memo._entries) == 31 + 3
    # a content that repeats is still found
    _same_with_or_without(memoized, alone, _spec("prospect_welcome_1", sample, 200, {"first_name": "N147"}))
    assert memoized.memo.hits == 1
