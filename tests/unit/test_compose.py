"""compose_email: a multipart/alternative email in the customer's language, every link tracked but unsubscribe."""

from __future__ import annotations

import binascii
import email
import email.policy
import hashlib
import re
import timeit
from datetime import UTC, datetime
from email.generator import Generator
from email.headerregistry import HeaderRegistry
from email.message import EmailMessage
from email.policy import EmailPolicy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lifecycle.settings import Settings
from lifecycle.smtp_data import to_wire_form
from lifecycle.templates import TemplateError, Templates
from lifecycle.tokens import SigningKeys, confirm_url, read_confirm_token, unsubscribe_url
from lifecycle.tracking import open_pixel_url, preferences_url, read_click_token
from services.dispatcher import compose as compose_module
from services.dispatcher.compose import ComposedEmail, MessageSpec, compose_email, compose_wire, message_bytes

SETTINGS = Settings(shop_name="Maison Lin", shop_url="https://shop.example", public_url="https://t.shop.example",
                    mail_from="Maison Lin <hello@shop.example>", shop_logo_url="https://shop.example/logo.png",
                    signing_secret="test-secret", default_locale="fr")
KEYS = SigningKeys.from_settings(SETTINGS)
TEMPLATES = Templates()
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
CART = {"cart_id": "k1", "currency": "EUR", "value": 59.0,
        "items": [{"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0}]}
CLICK = re.compile(r"https://t\.shop\.example/t/c/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


def spec(template: str = "abandoned_cart_1", journey: str = "abandoned_cart", step: int = 1,
         customer: dict[str, Any] | None = None, context: dict[str, Any] | None = None,
         extras: dict[str, Any] | None = None) -> MessageSpec:
    return MessageSpec(
        journey=journey, step=step, template=template, message_id="<7.1.abc@shop.example>",
        to_address="ana@example.com",
        customer={"customer_id": "c1", "first_name": "Ana", **(customer or {})},
        context=CART if context is None else context, extras=extras or {}, date=NOW,
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    plain = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert plain is not None and html is not None
    return str(plain.get_content()), str(html.get_content())


def reparsed(composed: ComposedEmail) -> EmailMessage:
    """The message as a receiver parses it from the bytes stored in `sends.message`."""
    parsed = email.message_from_bytes(bytes(composed.message), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def test_a_multipart_alternative_email_text_then_html_in_utf8() -> None:
    message = reparsed(compose_email(SETTINGS, KEYS, TEMPLATES, spec()))
    assert message.get_content_type() == "multipart/alternative"
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"]
    for part in message.iter_parts():
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
    text, html = parts(message)
    assert "Linen shirt" in text and "Linen shirt" in html
    assert "Bonjour Ana," in text and "59,00\u00a0€" in text
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert all(len(line) <= 78 for line in bytes(message.get_body(("html",)) or b"").splitlines()[4:])


def test_headers() -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec())
    message = reparsed(composed)
    unsubscribe = unsubscribe_url(SETTINGS, KEYS, "c1", "<7.1.abc@shop.example>")
    assert message["From"] == "Maison Lin <hello@shop.example>"
    assert message["To"] == "ana@example.com"
    assert message["Subject"] == "Ana, votre panier vous attend"
    assert message["Date"] == "Mon, 02 Mar 2026 09:00:00 +0000"
    assert message["Message-ID"] == "<7.1.abc@shop.example>"
    assert message["X-Lifecycle-Journey"] == "abandoned_cart" and message["X-Lifecycle-Step"] == "1"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["Content-Language"] == "fr"
    assert message["MIME-Version"] == "1.0"
    # on one line as it is, never an encoded word: mail providers read it raw
    assert f"\nList-Unsubscribe: <{unsubscribe}>\n".encode() in bytes(composed.message)


@pytest.mark.parametrize(("template", "journey", "locale"), [
    ("abandoned_cart_1", "abandoned_cart", "fr"), ("win_back_2", "win_back", "en"),
    ("black_friday", "campaign:black-friday-2026", "fr"), ("summer_sales", "campaign:summer", "en")])
def test_the_footer_of_a_marketing_email_shows_the_postal_address(template: str, journey: str, locale: str) -> None:
    address = "Maison Lin, 3 quai Voltaire, 75007 Paris, France"
    settings = SETTINGS.model_copy(update={"sender_address": address})
    composed = compose_email(settings, KEYS, TEMPLATES, spec(template, journey, customer={"locale": locale}))
    text, html = parts(reparsed(composed))
    assert f"\n\n{address}\n\n" in text
    assert f">{address}</p>" in html
    # and as the dispatcher writes it to the wire
    wire = compose_wire(settings, KEYS, TEMPLATES, spec(template, journey, customer={"locale": locale}))
    received = email.message_from_bytes(wire.message, policy=email.policy.default)
    assert isinstance(received, EmailMessage)
    assert all(address in part for part in parts(received))


def test_every_link_but_unsubscribe_goes_through_the_click_tracker() -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec())
    text, html = parts(reparsed(composed))
    names = [link["name"] for link in composed.links]
    assert names == ["shop", "product:p1", "cart", "support"]
    assert composed.links[2] == {"name": "cart", "url": "https://shop.example/cart"}
    tracked = CLICK.findall(html)
    assert tracked and set(CLICK.findall(text)) <= set(tracked)
    for url in tracked:
        claim = read_click_token(KEYS, url.rsplit("/", 1)[1])
        assert claim.message_id == "<7.1.abc@shop.example>" and claim.customer_id == "c1"
        assert claim.link_index is not None and 0 <= claim.link_index < len(composed.links)
    assert {read_click_token(KEYS, u.rsplit("/", 1)[1]).link_index for u in tracked} == set(range(len(names)))
    hrefs = re.findall(r'href="([^"]+)"', html)
    untracked = [h for h in hrefs if not CLICK.fullmatch(h)]
    assert sorted(untracked) == sorted([unsubscribe_url(SETTINGS, KEYS, "c1", "<7.1.abc@shop.example>"),
                                        preferences_url(SETTINGS, KEYS, "c1", "<7.1.abc@shop.example>")])
    assert unsubscribe_url(SETTINGS, KEYS, "c1", "<7.1.abc@shop.example>") in text
    assert "shop.example/cart" not in html  # the target is only in the stored links


def test_the_open_pixel_ends_the_html() -> None:
    _, html = parts(reparsed(compose_email(SETTINGS, KEYS, TEMPLATES, spec())))
    pixel = open_pixel_url(SETTINGS, KEYS, "<7.1.abc@shop.example>", "c1")
    assert f'<img src="{pixel}" width="1" height="1"' in html
    assert html.rstrip().endswith("</body></html>") and html.index(pixel) > html.index("Me désinscrire")


def test_the_confirm_link_is_not_tracked() -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec("double_opt_in_1", "double_opt_in", context={}))
    text, html = parts(reparsed(composed))
    confirm = confirm_url(SETTINGS, KEYS, "c1", "ana@example.com")  # bound to the recipient's address
    assert f'href="{confirm}"' in html and confirm in text
    assert all(link["url"] != confirm for link in composed.links)
    claim = read_confirm_token(KEYS, confirm.rsplit("/", 1)[1])
    assert (claim.customer_id, claim.email) == ("c1", "ana@example.com")


def test_feedback_links_are_named_for_the_branch_conditions() -> None:
    order = {**CART, "order_id": "o1"}
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec("post_purchase_1", "post_purchase", context=order))
    by_name = {link["name"]: link["url"] for link in composed.links}
    assert by_name["satisfied"] == "https://shop.example/feedback?answer=satisfied"
    assert by_name["not_satisfied"] == "https://shop.example/feedback?answer=not_satisfied"


@pytest.mark.parametrize(("locale", "language", "subject"), [
    (None, "fr", "Ana, votre panier vous attend"),
    ("en", "en", "Ana, your cart is waiting for you"),
    ("en-GB", "en", "Ana, your cart is waiting for you"),
    ("de", "fr", "Ana, votre panier vous attend"),
])
def test_the_customers_locale_picks_the_language(locale: str | None, language: str, subject: str) -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec(customer={"locale": locale} if locale else {}))
    assert composed.locale == language
    assert composed.message["Subject"] == subject and composed.message["Content-Language"] == language


def test_the_default_locale_setting() -> None:
    english = SETTINGS.model_copy(update={"default_locale": "en"})
    assert compose_email(english, KEYS, TEMPLATES, spec(customer={"locale": "de"})).locale == "en"


def test_coupon_in_the_customers_language_and_time_zone() -> None:
    coupon = {"code": "AC-7K2Q9", "kind": "percent", "amount": 10.0, "currency": "EUR",
              "expires_at": datetime(2026, 3, 5, 23, 59, 59, tzinfo=UTC)}
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec(
        "abandoned_cart_3", step=3, customer={"locale": "en-US", "timezone": "America/Los_Angeles"},
        extras={"coupon": coupon, "offer": {"percent": 10.0}, "tier": "bronze"}))
    text, html = parts(reparsed(composed))
    assert "AC-7K2Q9" in composed.message["Subject"] and "AC-7K2Q9" in text and "AC-7K2Q9" in html
    assert "March 5, 2026, 3:59\u202fPM" in text


def test_recommendations_link_to_their_products() -> None:
    products = [{"product_id": "p7", "name": "Silk tie", "price": 35.0, "currency": "EUR",
                 "url": "https://shop.example/products/p7", "image_url": "https://cdn.example/p7.jpg"}]
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec("win_back_2", "win_back", 2, context={"to": "at_risk"},
                                                       extras={"recommendations": products}))
    text, html = parts(reparsed(composed))
    assert "Silk tie" in text and 'src="https://cdn.example/p7.jpg"' in html
    assert {"name": "product:p7", "url": "https://shop.example/products/p7"} in composed.links


def test_a_variant_subject_is_rendered_with_the_same_context() -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec(
        customer={"first_name": None, "locale": "fr"},
        extras={"variant": {"name": "b", "subject": "{{ customer.first_name or 'Hé' }}, {{ 12.5|money('EUR') }}"}}))
    assert composed.message["Subject"] == "Hé, 12,50\u00a0€"


def test_a_missing_first_name_gives_a_friendly_greeting() -> None:
    composed = compose_email(SETTINGS, KEYS, TEMPLATES, spec(customer={"first_name": None, "locale": "en"}))
    text, _ = parts(reparsed(composed))
    assert composed.message["Subject"] == "Your cart is waiting for you" and text.count("Hello,") == 1


def test_a_template_error_is_a_template_error() -> None:
    with pytest.raises(TemplateError) as caught:
        compose_email(SETTINGS, KEYS, TEMPLATES, spec(context={"cart_id": "k1"}))
    assert caught.value.path.name == "_components.mjml"  # where the items are read
    assert "'items' is undefined (keys here: cart_id)" in caught.value.message
    assert re.search(r"used from abandoned_cart_1\.mjml:\d+", caught.value.message)


def test_compose_takes_a_few_milliseconds() -> None:
    compose_email(SETTINGS, KEYS, TEMPLATES, spec())  # compiled once per process
    seconds = min(timeit.repeat(lambda: compose_email(SETTINGS, KEYS, TEMPLATES, spec()), number=20, repeat=3)) / 20
    assert seconds < 0.05, f"compose took {seconds * 1000:.1f} ms"  # ~3 ms on the project's machine


def _message_id(settings: Settings) -> str:
    from sqlalchemy.ext.asyncio import create_async_engine

    from lifecycle.clock import ManualClock
    from lifecycle.journey_catalog import JourneyCatalog
    from services.dispatcher.rendering import Renderer
    from services.dispatcher.worker import DispatcherStore

    # the engine is never connected: naming a message reads no table
    renderer = Renderer(settings, workers=0, templates=TEMPLATES)
    store = DispatcherStore(settings, create_async_engine(settings.database_url), ManualClock(NOW),
                            JourneyCatalog(TEMPLATES), renderer)
    return store._message_id(41, 2)


def test_message_ids_are_unchanged_for_an_install_with_only_the_signing_secret() -> None:
    digest = hashlib.sha256(b"test-secret:41:2").hexdigest()[:16]
    assert _message_id(SETTINGS) == f"<41.2.{digest}@shop.example>"
    rotated = SETTINGS.model_copy(update={"signing_keys": "k2:new-secret"})
    assert _message_id(rotated) == f"<41.2.{hashlib.sha256(b'new-secret:41:2').hexdigest()[:16]}@shop.example>"


class _ParsingPolicy(compose_module._MailPolicy):
    """The composer's policy with every header parsed, as the email package does by default."""

    def header_store_parse(self, name: str, value: str) -> tuple[str, str]:
        return EmailPolicy.header_store_parse(self, name, value)


@pytest.mark.parametrize("settings", [
    SETTINGS,
    SETTINGS.model_copy(update={"mail_from": "Café \"Lin\", Paris <hello@shop.example>", "shop_name": "Café Lin"}),
    SETTINGS.model_copy(update={"mail_from": "hello@shop.example", "default_locale": "en"}),
])
def test_headers_kept_as_given_are_the_bytes_the_parsing_policy_writes(settings: Settings,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path of the composer's policy (short ASCII headers stored unparsed, MIME headers parsed once)
    writes exactly what parsing every header writes, for names, addresses and subjects of every kind."""
    monkeypatch.setattr(Generator, "_make_boundary", classmethod(lambda cls, text=None: "==BOUNDARY=="))
    specs = [
        spec(),
        spec(customer={"locale": "en", "first_name": "Zoë"}),
        spec(customer={"first_name": "A" * 90}),
        spec(customer={"first_name": "Ana  Maria "}),
        spec(extras={"variant": {"name": "b", "subject": "Plain ASCII subject, exactly as typed (v2)"}}),
        spec(extras={"variant": {"name": "b", "subject": "x" * 70}}),
        spec(extras={"variant": {"name": "b", "subject": "=?utf-8?q?not_an_encoded_word?= [tag]: a;b <c>"}}),
        spec(extras={"variant": {"name": "b", "subject": "Soldes d'été : -20 % 🎉"}}),
        spec("abandoned_cart_3", step=3, extras={"coupon": {
            "code": "AC-7K2Q9", "kind": "percent", "amount": 10.0, "currency": "EUR",
            "expires_at": datetime(2026, 3, 5, 23, 59, 59, tzinfo=UTC)}, "offer": {"percent": 10.0}}),
    ]
    specs += [MessageSpec(**{**s.__dict__, "to_address": address})
              for s, address in zip(specs[:3], ["ana.o'neil+tag@example.com", "zoë@exämple.com",
                                                "\"very unusual\"@example.com"], strict=True)]
    for one in specs:
        fast = message_bytes(compose_email(settings, KEYS, TEMPLATES, one).message)
        monkeypatch.setattr(compose_module, "_POLICY", _ParsingPolicy(header_factory=HeaderRegistry()))
        parsed_everywhere = bytes(compose_email(settings, KEYS, TEMPLATES, one).message)
        monkeypatch.undo()
        # the fast path: headers kept as given, repeated headers folded once, the message written
        # directly; the reference: every header parsed, the standard generator
        assert fast == parsed_everywhere


def test_every_shipped_template_is_written_as_the_standard_generator_writes_it() -> None:
    """Both of the composer's ways of writing an email, for every shipped template and locale: the
    EmailMessage written directly (`message_bytes`), and the wire form written without one."""
    written = 0
    for name in TEMPLATES.names():
        for locale in TEMPLATES.locales(name):
            one = spec(name, customer={"locale": locale, "first_name": "Zoë"}, extras={
                "coupon": {"code": "AC-7K2Q9", "kind": "percent", "amount": 10.0, "currency": "EUR",
                           "expires_at": datetime(2026, 3, 5, 23, 59, 59, tzinfo=UTC)},
                "offer": {"percent": 10.0}})
            try:
                message = compose_email(SETTINGS, KEYS, TEMPLATES, one).message
            except TemplateError:
                continue  # a template this context does not suit; the others are enough
            assert message_bytes(message) == bytes(message), (name, locale)
            _same_as_the_email_package(SETTINGS, one)
            written += 1
    assert written >= 20


def test_the_boundary_is_the_generators_form_and_stable_per_message() -> None:
    first = compose_email(SETTINGS, KEYS, TEMPLATES, spec()).message
    again = compose_email(SETTINGS, KEYS, TEMPLATES, spec()).message
    other = compose_email(SETTINGS, KEYS, TEMPLATES, MessageSpec(**{**spec().__dict__,
                                                                   "message_id": "<8.1.abc@shop.example>"})).message
    assert re.fullmatch(r"={15}\d{19}==", first.get_boundary() or "")
    assert first.get_boundary() == again.get_boundary() != other.get_boundary()
    body = message_bytes(first).decode("ascii")
    assert body.count(f"--{first.get_boundary()}") == 3  # two parts and the end: never inside a part


def test_a_message_of_another_shape_is_left_to_the_generator() -> None:
    message = EmailMessage()
    message["Subject"] = "plain"
    message.set_content("one part\r\nwith a carriage return\n")
    assert message_bytes(message) == bytes(message)


def _same_as_the_email_package(settings: Settings, one: MessageSpec) -> None:
    wire = compose_wire(settings, KEYS, TEMPLATES, one)
    composed = compose_email(settings, KEYS, TEMPLATES, one)
    assert wire.message == to_wire_form(message_bytes(composed.message))
    assert wire.subject == str(composed.message["Subject"])
    assert (wire.links, wire.locale) == (composed.links, composed.locale)


@pytest.mark.parametrize("settings", [
    SETTINGS,
    SETTINGS.model_copy(update={"mail_from": "Café \"Lin\", Paris <hello@shop.example>", "shop_name": "Café Lin"}),
    SETTINGS.model_copy(update={"mail_from": "hello@shop.example", "default_locale": "en"}),
])
@pytest.mark.parametrize("one", [
    spec(),
    spec(customer={"locale": "en", "first_name": "Zoë"}),
    spec(customer={"first_name": "A" * 90}),
    spec(customer={"first_name": "Ana  Maria "}),
    spec(customer={"first_name": "Ana\r\nMaria"}),  # a carriage return in the content: the generator writes it
    spec(extras={"variant": {"name": "b", "subject": "x" * 70}}),
    spec(extras={"variant": {"name": "b", "subject": "=?utf-8?q?not_an_encoded_word?= [tag]: a;b <c>"}}),
    spec(extras={"variant": {"name": "b", "subject": "Soldes d'été : -20 % 🎉"}}),
    MessageSpec(**{**spec().__dict__, "to_address": "ana.o'neil+tag@example.com"}),
    MessageSpec(**{**spec().__dict__, "to_address": "zoë@exämple.com"}),
    MessageSpec(**{**spec().__dict__, "to_address": "\"very unusual\"@example.com"}),
    MessageSpec(**{**spec().__dict__, "to_address": "a@" + "b" * 80 + ".example"}),
    MessageSpec(**{**spec().__dict__, "message_id": "<x y@shop.example>"}),
], ids=lambda one: "")
def test_the_wire_form_is_written_as_the_email_package_writes_it(settings: Settings, one: MessageSpec) -> None:
    _same_as_the_email_package(settings, one)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(st.text(st.sampled_from(list("ab =\t.\u00e9\u20ac\U0001f389-")), max_size=90), max_size=8),
       end=st.sampled_from(["", "\n", "\r\n", " "]))
def test_quoted_printable_line_by_line_is_the_encoding_of_the_whole(lines: list[str], end: str) -> None:
    content = "\n".join(lines) + end
    for _ in range(2):  # the second time from the lines kept
        assert compose_module._quoted_printable(content) == binascii.b2a_qp(content.encode("utf-8"), istext=True)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.text(st.sampled_from(list("ab =\t.>\u00e9\U0001f389-")), min_size=900, max_size=3000)
                      | st.text(st.sampled_from(list("a>= .")), max_size=90), min_size=1, max_size=4),
       end=st.sampled_from(["", "\n", " "]))
def test_a_long_line_is_encoded_in_pieces_that_decode_to_it(lines: list[str], end: str) -> None:
    content = "\n".join(lines) + end
    for _ in range(2):  # the second time from the pieces kept
        encoded = compose_module._quoted_printable(content)
        assert binascii.a2b_qp(encoded) == content.encode("utf-8")
        for line in encoded.split(b"\n"):
            # RFC 2045 6.7: 76 with a soft break's "="; binascii itself writes up to 78 when it encodes
            # a space at a line's end after the line is full, which a piece's end never adds to
            assert len(line) <= 76 or (line.endswith((b"=20", b"=09")) and len(line) <= 78)
            assert line[-1:] not in (b" ", b"\t")  # nothing a relay may strip


def test_the_inlined_html_body_is_encoded_in_pieces_and_decodes_to_it() -> None:
    settings = SETTINGS
    first, second = spec(), MessageSpec(**{**spec().__dict__, "message_id": "<8.1.abc@shop.example>",
                                              "customer": {"customer_id": "c2", "first_name": "Bo"}})
    for one in (first, second):
        message = email.message_from_bytes(compose_wire(settings, KEYS, TEMPLATES, one).message,
                                           policy=email.policy.default)
        _, html = parts(message)
        assert max(len(line) for line in html.split("\n")) > 1000  # the case this is for
        raw = message.get_body(preferencelist=("html",))
        assert raw is not None
        assert all(len(line) <= 76 for line in str(raw.get_payload()).splitlines())
        assert html.replace("\r\n", "\n") == compose_module._render(settings, KEYS, TEMPLATES, one).html


@settings(max_examples=300, deadline=None)
@given(data=st.data(), name=st.sampled_from(["To", "Message-ID", "Date", "Subject", "X-Lifecycle-Journey",
                                             "List-Unsubscribe"]))
def test_a_header_written_as_given_is_what_the_parsing_policy_writes(data: st.DataObject, name: str) -> None:
    dot_atom = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,12}){0,3}"
    plain = {
        "To": st.from_regex(f"{dot_atom}@{dot_atom}", fullmatch=True),
        "Message-ID": st.from_regex(f"<{dot_atom}@{dot_atom}>", fullmatch=True),
        "Date": st.one_of(st.datetimes(timezones=st.sampled_from([UTC, None])).map(email.utils.format_datetime),
                          st.sampled_from(["Tue, 01 Jan 2001 00:00:00 +0000", "Mon, 01 Jan 0001 00:00:00 +0000"])),
    }.get(name, st.nothing())
    value = data.draw(st.one_of(plain, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=120)))
    if not compose_module._as_given(name, value):
        return
    parsing = _ParsingPolicy(header_factory=HeaderRegistry())
    name_, stored = parsing.header_store_parse(name, value)
    assert compose_module._POLICY.fold_binary(name_, stored) == f"{name}: {value}\n".encode("ascii")
    assert str(stored) == value


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(["Subject", "To", "From", "Message-ID", "Date", "X-Lifecycle-Journey", "Reply-To",
                             "List-Unsubscribe-Post", "Comments"]),
       value=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_any_ascii_header_is_written_as_the_parsing_policy_writes_it(name: str, value: str) -> None:
    fast, parsing = compose_module._POLICY, _ParsingPolicy(header_factory=HeaderRegistry())
    try:
        expected = parsing.fold_binary(*parsing.header_store_parse(name, value))
    except Exception:  # what the parser refuses is not the fast path's concern, as long as it refuses too
        return
    assert fast.fold_binary(*fast.header_store_parse(name, value)) == expected
