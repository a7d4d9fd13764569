"""Templates: where templates are, compiled once per process and locale, rendered to a Rendered email,
and validated (`problems`) against the sample contexts."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Template, TemplateNotFound, TemplateSyntaxError

from lifecycle.templates.converted import ConvertedCache
from lifecycle.templates.errors import Rendered, TemplateError
from lifecycle.templates.formatting import FORMAT_LOCALE_KEY, format_locale_for
from lifecycle.templates.jinja import (
    MJML_SUFFIX,
    TEXT_SUFFIX,
    TemplateEnvironment,
    TemplateLoader,
    compile_line,
    front_matter,
    new_environment,
    render_template,
)
from lifecycle.templates.links import UNTRACKED, Links
from lifecycle.templates.locales import locale_folders, normalize_locale, pick_locale
from lifecycle.templates.memo import SendMemo
from lifecycle.templates.reads import IMPLICIT, Reads, reads_of_source, reads_of_templates
from lifecycle.templates.samples import SAMPLE_POSTAL_ADDRESS, SAMPLE_SHOP_URL, sample_contexts
from lifecycle.templates.text import unknown_elements
from lifecycle.yamlio import load_plain

# the package's folder: the shipped templates sit beside this module
BUILTIN_DIR = Path(__file__).parent
STRINGS_FILE = "_strings.yaml"

_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_CONVERTED_ALONE = ConvertedCache(size=0)


@dataclass(frozen=True)
class _Compiled:
    path: Path
    subject: Template
    preheader: Template | None
    body: Template
    text: Template | None
    text_path: Path | None
    reads: Reads | None  # of the subject, preheader, body and text, with what they use (None: unknown)


class Templates:
    def __init__(self, extra_dir: Path | None = None, default_locale: str = "fr") -> None:
        self._roots = ([extra_dir / "templates"] if extra_dir is not None else []) + [BUILTIN_DIR]
        self.default_locale = default_locale
        self._envs: dict[str, TemplateEnvironment] = {}
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        self._inline: dict[tuple[str, str], Template] = {}  # A/B subject lines, by locale and source
        self._strings: dict[str, dict[str, Any]] = {}
        self._locale_dirs: dict[str, str] | None = None
        self._locales_of: dict[str, list[str]] = {}
        self.converted = ConvertedCache()
        self.memo = SendMemo()
        self._send_reads: dict[tuple[str, str, str | None], Reads | None] = {}

    # --- where templates are -------------------------------------------------------------------

    def _all_locales(self) -> dict[str, str]:
        """normalized tag -> folder name, over every root."""
        if self._locale_dirs is None:
            self._locale_dirs = locale_folders(self._roots)
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
        locale = pick_locale(self.locales(name), wanted, default or self.default_locale)
        if locale is None:
            raise TemplateError(Path(f"{name}{MJML_SUFFIX}"), 1, f"no template named {name!r} in any locale")
        return locale

    def _roots_for(self, locale: str) -> list[Path]:
        roots: list[Path] = []
        for root in self._roots:
            roots += [root / locale, root]
        return roots

    def _loader(self, locale: str) -> TemplateLoader:
        env = self._env(locale)
        assert isinstance(env.loader, TemplateLoader)
        return env.loader

    def _env(self, locale: str) -> TemplateEnvironment:
        env = self._envs.get(locale)
        if env is None:
            env = new_environment(self._roots_for(locale))
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
                    loaded = load_plain(path.read_text(encoding="utf-8")) or {}  # `Yes` and `No` stay words
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
        fields = front_matter(path, path.read_text(encoding="utf-8"))[0]
        try:
            body = env.get_template(f"{name}{MJML_SUFFIX}")
            text_path = loader.find(f"{name}{TEXT_SUFFIX}")
            text = env.get_template(f"{name}{TEXT_SUFFIX}") if text_path is not None else None
        except TemplateSyntaxError as exc:
            raise TemplateError(Path(exc.filename or path), exc.lineno or 1, exc.message or str(exc)) from None
        except TemplateNotFound as exc:
            raise TemplateError(path, 1, f"template {exc.name!r} not found (extends, import or include)") from None
        preheader = compile_line(env, path, *fields["preheader"]) if "preheader" in fields else None
        compiled = _Compiled(path, compile_line(env, path, *fields["subject"]), preheader, body, text, text_path,
                             self._reads(env, loader, name, [line for _, line in fields.values()]))
        self._compiled[(name, locale)] = compiled
        return compiled

    @staticmethod
    def _reads(env: TemplateEnvironment, loader: TemplateLoader, name: str, lines: list[str]) -> Reads | None:
        def source(template: str) -> str | None:
            try:
                return loader.get_source(env, template)[0]
            except TemplateNotFound:
                return None

        reads = reads_of_templates(env, [f"{name}{MJML_SUFFIX}", f"{name}{TEXT_SUFFIX}"], source)
        for line in lines:
            found = reads_of_source(env, line)
            reads = None if reads is None or found is None else reads | found
        return reads

    def send_reads(self, name: str, locale: str, subject: str | None = None) -> Reads | None:
        """What rendering `name` in `locale` reads of its context (`subject`: an A/B subject line rendered
        with it), the renderer's own reads included; None when that cannot be known."""
        key = (name, locale, subject)
        if key not in self._send_reads:
            reads = self._compile(name, locale).reads
            if reads is not None and subject is not None:
                found = reads_of_source(self._env(locale), subject)
                reads = None if found is None else reads | found
            if len(self._send_reads) > 1000:
                self._send_reads.clear()
            self._send_reads[key] = None if reads is None else reads | IMPLICIT
        return self._send_reads[key]

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

    def _render_in(self, name: str, locale: str, context: dict[str, Any],
                   converted: ConvertedCache | None = None) -> Rendered:
        compiled = self._compile(name, locale)
        path = compiled.path
        values, links = self._prepare(context, locale)
        subject = _one_line(render_template(path, compiled.subject, values))
        if not subject:
            raise TemplateError(path, 1, "the subject is empty")
        preheader = _one_line(render_template(path, compiled.preheader, values)) if compiled.preheader else ""
        values["subject"], values["preheader"] = subject, preheader
        mjml = links.track_hrefs(render_template(path, compiled.body, values))
        html, from_mjml = (converted or self.converted).convert(path, mjml, links.issued(),
                                                                with_text=compiled.text is None)
        if compiled.text is not None:
            text_path = compiled.text_path or path
            text = render_template(text_path, compiled.text, values).strip() + "\n"
        else:
            text_path = path
            assert from_mjml is not None
            text = from_mjml
        if not text.strip():
            raise TemplateError(text_path, 1, "the text part is empty")
        return Rendered(subject=subject, html=html, text=text, locale=locale, preheader=preheader)

    def render_string(self, source: str, context: dict[str, Any], locale: str | None = None) -> str:
        """A one-line template given inline (an A/B subject line), in `locale` (default: the default locale)."""
        locale = locale or self.default_locale
        values, _ = self._prepare(context, locale)
        template = self._inline.get((locale, source))
        if template is None:
            template = compile_line(self._env(locale), Path("<inline>"), 1, source)
            self._inline[(locale, source)] = template
        return _one_line(render_template(Path("<inline>"), template, values))

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
                    # converted alone: the samples would only take the cache's room from real emails
                    rendered = self._render_in(name, locale, context, _CONVERTED_ALONE)
                    _shows_the_postal_address(self._compile(name, locale), rendered)
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


def _shows_the_postal_address(compiled: _Compiled, rendered: Rendered) -> None:
    """Every email shows the shop's postal address (LIFECYCLE_SENDER_ADDRESS), in both parts."""
    missing = [part for part, content in (("HTML", rendered.html), ("text", rendered.text))
               if SAMPLE_POSTAL_ADDRESS not in content]
    if missing:
        path = compiled.text_path if missing == ["text"] and compiled.text_path else compiled.path
        raise TemplateError(path, 1, f"the {' and '.join(missing)} part does not show the shop's postal address: "
                            "extend _base.mjml (its footer shows it), or show {{ shop.address }} in your footer")


def _one_line(text: str) -> str:
    # not str.split(): that would also break the no-break spaces of "Total : 59,00 €"
    return _WHITESPACE.sub(" ", text).strip(" ")
