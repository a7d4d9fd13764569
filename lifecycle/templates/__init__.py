"""Email templates: MJML with Jinja2, per locale, compiled to HTML, with a plain-text part.

Layout (docs/templates.md): `<root>/<locale>/<name>.mjml` starts with a front matter
(`subject:`, optional `preheader:`) between `---` lines, then Jinja2 that renders to MJML;
an optional `<root>/<locale>/<name>.txt` is the authored text part, otherwise the text is
derived from the rendered MJML. `<root>/_*.mjml` are shared partials (layout,
components), `<root>/<locale>/_strings.yaml` the words those partials use. Roots are
`<extra_dir>/templates` (marketers' overrides and additions) then this package.

Each email: Jinja renders the MJML (sandboxed, StrictUndefined: a missing variable is an
error, never a hole), the MJML is compiled to HTML (mjml-python, ~0.3 ms) and CSS rules are
inlined (css-inline). Jinja templates are compiled once per process and locale.

Modules:

    engine      Templates: finding, compiling (cached), rendering and validating templates
    jinja       front matter, the loader, the sandboxed environment, errors at file:line
    html        MJML to HTML with CSS inlined; with_open_pixel
    locales     normalize_locale, the locale folders, which locale a customer gets
    samples     the sample contexts `check` renders every template with
    errors      TemplateError, Rendered
    formatting  locale-aware filters: money, percentages, dates in the customer's time zone
    links       Links: every link through the click tracker
    text        the plain-text part derived from the rendered MJML; unknown MJML elements
"""

from __future__ import annotations

from lifecycle.templates.engine import BUILTIN_DIR, Templates
from lifecycle.templates.errors import Rendered, TemplateError
from lifecycle.templates.html import with_open_pixel
from lifecycle.templates.links import Links, shop_links
from lifecycle.templates.locales import normalize_locale
from lifecycle.templates.samples import SAMPLE_CONTEXT, SAMPLE_POSTAL_ADDRESS, sample_contexts

__all__ = [
    "BUILTIN_DIR", "SAMPLE_CONTEXT", "SAMPLE_POSTAL_ADDRESS", "Links", "Rendered", "TemplateError", "Templates",
    "normalize_locale", "sample_contexts", "shop_links", "with_open_pixel",
]
