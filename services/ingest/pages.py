"""The pages behind the links in emails: unsubscribe, email preferences, double opt-in.

Rules every page follows:

* A GET never changes anything (link scanners and mail previews follow links); only a
  POST, from a button on the page or a mail client's RFC 8058 one-click, acts.
* The signed token in the path is the authorisation and the only secret: a forged or
  altered token is refused (400 garbled, 403 bad signature or wrong purpose) before
  anything else happens. Pages are never framed, cached or given a Referer to leak it.
* Every POST is a new event with a fresh event id: unsubscribing, re-subscribing in the
  shop, then unsubscribing again from the same email must not be dropped as a duplicate.
  Repeating a POST stays harmless because each effect is idempotent (opted out twice is
  opted out; the same preferences saved twice are those preferences).
* French by default, English too: the customer's stored locale decides, `?lang=` (or the
  form's `lang` field) overrides it. A page for someone we cannot identify (a refused
  token, a one-click POST from a mail client for an unknown customer) is bilingual.
* Small, self-contained HTML: inline CSS, no script, no external asset.
* Rate limited per client address and per token (LIFECYCLE_PAGE_LIMIT_PER_*): beyond, a
  bilingual `429` page with Retry-After, before any lookup or publishing.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Final, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.exc import SQLAlchemyError

from lifecycle.clock import Clock
from lifecycle.events import EMAIL_CATEGORIES, EmailCategory, Event, EventInvalid, EventType, parse_event
from lifecycle.settings import Settings
from lifecycle.tokens import (
    TOKEN_SCHEMA,
    ConfirmClaim,
    InvalidToken,
    MalformedToken,
    OutdatedToken,
    SigningKeys,
    UnsubscribeClaim,
    read_confirm_token,
    read_unsubscribe_token,
)
from services.ingest.ratelimit import RateLimiter, client_address, token_key

log = logging.getLogger(__name__)

# The signed token of a link in an email, as the OpenAPI document describes it.
LinkToken = Annotated[str, Path(description="The link's signed token", json_schema_extra=TOKEN_SCHEMA)]

Lang = Literal["fr", "en"]
LANGS: Final[tuple[Lang, ...]] = ("fr", "en")
FALLBACK_LANG: Final[Lang] = "fr"
RETRY_AFTER_SECONDS: Final = 5
# A form from these pages is a few hundred bytes; anything bigger is not one of ours.
MAX_FORM_BYTES: Final = 16 * 1024
# The customer lookup only picks a language: never let a slow database hold the page.
LOOKUP_TIMEOUT_SECONDS: Final = 2.0

# No script, no external asset, no framing (the one-click button must not be clickjacked),
# forms only to ourselves, and no Referer carrying the token to the shop's site.
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class PublishFailed(Exception):
    """Kafka did not acknowledge the events in time; nothing can be promised."""


class _LookupFailed(Exception):
    """The customer store did not answer (or none is configured)."""


class Publish(Protocol):
    """The ingest API's one publish path (metrics, timeout); raises PublishFailed."""

    def __call__(self, events: Sequence[Event], /, *, timeout: float | None = None) -> Awaitable[None]: ...


class CustomerReader(Protocol):
    """Looks a customer up for `GET /v1/customers/{id}`; None when unknown."""

    # A plain (not async) signature so both `async def` readers and
    # `Callable[[str], Awaitable[...]]` values satisfy it.
    def __call__(self, customer_id: str, /) -> Awaitable[dict[str, object] | None]: ...


# --- words --------------------------------------------------------------------------------

# French "e-mail" uses a non-breaking hyphen (\u2011) so a narrow screen never splits it.
TEXTS: Final[Mapping[Lang, Mapping[str, str]]] = {
    "fr": {
        "switch": "English",
        "invalid_title": "Lien invalide",
        "invalid_damaged": "Ce lien est incomplet ou abîmé. Copiez-le en entier depuis l’e\u2011mail.",
        "invalid_forged": "Ce lien n’est pas valide.",
        "invalid_outdated": "Ce lien n’est plus valide. Utilisez celui de l’e\u2011mail le plus récent.",
        "other_address_title": "Lien pour une autre adresse",
        "other_address": "Ce lien a été envoyé à une autre adresse que celle de votre compte. "
        "Confirmez depuis l’e\u2011mail le plus récent.",
        "retry_title": "Veuillez réessayer",
        "retry": "Votre demande n’a pas pu être enregistrée pour le moment. Réessayez dans une minute.",
        "limited_title": "Trop de demandes",
        "limited": "Cette page a été demandée trop souvent en peu de temps. Réessayez dans une minute.",
        "bad_form_title": "Formulaire incomplet",
        "bad_form": "Ce formulaire n’a pas pu être lu. Revenez à la page des préférences et réessayez.",
        "unsub_title": "Se désinscrire",
        "unsub_question": "Vous ne recevrez plus aucun e\u2011mail marketing de {shop}.",
        "unsub_note": "Les e\u2011mails liés à vos commandes (confirmation, livraison) continuent d’arriver.",
        "unsub_button": "Me désinscrire",
        "unsub_fewer": "Vous préférez en recevoir moins ?",
        "unsub_fewer_link": "Choisir les e\u2011mails que je reçois",
        "unsub_done_title": "Vous êtes désinscrit(e).",
        "unsub_done": "Vous ne recevrez plus ces e\u2011mails.",
        "back_to_shop": "Retour sur {shop}",
        "prefs_title": "Vos préférences e\u2011mail",
        "prefs_intro": "Choisissez les e\u2011mails que vous souhaitez recevoir de {shop}.",
        "prefs_legend": "Je souhaite recevoir :",
        "prefs_opted_out": "Vous êtes actuellement désinscrit(e) de tous nos e\u2011mails marketing.",
        "prefs_save": "Enregistrer mes préférences",
        "prefs_all_title": "Ne plus rien recevoir",
        "prefs_all": "Vous pouvez aussi vous désinscrire de tous nos e\u2011mails marketing.",
        "prefs_all_button": "Me désinscrire de tout",
        "prefs_done_title": "Vos préférences sont enregistrées.",
        "prefs_done_left": "Vous ne recevrez plus : {categories}.",
        "prefs_done_all": "Vous recevez tous nos e\u2011mails.",
        "prefs_done_none": "Vous ne recevrez plus aucun de ces e\u2011mails.",
        "prefs_change": "Modifier mes préférences",
        "cat_cart_reminders": "Rappels de panier",
        "cat_cart_reminders_hint": "Quand des articles attendent dans votre panier.",
        "cat_offers": "Offres et promotions",
        "cat_offers_hint": "Codes promo, cadeaux d’anniversaire, invitations.",
        "cat_news": "Nouveautés et conseils",
        "cat_news_hint": "Bienvenue, conseils après un achat, nouveautés.",
        "confirm_title": "Confirmez votre inscription",
        "confirm_question": "Souhaitez-vous recevoir les e\u2011mails de {shop} ?",
        "confirm_button": "Oui, je confirme",
        "confirm_done_title": "Votre inscription est confirmée.",
        "confirm_done": "Merci !",
    },
    "en": {
        "switch": "Français",
        "invalid_title": "Invalid link",
        "invalid_damaged": "This link is incomplete or damaged. Copy it whole from the email.",
        "invalid_forged": "This link is not valid.",
        "invalid_outdated": "This link is no longer valid. Use the one in the most recent email.",
        "other_address_title": "Link for another address",
        "other_address": "This link was sent to another address than your account’s. "
        "Confirm from the most recent email.",
        "retry_title": "Please try again",
        "retry": "We could not process your request right now. Please try again in a minute.",
        "limited_title": "Too many requests",
        "limited": "This page was asked for too often in a short time. Please try again in a minute.",
        "bad_form_title": "Incomplete form",
        "bad_form": "This form could not be read. Go back to the preferences page and try again.",
        "unsub_title": "Unsubscribe",
        "unsub_question": "You will no longer receive any marketing email from {shop}.",
        "unsub_note": "Emails about your orders (confirmation, delivery) still arrive.",
        "unsub_button": "Unsubscribe",
        "unsub_fewer": "Would you rather receive fewer?",
        "unsub_fewer_link": "Choose the emails I receive",
        "unsub_done_title": "You are unsubscribed.",
        "unsub_done": "You will not receive these emails any more.",
        "back_to_shop": "Back to {shop}",
        "prefs_title": "Your email preferences",
        "prefs_intro": "Choose the emails you want to receive from {shop}.",
        "prefs_legend": "I want to receive:",
        "prefs_opted_out": "You are currently unsubscribed from all our marketing emails.",
        "prefs_save": "Save my preferences",
        "prefs_all_title": "Receive nothing",
        "prefs_all": "You can also unsubscribe from all our marketing emails.",
        "prefs_all_button": "Unsubscribe from everything",
        "prefs_done_title": "Your preferences are saved.",
        "prefs_done_left": "You will no longer receive: {categories}.",
        "prefs_done_all": "You receive all our emails.",
        "prefs_done_none": "You will not receive any of these emails any more.",
        "prefs_change": "Change my preferences",
        "cat_cart_reminders": "Cart reminders",
        "cat_cart_reminders_hint": "When items are waiting in your cart.",
        "cat_offers": "Offers and promotions",
        "cat_offers_hint": "Promo codes, birthday gifts, invitations.",
        "cat_news": "News and tips",
        "cat_news_hint": "Welcome, tips after a purchase, what is new.",
        "confirm_title": "Confirm your subscription",
        "confirm_question": "Do you want to receive emails from {shop}?",
        "confirm_button": "Yes, confirm",
        "confirm_done_title": "Your subscription is confirmed.",
        "confirm_done": "Thank you!",
    },
}


def lang_of(locale: object) -> Lang | None:
    """The page language for a locale such as fr, fr-FR, en_GB; None when we have no pages in it."""
    if not isinstance(locale, str):
        return None
    primary = re.split(r"[-_]", locale.strip(), maxsplit=1)[0].lower()
    for lang in LANGS:
        if primary == lang:
            return lang
    return None


# --- HTML ---------------------------------------------------------------------------------

_CSS: Final = """
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:#f4f4f6;color:#1d1d24;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:34rem;margin:0 auto;padding:1rem}
.card{background:#fff;border-radius:12px;padding:1.5rem;margin:1rem 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
header{display:flex;justify-content:space-between;align-items:baseline;gap:1rem;margin:1rem 0 0}
.shop{margin:0;font-weight:600;color:#4a4a55}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 .75rem}
h2{font-size:1.125rem;margin:0 0 .5rem}
p{margin:0 0 1rem}
.muted{color:#55555f;font-size:.9375rem}
fieldset{border:0;margin:0 0 1rem;padding:0}
legend{font-weight:600;margin-bottom:.5rem;padding:0}
.choice{display:flex;gap:.75rem;align-items:flex-start;padding:.75rem;border:1px solid #d0d0d8;border-radius:8px;
margin-bottom:.5rem;cursor:pointer}
.choice input{width:1.375rem;height:1.375rem;margin:.125rem 0 0;flex:none;accent-color:#2746b8}
.choice span{display:block}
.choice .hint{color:#55555f;font-size:.875rem}
button{display:block;width:100%;min-height:48px;padding:.75rem 1rem;border:0;border-radius:8px;font:inherit;
font-weight:600;cursor:pointer;background:#2746b8;color:#fff}
button.danger{background:#b3261e}
button.quiet{background:#fff;color:#b3261e;border:2px solid #b3261e}
a{color:#2746b8}
a:focus-visible,button:focus-visible,.choice:focus-within{outline:3px solid #f0a500;outline-offset:2px}
.notice{background:#fff4d6;border-radius:8px;padding:.75rem;margin-bottom:1rem}
.switch{margin:0;font-size:.875rem}
form+section,section+section{border-top:1px solid #e2e2e8;margin-top:1.5rem;padding-top:1.25rem}
@media (prefers-color-scheme:dark){
body{background:#17171c;color:#ececf1}.card{background:#23232b;box-shadow:none}
.shop,.muted,.choice .hint{color:#b9b9c6}.choice{border-color:#45454f}a{color:#9db1ff}
.notice{background:#4a3d12}button.quiet{background:transparent;color:#ff8a80;border-color:#ff8a80}
form+section,section+section{border-top-color:#3a3a44}}
"""


def esc(text: str) -> str:
    return html.escape(text, quote=True)


def _say(lang: Lang, key: str, **values: str) -> str:
    return TEXTS[lang][key].format(**values)


def page(
    lang: Lang | None, title: str, body_html: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """A whole page; `body_html` is already escaped. lang None: the page holds both languages."""
    document = (
        f'<!doctype html><html lang="{lang or FALLBACK_LANG}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body_html}</main></body></html>"
    )
    return HTMLResponse(document, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def message_page(
    lang: Lang | None,
    status: int,
    title_key: str,
    text_key: str,
    *,
    shop: str,
    extra: Callable[[Lang], str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """A title and a sentence, in one language or (lang None) in each, French first."""
    langs: Sequence[Lang] = (lang,) if lang is not None else LANGS
    sections = "".join(
        f'<section lang="{one}"><h1>{esc(_say(one, title_key))}</h1>'
        f"<p>{esc(_say(one, text_key, shop=shop))}</p>{extra(one) if extra else ''}</section>"
        for one in langs
    )
    title = " · ".join(_say(one, title_key) for one in langs)
    return page(lang, title, f'{shop_header(shop)}<div class="card">{sections}</div>', status, headers)


def shop_header(shop: str, extra: str = "") -> str:
    return f'<header><p class="shop">{esc(shop)}</p>{extra}</header>'


def refusal(exc: InvalidToken, shop: str) -> HTMLResponse:
    """The page for a refused token: we cannot trust whose it is, so both languages."""
    if isinstance(exc, MalformedToken):
        return message_page(None, 400, "invalid_title", "invalid_damaged", shop=shop)
    if isinstance(exc, OutdatedToken):
        return message_page(None, 403, "invalid_title", "invalid_outdated", shop=shop)
    return message_page(None, 403, "invalid_title", "invalid_forged", shop=shop)


async def read_form(request: Request) -> dict[str, list[str]] | None:
    """The fields of a url-encoded form body; {} for another body; None if it is too big or garbled.

    RFC 8058 mail clients may post multipart bodies: their only field says nothing the
    token does not, so such bodies are not read at all.
    """
    if not request.headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
        return {}
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        return parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return None


def _field(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


# --- the router -------------------------------------------------------------------------


OpenApiResponses = dict[int | str, dict[str, Any]]


def html_answer(description: str) -> dict[str, Any]:
    """An OpenAPI response that is one of these HTML pages."""
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


# Every answer of the pages, for their OpenAPI `responses=`.
_SHOWN: Final[OpenApiResponses] = {200: html_answer("The page")}
_REFUSED_LINK: Final[OpenApiResponses] = {
    400: html_answer("Garbled link (or, on a POST, a form that is not ours); nothing is recorded"),
    403: html_answer("Forged link, a link of another purpose, or one signed with a retired key"),
    429: html_answer("This address or this link was used too often; retry after Retry-After (bilingual page)"),
}
_NOT_RECORDED: Final[OpenApiResponses] = {
    503: html_answer("Kafka or the customer store is unavailable; retry after Retry-After"),
}


def pages_router(
    settings: Settings,
    keys: SigningKeys,
    clock: Clock,
    publish: Publish,
    customer_reader: CustomerReader | None,
    *,
    new_event_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    monotonic: Callable[[], float] = time.monotonic,
) -> APIRouter:
    """Unsubscribe, preferences and confirmation pages, published through `publish`.

    `new_event_id` names each event a POST publishes (a fresh uuid4 by default); `monotonic`
    is the rate limits' clock.
    """
    router = APIRouter(tags=["links in emails"])
    shop = settings.shop_name
    # Behind a proxy the API may live under a path: forms must post back there.
    prefix = urlsplit(settings.public_url).path.rstrip("/")
    default_lang = lang_of(settings.default_locale) or FALLBACK_LANG
    by_address = RateLimiter(settings.page_limit_per_ip_per_minute, max_keys=settings.rate_limit_max_keys,
                             now=monotonic)
    by_token = RateLimiter(settings.page_limit_per_token_per_minute, max_keys=settings.rate_limit_max_keys,
                           now=monotonic)

    def over_limit(request: Request, token: str) -> HTMLResponse | None:
        """The 429 page when this address or this link was used too often, else None.

        Checked once the token is known good (a forged one costs a MAC and is refused anyway), and
        before any lookup or publishing. The address first: a refusal there spends nothing of the token's.
        """
        verdict = by_address.check(client_address(request))
        if verdict.allowed:
            verdict = by_token.check(token_key(token))
        if verdict.allowed:
            return None
        retry = {"Retry-After": str(max(1, math.ceil(verdict.retry_after)))}
        return message_page(None, 429, "limited_title", "limited", shop=shop, headers=retry)

    async def lookup(customer_id: str) -> dict[str, object] | None:
        """The stored customer (None when unknown); _LookupFailed when the store does not answer."""
        if customer_reader is None:
            raise _LookupFailed("no customer store configured")
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                return await customer_reader(customer_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            raise _LookupFailed(str(exc) or type(exc).__name__) from exc

    async def customer(customer_id: str) -> dict[str, object] | None:
        """The stored customer for what only shapes a page (language, ticks): None when unknown or unreachable."""
        if customer_reader is None:
            return None
        try:
            return await lookup(customer_id)
        except _LookupFailed as exc:
            # Only the language or the ticks depend on it: show the page anyway.
            log.warning("customer lookup for a link page failed: %s", exc)
            return None

    async def lang_for(explicit: str | None, customer_id: str) -> Lang | None:
        chosen = lang_of(explicit)
        if chosen is not None:
            return chosen
        found = await customer(customer_id)
        return lang_of(found.get("locale")) if found is not None else None

    async def customer_and_lang(customer_id: str, explicit: str | None) -> tuple[dict[str, object] | None, Lang]:
        """The customer (None when unknown or the lookup failed) and the language to show them."""
        found = await customer(customer_id)
        return found, lang_of(explicit) or (lang_of(found.get("locale")) if found else None) or default_lang

    def header(lang: Lang) -> str:
        # The shop's name, and a link to the same page in the other language.
        other: Lang = "en" if lang == "fr" else "fr"
        switch = (
            f'<p class="switch"><a href="?lang={other}" hreflang="{other}" lang="{other}">'
            f"{esc(_say(lang, 'switch'))}</a></p>"
        )
        return shop_header(shop, switch)

    def back_to_shop(lang: Lang) -> str:
        words = _say(lang, "back_to_shop", shop=shop)
        return f'<p><a href="{esc(settings.shop_url)}">{esc(words)}</a></p>'

    def retry_page(lang: Lang | None) -> HTMLResponse:
        return message_page(
            lang, 503, "retry_title", "retry", shop=shop, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    async def publish_one(raw: dict[str, object], lang: Lang | None) -> HTMLResponse | None:
        """Publishes one link event under a fresh event id; a page to answer instead when it could not be."""
        try:
            event = parse_event(raw, await clock.now(), new_event_id)  # raw has no event_id: a fresh one
        except EventInvalid as exc:
            # Only possible if we signed bad data (say, a customer id with spaces).
            log.warning("a validly signed token carries bad data: %s", exc)
            return message_page(lang, 400, "invalid_title", "invalid_forged", shop=shop)
        try:
            await publish([event])
        except PublishFailed:
            return retry_page(lang)
        return None

    # --- unsubscribe ---

    def unsubscribe_claim(token: str) -> UnsubscribeClaim | HTMLResponse:
        try:
            return read_unsubscribe_token(keys, token)
        except InvalidToken as exc:
            return refusal(exc, shop)

    async def unsubscribe_now(claim: UnsubscribeClaim, lang: Lang | None) -> HTMLResponse:
        raw: dict[str, object] = {
            "type": EventType.UNSUBSCRIBED.value,
            "customer_id": claim.customer_id,
            "properties": {"message_id": claim.message_id},
        }
        failed = await publish_one(raw, lang)
        if failed is not None:
            return failed
        return message_page(lang, 200, "unsub_done_title", "unsub_done", shop=shop, extra=back_to_shop)

    @router.get("/v1/unsubscribe/{token}", response_class=HTMLResponse, summary="Unsubscribe confirmation page",
                responses={**_SHOWN, **_REFUSED_LINK})
    async def unsubscribe_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = unsubscribe_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        shown = await lang_for(lang, claim.customer_id) or default_lang
        # A GET must never act: link scanners and mail previews follow links. The form POSTs.
        body = (
            f"{header(shown)}"
            f'<div class="card"><h1>{esc(_say(shown, "unsub_title"))}</h1>'
            f"<p>{esc(_say(shown, 'unsub_question', shop=shop))}</p>"
            f'<p class="muted">{esc(_say(shown, "unsub_note"))}</p>'
            f'<form method="post" action="{esc(f"{prefix}/v1/unsubscribe/{token}")}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<input type="hidden" name="lang" value="{shown}">'
            f'<button type="submit" class="danger">{esc(_say(shown, "unsub_button"))}</button></form>'
            f'<section><p>{esc(_say(shown, "unsub_fewer"))}</p>'
            f'<p><a href="{esc(f"{prefix}/v1/preferences/{token}?lang={shown}")}">'
            f"{esc(_say(shown, 'unsub_fewer_link'))}</a></p></section></div>"
        )
        return page(shown, _say(shown, "unsub_title"), body)

    form_body_doc: dict[str, Any] = {
        "requestBody": {
            "required": False,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "List-Unsubscribe": {"type": "string", "enum": ["One-Click"]},
                            "lang": {"type": "string", "enum": list(LANGS)},
                        },
                    }
                }
            },
        }
    }

    @router.post(
        "/v1/unsubscribe/{token}",
        response_class=HTMLResponse,
        summary="One-click unsubscribe (RFC 8058); the token is the authorisation",
        openapi_extra=form_body_doc,
        responses={200: html_answer("Unsubscribed: the event is in Kafka"), **_REFUSED_LINK, **_NOT_RECORDED},
    )
    async def unsubscribe(token: LinkToken, request: Request) -> HTMLResponse:
        # The body (List-Unsubscribe=One-Click) carries no information: the token says it all.
        claim = unsubscribe_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request) or {}
        lang = await lang_for(_field(form, "lang"), claim.customer_id)
        return await unsubscribe_now(claim, lang)

    # --- preferences ---

    def choice(lang: Lang, category: EmailCategory, receives: bool) -> str:
        field_id = f"receive-{category}"
        checked = " checked" if receives else ""
        return (
            f'<label class="choice" for="{field_id}">'
            f'<input type="checkbox" id="{field_id}" name="receive" value="{category}"{checked}>'
            f"<span><span>{esc(_say(lang, f'cat_{category}'))}</span>"
            f'<span class="hint">{esc(_say(lang, f"cat_{category}_hint"))}</span></span></label>'
        )

    @router.get("/v1/preferences/{token}", response_class=HTMLResponse, summary="Email preferences page",
                responses={**_SHOWN, **_REFUSED_LINK})
    async def preferences_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = unsubscribe_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        found, shown = await customer_and_lang(claim.customer_id, lang)
        left = found.get("unsubscribed_categories") if found else None
        left_set = set(left) if isinstance(left, list | tuple) else set()
        opted_out = found is not None and found.get("consent") == "opted_out"
        action = esc(f"{prefix}/v1/preferences/{token}")
        hidden = f'<input type="hidden" name="lang" value="{shown}">'
        notice = f'<p class="notice" role="status">{esc(_say(shown, "prefs_opted_out"))}</p>' if opted_out else ""
        body = (
            f"{header(shown)}"
            f'<div class="card"><h1>{esc(_say(shown, "prefs_title"))}</h1>{notice}'
            f"<p>{esc(_say(shown, 'prefs_intro', shop=shop))}</p>"
            f'<form method="post" action="{action}">{hidden}'
            f"<fieldset><legend>{esc(_say(shown, 'prefs_legend'))}</legend>"
            + "".join(choice(shown, category, category not in left_set) for category in EMAIL_CATEGORIES)
            + "</fieldset>"
            f'<button type="submit" name="action" value="save">{esc(_say(shown, "prefs_save"))}</button></form>'
            f'<section><h2>{esc(_say(shown, "prefs_all_title"))}</h2><p>{esc(_say(shown, "prefs_all"))}</p>'
            f'<form method="post" action="{action}">{hidden}'
            f'<button type="submit" name="action" value="all" class="quiet">'
            f"{esc(_say(shown, 'prefs_all_button'))}</button></form></section></div>"
        )
        return page(shown, _say(shown, "prefs_title"), body)

    preferences_body_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["action"],
                        "properties": {
                            "action": {
                                "type": "string",
                                "enum": ["save", "all"],
                                "description": "save: keep only the `receive` categories; all: unsubscribe",
                            },
                            "receive": {
                                "type": "array",
                                "items": {"type": "string", "enum": list(EMAIL_CATEGORIES)},
                                "description": "The categories to keep receiving; the others are left",
                            },
                            "lang": {"type": "string", "enum": list(LANGS)},
                        },
                    }
                }
            },
        }
    }

    @router.post(
        "/v1/preferences/{token}",
        response_class=HTMLResponse,
        summary="Save email preferences, or unsubscribe from all marketing; the token is the authorisation",
        openapi_extra=preferences_body_doc,
        responses={200: html_answer("Saved: the event is in Kafka"), **_REFUSED_LINK, **_NOT_RECORDED},
    )
    async def save_preferences(token: LinkToken, request: Request) -> HTMLResponse:
        claim = unsubscribe_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request)
        action = _field(form, "action") if form else None
        receive = form.get("receive", []) if form else []
        lang = await lang_for(_field(form, "lang") if form else None, claim.customer_id)
        if action not in ("save", "all") or not set(receive) <= set(EMAIL_CATEGORIES):
            # Not our form (or a tampered one): refuse rather than guess a choice.
            return message_page(lang, 400, "bad_form_title", "bad_form", shop=shop)
        if action == "all":
            return await unsubscribe_now(claim, lang)
        left = sorted(set(EMAIL_CATEGORIES) - set(receive))
        raw: dict[str, object] = {
            "type": EventType.CUSTOMER_UPDATED.value,
            "customer_id": claim.customer_id,
            "traits": {"unsubscribed_categories": left},
        }
        failed = await publish_one(raw, lang)
        if failed is not None:
            return failed
        shown = lang or default_lang
        if not left:
            summary = _say(shown, "prefs_done_all")
        elif len(left) == len(EMAIL_CATEGORIES):
            summary = _say(shown, "prefs_done_none")
        else:
            names = ", ".join(_say(shown, f"cat_{category}").lower() for category in left)
            summary = _say(shown, "prefs_done_left", categories=names)
        body = (
            f"{shop_header(shop)}"
            f'<div class="card" role="status"><h1>{esc(_say(shown, "prefs_done_title"))}</h1>'
            f"<p>{esc(summary)}</p>"
            f'<p><a href="{esc(f"{prefix}/v1/preferences/{token}?lang={shown}")}">'
            f"{esc(_say(shown, 'prefs_change'))}</a></p>{back_to_shop(shown)}</div>"
        )
        return page(shown, _say(shown, "prefs_done_title"), body)

    # --- double opt-in ---

    def confirm_claim(token: str) -> ConfirmClaim | HTMLResponse:
        try:
            return read_confirm_token(keys, token)
        except InvalidToken as exc:
            return refusal(exc, shop)

    def sent_to_current_address(found: Mapping[str, object], claim: ConfirmClaim) -> bool:
        stored = found.get("email")
        return isinstance(stored, str) and stored.strip().lower() == claim.email

    def other_address(lang: Lang | None) -> HTMLResponse:
        return message_page(lang, 403, "other_address_title", "other_address", shop=shop, extra=back_to_shop)

    @router.get(
        "/v1/confirm/{token}",
        response_class=HTMLResponse,
        summary="Double opt-in confirmation page",
        responses={
            200: html_answer("The page, with a button that confirms"),
            **_REFUSED_LINK,
            403: html_answer("Forged or outdated link, or sent to an address the customer no longer has"),
        },
    )
    async def confirm_page(token: LinkToken, request: Request, lang: str | None = None) -> HTMLResponse:
        claim = confirm_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        found, shown = await customer_and_lang(claim.customer_id, lang)
        # Said now rather than after the button: the POST would refuse it anyway.
        if found is not None and not sent_to_current_address(found, claim):
            return other_address(shown)
        body = (
            f"{header(shown)}"
            f'<div class="card"><h1>{esc(_say(shown, "confirm_title"))}</h1>'
            f"<p>{esc(_say(shown, 'confirm_question', shop=shop))}</p>"
            f'<form method="post" action="{esc(f"{prefix}/v1/confirm/{token}")}">'
            f'<input type="hidden" name="lang" value="{shown}">'
            f'<button type="submit">{esc(_say(shown, "confirm_button"))}</button></form></div>'
        )
        return page(shown, _say(shown, "confirm_title"), body)

    @router.post(
        "/v1/confirm/{token}",
        response_class=HTMLResponse,
        summary="Confirm a subscription (double opt-in); the token is the authorisation",
        responses={
            200: html_answer("Confirmed: consent_confirmed is in Kafka"),
            **_REFUSED_LINK,
            403: html_answer("Forged or outdated link, unknown customer, or sent to an address the customer "
                             "no longer has; nothing is recorded"),
            **_NOT_RECORDED,
        },
    )
    async def confirm(token: LinkToken, request: Request) -> HTMLResponse:
        claim = confirm_claim(token)
        if isinstance(claim, HTMLResponse):
            return claim
        if (limited := over_limit(request, token)) is not None:
            return limited
        form = await read_form(request) or {}
        chosen = lang_of(_field(form, "lang"))
        try:
            found = await lookup(claim.customer_id)
        except _LookupFailed as exc:
            # The address must be checked before anything is recorded: no check, no confirmation.
            log.warning("customer lookup for a confirmation failed: %s", exc)
            return retry_page(chosen)
        lang = chosen or (lang_of(found.get("locale")) if found else None)
        if found is None:
            return message_page(lang, 403, "invalid_title", "invalid_outdated", shop=shop)
        if not sent_to_current_address(found, claim):
            return other_address(lang)
        raw: dict[str, object] = {
            "type": EventType.CONSENT_CONFIRMED.value,
            "customer_id": claim.customer_id,
            # As stored (it equals the link's address but for case): the stager checks it is still current.
            "properties": {"email": found["email"]},
        }
        failed = await publish_one(raw, lang)
        if failed is not None:
            return failed
        return message_page(lang, 200, "confirm_done_title", "confirm_done", shop=shop, extra=back_to_shop)

    return router
