"""What rendering gives back: a Rendered email, or a TemplateError at a file and line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
