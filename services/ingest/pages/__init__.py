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

Modules: `routes` (the router and its handlers), `links` (the signed token in the path),
`readers` (the customer store), `forms` (reading a posted form), `actions` (the event a
POST publishes), `render` (the HTML), `texts` (the words, and the language), `openapi`
(what the OpenAPI document says of the pages). Import from this package: other modules
use the names below.
"""

from __future__ import annotations

from services.ingest.pages.actions import Publish, PublishFailed
from services.ingest.pages.forms import MAX_FORM_BYTES, read_form
from services.ingest.pages.links import LinkToken
from services.ingest.pages.openapi import OpenApiResponses, html_answer
from services.ingest.pages.readers import LOOKUP_TIMEOUT_SECONDS, CustomerReader
from services.ingest.pages.render import (
    RETRY_AFTER_SECONDS,
    SECURITY_HEADERS,
    esc,
    message_page,
    page,
    refusal,
    shop_header,
)
from services.ingest.pages.routes import pages_router
from services.ingest.pages.texts import FALLBACK_LANG, LANGS, TEXTS, Lang, lang_of

__all__ = [
    "FALLBACK_LANG",
    "LANGS",
    "LOOKUP_TIMEOUT_SECONDS",
    "MAX_FORM_BYTES",
    "RETRY_AFTER_SECONDS",
    "SECURITY_HEADERS",
    "TEXTS",
    "CustomerReader",
    "Lang",
    "LinkToken",
    "OpenApiResponses",
    "Publish",
    "PublishFailed",
    "esc",
    "html_answer",
    "lang_of",
    "message_page",
    "page",
    "pages_router",
    "read_form",
    "refusal",
    "shop_header",
]
