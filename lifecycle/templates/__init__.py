"""Email templates: a `Subject:` line, a blank line, then a Jinja2 body.

Rendering is sandboxed (no reach into Python internals) with StrictUndefined:
a missing variable is an error, never an empty hole in a customer's email.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment

BUILTIN_DIR = Path(__file__).parent

SAMPLE_CONTEXT: dict[str, Any] = {
    "customer": {"customer_id": "c-sample", "email": "ana@example.com", "first_name": "Ana",
                 "last_name": "Doe", "locale": "fr"},
    "shop": {"name": "Shop", "url": "https://shop.example"},
    "journey": "sample",
    "step": 1,
    "context": {
        "cart_id": "k1", "currency": "EUR", "value": 59.0, "order_id": "o1", "year": 2026,
        "items": [{"product_id": "p1", "name": "Linen shirt", "quantity": 1, "price": 59.0}],
    },
    "links": {"unsubscribe": "https://shop.example/u", "confirm": "https://shop.example/c",
              "satisfied": "https://shop.example/s", "not_satisfied": "https://shop.example/n",
              "cart": "https://shop.example/cart"},
}


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str


class TemplateError(Exception):
    def __init__(self, path: Path, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        super().__init__(f"{path}:{line}: {message}")


class Templates:
    def __init__(self, extra_dir: Path | None = None) -> None:
        self._dirs = ([extra_dir / "templates"] if extra_dir is not None else []) + [BUILTIN_DIR]
        self._env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
        # compiled once per process: compiling is most of the cost of a render
        self._compiled: dict[str, tuple[Path, Template, Template]] = {}

    def path(self, name: str) -> Path | None:
        for directory in self._dirs:
            candidate = directory / f"{name}.txt"
            if candidate.is_file():
                return candidate
        return None

    def exists(self, name: str) -> bool:
        return self.path(name) is not None

    def _compile(self, name: str) -> tuple[Path, Template, Template]:
        cached = self._compiled.get(name)
        if cached is not None:
            return cached
        path = self.path(name)
        if path is None:
            raise TemplateError(Path(f"{name}.txt"), 1, "template not found")
        source = path.read_text(encoding="utf-8")
        head, sep, body = source.partition("\n\n")
        if not sep or not head.startswith("Subject:"):
            raise TemplateError(path, 1, "a template starts with a 'Subject:' line and a blank line")
        subject = self._compile_part(path, head.removeprefix("Subject:").strip(), 0)
        compiled = (path, subject, self._compile_part(path, body, 2))
        self._compiled[name] = compiled
        return compiled

    def _compile_part(self, path: Path, source: str, line_offset: int) -> Template:
        try:
            return self._env.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateError(path, (exc.lineno or 1) + line_offset, exc.message or str(exc)) from None

    def render(self, name: str, context: dict[str, Any]) -> Rendered:
        path, subject_template, body_template = self._compile(name)
        subject = _render_part(path, subject_template, 0, context)
        text = _render_part(path, body_template, 2, context)
        return Rendered(subject=" ".join(subject.split()), body=text)

    def render_string(self, source: str, context: dict[str, Any]) -> str:
        """A one-line template given inline (an A/B subject line)."""
        path = Path("<inline>")
        return " ".join(_render_part(path, self._compile_part(path, source, 0), 0, context).split())

    def check(self, name: str) -> None:
        self.render(name, SAMPLE_CONTEXT)


def _render_part(path: Path, template: Template, line_offset: int, context: dict[str, Any]) -> str:
    try:
        return template.render(context)
    except JinjaTemplateError as exc:
        raise TemplateError(path, _line_of(exc) + line_offset, str(exc)) from None


def _line_of(exc: BaseException) -> int:
    tb = exc.__traceback__
    line = 1
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
