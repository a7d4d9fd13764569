"""The HTML of the link pages: small, self-contained, no script, no external asset."""

from __future__ import annotations

import html
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from fastapi.responses import HTMLResponse

from lifecycle.events import EMAIL_CATEGORIES, EmailCategory
from lifecycle.tokens import InvalidToken, MalformedToken, OutdatedToken
from services.ingest.pages.texts import FALLBACK_LANG, LANGS, Lang, say

RETRY_AFTER_SECONDS: Final = 5

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
        f'<section lang="{one}"><h1>{esc(say(one, title_key))}</h1>'
        f"<p>{esc(say(one, text_key, shop=shop))}</p>{extra(one) if extra else ''}</section>"
        for one in langs
    )
    title = " · ".join(say(one, title_key) for one in langs)
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


def _choice(lang: Lang, category: EmailCategory, receives: bool) -> str:
    field_id = f"receive-{category}"
    checked = " checked" if receives else ""
    return (
        f'<label class="choice" for="{field_id}">'
        f'<input type="checkbox" id="{field_id}" name="receive" value="{category}"{checked}>'
        f"<span><span>{esc(say(lang, f'cat_{category}'))}</span>"
        f'<span class="hint">{esc(say(lang, f"cat_{category}_hint"))}</span></span></label>'
    )


@dataclass(frozen=True)
class ShopPages:
    """The pages of one shop; `prefix` is the path the API lives under, where the forms post back."""

    shop: str
    shop_url: str
    prefix: str

    def header(self, lang: Lang) -> str:
        # The shop's name, and a link to the same page in the other language.
        other: Lang = "en" if lang == "fr" else "fr"
        switch = (
            f'<p class="switch"><a href="?lang={other}" hreflang="{other}" lang="{other}">'
            f"{esc(say(lang, 'switch'))}</a></p>"
        )
        return shop_header(self.shop, switch)

    def back_to_shop(self, lang: Lang) -> str:
        words = say(lang, "back_to_shop", shop=self.shop)
        return f'<p><a href="{esc(self.shop_url)}">{esc(words)}</a></p>'

    def retry_page(self, lang: Lang | None) -> HTMLResponse:
        return message_page(
            lang, 503, "retry_title", "retry", shop=self.shop, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    # --- unsubscribe ---

    def unsubscribe_page(self, token: str, shown: Lang) -> HTMLResponse:
        shop, prefix = self.shop, self.prefix
        body = (
            f"{self.header(shown)}"
            f'<div class="card"><h1>{esc(say(shown, "unsub_title"))}</h1>'
            f"<p>{esc(say(shown, 'unsub_question', shop=shop))}</p>"
            f'<p class="muted">{esc(say(shown, "unsub_note"))}</p>'
            f'<form method="post" action="{esc(f"{prefix}/v1/unsubscribe/{token}")}">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            f'<input type="hidden" name="lang" value="{shown}">'
            f'<button type="submit" class="danger">{esc(say(shown, "unsub_button"))}</button></form>'
            f'<section><p>{esc(say(shown, "unsub_fewer"))}</p>'
            f'<p><a href="{esc(f"{prefix}/v1/preferences/{token}?lang={shown}")}">'
            f"{esc(say(shown, 'unsub_fewer_link'))}</a></p></section></div>"
        )
        return page(shown, say(shown, "unsub_title"), body)

    def unsubscribed_page(self, lang: Lang | None) -> HTMLResponse:
        return message_page(lang, 200, "unsub_done_title", "unsub_done", shop=self.shop, extra=self.back_to_shop)

    # --- preferences ---

    def preferences_page(self, token: str, shown: Lang, left_set: Collection[str], opted_out: bool) -> HTMLResponse:
        shop, prefix = self.shop, self.prefix
        action = esc(f"{prefix}/v1/preferences/{token}")
        hidden = f'<input type="hidden" name="lang" value="{shown}">'
        notice = f'<p class="notice" role="status">{esc(say(shown, "prefs_opted_out"))}</p>' if opted_out else ""
        body = (
            f"{self.header(shown)}"
            f'<div class="card"><h1>{esc(say(shown, "prefs_title"))}</h1>{notice}'
            f"<p>{esc(say(shown, 'prefs_intro', shop=shop))}</p>"
            f'<form method="post" action="{action}">{hidden}'
            f"<fieldset><legend>{esc(say(shown, 'prefs_legend'))}</legend>"
            + "".join(_choice(shown, category, category not in left_set) for category in EMAIL_CATEGORIES)
            + "</fieldset>"
            f'<button type="submit" name="action" value="save">{esc(say(shown, "prefs_save"))}</button></form>'
            f'<section><h2>{esc(say(shown, "prefs_all_title"))}</h2><p>{esc(say(shown, "prefs_all"))}</p>'
            f'<form method="post" action="{action}">{hidden}'
            f'<button type="submit" name="action" value="all" class="quiet">'
            f"{esc(say(shown, 'prefs_all_button'))}</button></form></section></div>"
        )
        return page(shown, say(shown, "prefs_title"), body)

    def preferences_saved_page(self, token: str, shown: Lang, left: Sequence[str]) -> HTMLResponse:
        """`left`: the categories the customer no longer receives, in order."""
        if not left:
            summary = say(shown, "prefs_done_all")
        elif len(left) == len(EMAIL_CATEGORIES):
            summary = say(shown, "prefs_done_none")
        else:
            names = ", ".join(say(shown, f"cat_{category}").lower() for category in left)
            summary = say(shown, "prefs_done_left", categories=names)
        body = (
            f"{shop_header(self.shop)}"
            f'<div class="card" role="status"><h1>{esc(say(shown, "prefs_done_title"))}</h1>'
            f"<p>{esc(summary)}</p>"
            f'<p><a href="{esc(f"{self.prefix}/v1/preferences/{token}?lang={shown}")}">'
            f"{esc(say(shown, 'prefs_change'))}</a></p>{self.back_to_shop(shown)}</div>"
        )
        return page(shown, say(shown, "prefs_done_title"), body)

    # --- double opt-in ---

    def confirm_page(self, token: str, shown: Lang) -> HTMLResponse:
        body = (
            f"{self.header(shown)}"
            f'<div class="card"><h1>{esc(say(shown, "confirm_title"))}</h1>'
            f"<p>{esc(say(shown, 'confirm_question', shop=self.shop))}</p>"
            f'<form method="post" action="{esc(f"{self.prefix}/v1/confirm/{token}")}">'
            f'<input type="hidden" name="lang" value="{shown}">'
            f'<button type="submit">{esc(say(shown, "confirm_button"))}</button></form></div>'
        )
        return page(shown, say(shown, "confirm_title"), body)

    def other_address_page(self, lang: Lang | None) -> HTMLResponse:
        return message_page(lang, 403, "other_address_title", "other_address", shop=self.shop, extra=self.back_to_shop)

    def confirmed_page(self, lang: Lang | None) -> HTMLResponse:
        return message_page(lang, 200, "confirm_done_title", "confirm_done", shop=self.shop, extra=self.back_to_shop)
