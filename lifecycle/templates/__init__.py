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
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import css_inline
import yaml
from jinja2 import BaseLoader, StrictUndefined, Template, TemplateNotFound, TemplateSyntaxError, pass_context
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.environment import Environment
from jinja2.loaders import split_template_path
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment
from mjml import mjml2html

from lifecycle.templates.formatting import FILTERS, FORMAT_LOCALE_KEY, format_locale_for
from lifecycle.templates.links import UNTRACKED, Links, is_web_url, shop_links, url_segment
from lifecycle.templates.text import mjml_to_text, unknown_elements

__all__ = [
    "BUILTIN_DIR", "SAMPLE_CONTEXT", "Links", "Rendered", "TemplateError", "Templates", "normalize_locale",
    "sample_contexts", "shop_links", "with_open_pixel",
]

BUILTIN_DIR = Path(__file__).parent
MJML_SUFFIX = ".mjml"
TEXT_SUFFIX = ".txt"
STRINGS_FILE = "_strings.yaml"
FRONT_MATTER_KEYS = ("subject", "preheader")
SAMPLE_SHOP_URL = "https://shop.example"

# keep_style_tags: media queries (responsive columns) cannot be inlined and must stay in <head>;
# no remote stylesheets: rendering never reaches out to the network
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
_MJML_POSITION = re.compile(r"at position (\d+):(\d+)")
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")


class TemplateError(Exception):
    def __init__(self, path: Path, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")

    def key(self) -> tuple[str, int, str]:
        return (str(self.path), self.line, self.message)


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str  # compiled, CSS inlined; no open pixel (the sender adds it)
    text: str  # never empty
    locale: str  # the locale of the template used
    preheader: str

    @property
    def body(self) -> str:
        """The text part (the name earlier callers used)."""
        return self.text


def normalize_locale(tag: str) -> str:
    """`en_GB`, `EN-gb` -> `en-gb`: how locale tags and locale folders are compared."""
    return tag.strip().replace("_", "-").lower()


def with_open_pixel(html: str, pixel_url: str) -> str:
    """The HTML with a 1x1 open-tracking image as the last thing of its body."""
    pixel = (f'<img src="{pixel_url}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0;" />')
    at = html.rfind("</body>")
    return html[:at] + pixel + html[at:] if at != -1 else html + pixel


# --- sample data: what `check` renders every template of every locale with -----------------------


def _sample_links() -> Links:
    return Links(SAMPLE_SHOP_URL,
                 {"unsubscribe": f"{SAMPLE_SHOP_URL}/u/sample", "preferences": f"{SAMPLE_SHOP_URL}/p/sample",
                  "confirm": f"{SAMPLE_SHOP_URL}/c/sample"},
                 lambda index: f"https://track.example/t/c/sample-{index}")


_SAMPLE_BASE: dict[str, Any] = {
    "customer": {"customer_id": "c-sample", "email": "ana@example.com", "first_name": "Ana", "last_name": "Martin",
                 "locale": "fr", "timezone": "Europe/Paris", "birthday": "1990-07-07"},
    "shop": {"name": "Maison Lin", "url": SAMPLE_SHOP_URL, "logo_url": f"{SAMPLE_SHOP_URL}/logo.png",
             "email": "hello@shop.example"},
    "journey": "sample",
    "step": 1,
    "now": datetime(2026, 7, 7, 9, 0, tzinfo=UTC),
    # the union of every trigger's data, so that each journey's templates find theirs
    "context": {
        "cart_id": "k1", "order_id": "o1", "currency": "EUR", "value": 128.0, "year": 2026,
        "from": "prospect", "to": "new", "consent": "pending", "orders_count": 0,
        "items": [
            {"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0},
            {"product_id": "p2", "name": "Wool scarf", "quantity": 2, "price": 34.5,
             "image_url": f"{SAMPLE_SHOP_URL}/media/scarf.jpg"},
        ],
    },
}
_SAMPLE_RECOMMENDATIONS = [
    {"product_id": f"p{n}", "name": name, "price": price, "currency": "EUR",
     "url": f"{SAMPLE_SHOP_URL}/products/p{n}", "image_url": f"{SAMPLE_SHOP_URL}/images/p{n}.jpg"}
    for n, name, price in ((3, "Silk tie", 35.0), (4, "Felt hat", 70.0), (5, "Canvas tote", 24.0))
]
_SAMPLE_EXTRAS: tuple[dict[str, Any], ...] = (
    # everything: a percent coupon with its offer, a gold customer, three recommendations
    {"coupon": {"code": "AC-7K2Q9", "kind": "percent", "amount": 10.0, "currency": "EUR",
                "expires_at": datetime(2026, 7, 10, 21, 59, 59, tzinfo=UTC)},
     "offer": {"percent": 10.0}, "tier": "gold", "recommendations": _SAMPLE_RECOMMENDATIONS},
    # nothing optional, and no first name: every `is defined` fallback
    {"customer": {"first_name": None, "last_name": None, "locale": None, "timezone": "UTC"}},
    # a fixed coupon, no offer, an empty recommendation list, another zone and locale variant
    {"coupon": {"code": "WB-55XR2", "kind": "fixed", "amount": 10.0, "currency": "EUR",
                "expires_at": datetime(2026, 7, 21, 3, 59, 59, tzinfo=UTC)},
     "tier": "silver", "recommendations": [],
     "customer": {"locale": "en-GB", "timezone": "America/New_York"}},
)


def sample_contexts() -> list[dict[str, Any]]:
    """Contexts that together take every branch of the shipped templates (fresh links each)."""
    contexts = []
    for extras in _SAMPLE_EXTRAS:
        context = copy.deepcopy(_SAMPLE_BASE)
        for key, value in copy.deepcopy(extras).items():
            if key == "customer":
                context["customer"].update(value)
            else:
                context[key] = value
        context["links"] = _sample_links()
        contexts.append(context)
    return contexts


SAMPLE_CONTEXT: dict[str, Any] = sample_contexts()[0]


# --- loading --------------------------------------------------------------------------------------


def _front_matter(path: Path, source: str) -> tuple[dict[str, tuple[int, str]], str]:
    """The front matter's fields (line, value) and the source with the front matter blanked.

    The front matter becomes a Jinja comment of the same number of lines, so that line
    numbers in errors are the file's.
    """
    lines = source.split("\n")
    if not lines or lines[0].strip() != "---":
        raise TemplateError(path, 1, "a template starts with a front matter: '---', 'subject: ...', '---'")
    fields: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            body = "{#-" + "\n" * number + "-#}" + "\n".join(lines[number:])
            if "subject" not in fields:
                raise TemplateError(path, 1, "the front matter needs a 'subject:' line")
            return fields, body
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in FRONT_MATTER_KEYS:
            raise TemplateError(path, number, f"front matter lines are 'key: value' with a key among "
                                              f"{', '.join(FRONT_MATTER_KEYS)}; got {line.strip()!r}")
        fields[key] = (number, value.strip())
    raise TemplateError(path, 1, "the front matter is not closed by a '---' line")


class _Loader(BaseLoader):
    """Finds `name` in the first root that has it; entry templates have their front matter blanked."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def find(self, name: str) -> Path | None:
        parts = split_template_path(name)  # refuses `..`: no reading outside the roots
        for root in self.roots:
            path = root.joinpath(*parts)
            if path.is_file():
                return path
        return None

    def get_source(self, environment: Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = self.find(template)
        if path is None:
            raise TemplateNotFound(template)
        source = path.read_text(encoding="utf-8")
        if path.suffix == MJML_SUFFIX and not path.name.startswith("_"):
            source = _front_matter(path, source)[1]
        return source, str(path), lambda: True  # compiled once per process: no reload checks


@dataclass(frozen=True)
class _Compiled:
    path: Path
    subject: Template
    preheader: Template | None
    body: Template
    text: Template | None
    text_path: Path | None


@pass_context
def _track(ctx: Context, url: str, name: str | None = None) -> str:
    """`{{ track("https://...", "guide") }}`: any URL through the click tracker."""
    links = ctx.get("links")
    if not isinstance(links, Links):
        return url
    return links.track(str(url), str(name) if name is not None else None)


class _Environment(SandboxedEnvironment):
    """For data (dicts), keys win over methods: `context["items"]` and `context.items` are the cart's items,
    never `dict.items`, and a missing key is undefined (an error), not a method that happens to exist."""

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, dict) and isinstance(argument, str):
            return obj[argument] if argument in obj else _missing_key(self, obj, argument)
        return super().getitem(obj, argument)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            if attribute in obj:
                return obj[attribute]
            if not hasattr(dict, attribute):
                return _missing_key(self, obj, attribute)
        return super().getattr(obj, attribute)


def _missing_key(env: SandboxedEnvironment, obj: dict[str, Any], key: str) -> Any:
    known = ", ".join(sorted(str(k) for k in obj)[:15]) or "none"
    return env.undefined(hint=f"{key!r} is undefined (keys here: {known})", obj=obj, name=key)


class Templates:
    def __init__(self, extra_dir: Path | None = None, default_locale: str = "fr") -> None:
        self._roots = ([extra_dir / "templates"] if extra_dir is not None else []) + [BUILTIN_DIR]
        self.default_locale = default_locale
        self._envs: dict[str, _Environment] = {}
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        self._inline: dict[tuple[str, str], Template] = {}  # A/B subject lines, by locale and source
        self._strings: dict[str, dict[str, Any]] = {}
        self._locale_dirs: dict[str, str] | None = None
        self._locales_of: dict[str, list[str]] = {}

    # --- where templates are -------------------------------------------------------------------

    def _all_locales(self) -> dict[str, str]:
        """normalized tag -> folder name, over every root."""
        if self._locale_dirs is None:
            found: dict[str, str] = {}
            for root in self._roots:
                if not root.is_dir():
                    continue
                for child in sorted(root.iterdir()):
                    if child.is_dir() and not child.name.startswith(("_", ".")) and any(child.glob("*.mjml")):
                        found.setdefault(normalize_locale(child.name), child.name)
            self._locale_dirs = found
        return self._locale_dirs

    def locales(self, name: str) -> list[str]:
        """The locales (folder names) that have template `name`."""
        cached = self._locales_of.get(name)
        if cached is None:
            cached = sorted({folder for folder in self._all_locales().values()
                             if any((root / folder / f"{name}{MJML_SUFFIX}").is_file() for root in self._roots)})
            self._locales_of[name] = cached
        return cached

    def exists(self, name: str) -> bool:
        return bool(self.locales(name))

    def names(self) -> list[str]:
        """Every template name, in any locale (what a journey's `template` may say)."""
        found: set[str] = set()
        for root in self._roots:
            for folder in self._all_locales().values():
                directory = root / folder
                if directory.is_dir():
                    found.update(p.name.removesuffix(MJML_SUFFIX) for p in directory.glob(f"*{MJML_SUFFIX}")
                                 if not p.name.startswith("_"))
        return sorted(found)

    def path(self, name: str, locale: str | None = None) -> Path | None:
        """The file of `name` in `locale` (default: the one a customer without a locale gets)."""
        if not self.exists(name):
            return None
        locale = locale or self.resolve_locale(name, None)
        return self._loader(locale).find(f"{name}{MJML_SUFFIX}") if locale in self.locales(name) else None

    def resolve_locale(self, name: str, wanted: str | None, default: str | None = None) -> str:
        """The customer's locale if shipped (en-GB, then en), else the default locale, else any."""
        available = {normalize_locale(loc): loc for loc in self.locales(name)}
        candidates: list[str] = []
        if wanted:
            tag = normalize_locale(wanted)
            candidates += [tag, tag.split("-")[0]]
        candidates.append(normalize_locale(default or self.default_locale))
        for candidate in candidates:
            if candidate in available:
                return available[candidate]
        if not available:
            raise TemplateError(Path(f"{name}{MJML_SUFFIX}"), 1, f"no template named {name!r} in any locale")
        return sorted(available.values())[0]

    def _roots_for(self, locale: str) -> list[Path]:
        roots: list[Path] = []
        for root in self._roots:
            roots += [root / locale, root]
        return roots

    def _loader(self, locale: str) -> _Loader:
        env = self._env(locale)
        assert isinstance(env.loader, _Loader)
        return env.loader

    def _env(self, locale: str) -> _Environment:
        env = self._envs.get(locale)
        if env is None:
            env = _Environment(
                loader=_Loader(self._roots_for(locale)),
                undefined=StrictUndefined,
                # MJML is markup: values are escaped; subjects and text parts are plain text
                autoescape=lambda name: name is not None and name.endswith(MJML_SUFFIX),
                auto_reload=False,
                cache_size=-1,
                trim_blocks=True,
                lstrip_blocks=True,
                keep_trailing_newline=True,
            )
            env.filters.update(FILTERS)
            # data from events goes into URLs only through these: `{{ id|url_segment }}`, `url is web_url`
            env.filters["url_segment"] = url_segment
            env.tests["web_url"] = is_web_url
            env.globals["track"] = _track
            self._envs[locale] = env
        return env

    def strings(self, locale: str) -> dict[str, Any]:
        """`t` in templates: the words of `<locale>/_strings.yaml`, an override's keys over the package's."""
        cached = self._strings.get(locale)
        if cached is None:
            cached = {}
            for root in reversed(self._roots):
                path = root / locale / STRINGS_FILE
                if not path.is_file():
                    continue
                try:
                    loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
                except yaml.YAMLError as exc:
                    mark = getattr(exc, "problem_mark", None)
                    raise TemplateError(path, mark.line + 1 if mark else 1, f"invalid YAML: {exc}") from None
                if not isinstance(loaded, dict):
                    raise TemplateError(path, 1, "expected a mapping of key: text")
                cached.update({str(k): v for k, v in loaded.items()})
            self._strings[locale] = cached
        return cached

    # --- compiling and rendering ---------------------------------------------------------------

    def _compile(self, name: str, locale: str) -> _Compiled:
        cached = self._compiled.get((name, locale))
        if cached is not None:
            return cached
        env = self._env(locale)
        loader = self._loader(locale)
        path = loader.find(f"{name}{MJML_SUFFIX}")
        if path is None or locale not in self.locales(name):
            raise TemplateError(Path(locale) / f"{name}{MJML_SUFFIX}", 1, "template not found")
        fields = _front_matter(path, path.read_text(encoding="utf-8"))[0]
        try:
            body = env.get_template(f"{name}{MJML_SUFFIX}")
            text_path = loader.find(f"{name}{TEXT_SUFFIX}")
            text = env.get_template(f"{name}{TEXT_SUFFIX}") if text_path is not None else None
        except TemplateSyntaxError as exc:
            raise TemplateError(Path(exc.filename or path), exc.lineno or 1, exc.message or str(exc)) from None
        except TemplateNotFound as exc:
            raise TemplateError(path, 1, f"template {exc.name!r} not found (extends, import or include)") from None
        preheader = self._compile_line(env, path, *fields["preheader"]) if "preheader" in fields else None
        compiled = _Compiled(path, self._compile_line(env, path, *fields["subject"]), preheader, body, text,
                             text_path)
        self._compiled[(name, locale)] = compiled
        return compiled

    def _compile_line(self, env: SandboxedEnvironment, path: Path, line: int, source: str) -> Template:
        # padded with newlines so that an error's line is the file's
        try:
            code = env.compile("\n" * (line - 1) + source, filename=str(path))
        except TemplateSyntaxError as exc:
            raise TemplateError(path, exc.lineno or line, exc.message or str(exc)) from None
        return env.template_class.from_code(env, code, env.make_globals(None))

    def render(self, name: str, context: dict[str, Any], locale: str | None = None,
               default_locale: str | None = None) -> Rendered:
        """Render `name` in the customer's `locale` (falling back to the default locale)."""
        return self._render_in(name, self.resolve_locale(name, locale, default_locale), context)

    def _prepare(self, context: dict[str, Any], locale: str) -> tuple[dict[str, Any], Links]:
        """The context plus what every render adds: `locale`, `t`, the formatting locale, tracked `links`."""
        values = dict(context)
        links = values.get("links")
        if not isinstance(links, Links):
            # a plain mapping (a preview, an old caller): the same names, nothing tracked
            given = dict(links) if isinstance(links, Mapping) else {}
            shop_url = str((values.get("shop") or {}).get("url", SAMPLE_SHOP_URL))
            links = Links(shop_url, {k: str(v) for k, v in given.items() if k in UNTRACKED}, None)
            values["links"] = links
        customer = values.get("customer")
        customer_locale = customer.get("locale") if isinstance(customer, dict) else None
        values["locale"] = locale
        values[FORMAT_LOCALE_KEY] = format_locale_for(locale, customer_locale)
        values["t"] = self.strings(locale)
        return values, links

    def _render_in(self, name: str, locale: str, context: dict[str, Any]) -> Rendered:
        compiled = self._compile(name, locale)
        path = compiled.path
        values, links = self._prepare(context, locale)
        subject = _one_line(_render(path, compiled.subject, values))
        if not subject:
            raise TemplateError(path, 1, "the subject is empty")
        preheader = _one_line(_render(path, compiled.preheader, values)) if compiled.preheader else ""
        values["subject"], values["preheader"] = subject, preheader
        mjml = links.track_hrefs(_render(path, compiled.body, values))
        html = _compile_mjml(path, mjml)
        if compiled.text is not None:
            text_path = compiled.text_path or path
            text = _render(text_path, compiled.text, values).strip() + "\n"
        else:
            text_path = path
            text = mjml_to_text(mjml)
        if not text.strip():
            raise TemplateError(text_path, 1, "the text part is empty")
        return Rendered(subject=subject, html=html, text=text, locale=locale, preheader=preheader)

    def render_string(self, source: str, context: dict[str, Any], locale: str | None = None) -> str:
        """A one-line template given inline (an A/B subject line), in `locale` (default: the default locale)."""
        locale = locale or self.default_locale
        values, _ = self._prepare(context, locale)
        template = self._inline.get((locale, source))
        if template is None:
            template = self._compile_line(self._env(locale), Path("<inline>"), 1, source)
            self._inline[(locale, source)] = template
        return _one_line(_render(Path("<inline>"), template, values))

    # --- validation ----------------------------------------------------------------------------

    def problems(self, name: str) -> list[TemplateError]:
        """Everything wrong with `name`: each locale rendered with every sample context."""
        locales = self.locales(name)
        if not locales:
            return [TemplateError(Path(self.default_locale) / f"{name}{MJML_SUFFIX}", 1,
                                  f"no template named {name!r} in any locale")]
        found: dict[tuple[str, int, str], TemplateError] = {}
        if normalize_locale(self.default_locale) not in {normalize_locale(loc) for loc in locales}:
            error = TemplateError(Path(self.default_locale) / f"{name}{MJML_SUFFIX}", 1,
                                  f"missing in the default locale {self.default_locale!r} "
                                  f"(found in {', '.join(locales)})")
            found[error.key()] = error
        for locale in locales:
            path = self._loader(locale).find(f"{name}{MJML_SUFFIX}")
            if path is not None:
                for line, message in unknown_elements(path.read_text(encoding="utf-8")):
                    error = TemplateError(path, line, message)
                    found[error.key()] = error
            for context in sample_contexts():
                try:
                    self._render_in(name, locale, context)
                except TemplateError as exc:
                    found.setdefault(exc.key(), exc)
                    if exc.message.startswith(("a template starts", "the front matter", "front matter")):
                        break  # the same error for every sample
        return list(found.values())

    def check(self, name: str) -> None:
        """Raises the first problem of `name` (see `problems`)."""
        problems = self.problems(name)
        if problems:
            raise problems[0]


def _one_line(text: str) -> str:
    # not str.split(): that would also break the no-break spaces of "Total : 59,00 €"
    return _WHITESPACE.sub(" ", text).strip(" ")


def _render(path: Path, template: Template, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except TemplateError:
        raise
    except JinjaTemplateError as exc:
        raise _located(exc, path, exc.message or str(exc)) from None
    except Exception as exc:  # a filter refusing a value: still the template's file and line
        raise _located(exc, path, f"{type(exc).__name__}: {exc}") from None


def _located(exc: BaseException, entry: Path, message: str) -> TemplateError:
    """The error at the innermost template line it was raised at, naming the entry template's line
    when that is elsewhere (a component given a bad value)."""
    frames: list[tuple[Path, int]] = []
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if filename.endswith((MJML_SUFFIX, TEXT_SUFFIX)) or filename == "<inline>":
            frames.append((Path(filename), tb.tb_lineno))
        tb = tb.tb_next
    if not frames:
        return TemplateError(entry, 1, message)
    where, line = frames[-1]
    if where != entry:
        calls = [f for f in frames if f[0] == entry]
        if calls:
            message += f" (used from {entry.name}:{calls[-1][1]})"
    return TemplateError(where, line, message)


def _no_include(path: str) -> str:
    raise ValueError(f"<mj-include path={path!r}> is not allowed")


def _compile_mjml(path: Path, mjml: str) -> str:
    try:
        html = mjml2html(mjml, disable_comments=True, include_loader=_no_include)
    except ValueError as exc:
        message = str(exc)
        position = _MJML_POSITION.search(message)
        if position is not None:
            start = int(position.group(1))
            message += f" near {mjml[max(0, start - 40):start + 60]!r}"
        raise TemplateError(path, 1, f"invalid MJML after rendering: {message}") from None
    try:
        return _INLINER.inline(html)
    except css_inline.InlineError as exc:
        raise TemplateError(path, 1, f"CSS that cannot be inlined: {exc}") from None
