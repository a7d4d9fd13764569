"""The Jinja side: front matter, the loader over the template roots, the sandboxed environment
templates run in, and rendering that reports errors at the template's own file and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, Template, TemplateNotFound, TemplateSyntaxError, pass_context
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.environment import Environment
from jinja2.loaders import split_template_path
from jinja2.runtime import Context
from jinja2.sandbox import SandboxedEnvironment

from lifecycle.templates.errors import TemplateError
from lifecycle.templates.formatting import FILTERS
from lifecycle.templates.links import Links, is_web_url, url_segment

MJML_SUFFIX = ".mjml"
TEXT_SUFFIX = ".txt"
FRONT_MATTER_KEYS = ("subject", "preheader")


def front_matter(path: Path, source: str) -> tuple[dict[str, tuple[int, str]], str]:
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


class TemplateLoader(BaseLoader):
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
            source = front_matter(path, source)[1]
        return source, str(path), lambda: True  # compiled once per process: no reload checks


@pass_context
def _track(ctx: Context, url: str, name: str | None = None) -> str:
    """`{{ track("https://...", "guide") }}`: any URL through the click tracker."""
    links = ctx.get("links")
    if not isinstance(links, Links):
        return url
    return links.track(str(url), str(name) if name is not None else None)


class TemplateEnvironment(SandboxedEnvironment):
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


def new_environment(roots: list[Path]) -> TemplateEnvironment:
    """The environment of one locale: templates found in `roots`, in order."""
    env = TemplateEnvironment(
        loader=TemplateLoader(roots),
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
    return env


def compile_line(env: SandboxedEnvironment, path: Path, line: int, source: str) -> Template:
    # padded with newlines so that an error's line is the file's
    try:
        code = env.compile("\n" * (line - 1) + source, filename=str(path))
    except TemplateSyntaxError as exc:
        raise TemplateError(path, exc.lineno or line, exc.message or str(exc)) from None
    return env.template_class.from_code(env, code, env.make_globals(None))


def render_template(path: Path, template: Template, context: dict[str, Any]) -> str:
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
