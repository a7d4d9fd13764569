"""MJML helpers: the plain-text part derived from rendered MJML, and a check for unknown elements.

The text part is read from the rendered MJML rather than from the compiled HTML: the MJML
says what is a paragraph, a button or an image, where the HTML is nested layout tables.
An element with `css-class="html-only"` (a logo, a decorative image) is left out of the text.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

KNOWN_ELEMENTS = frozenset({
    "mjml", "mj-head", "mj-body", "mj-attributes", "mj-all", "mj-class", "mj-breakpoint", "mj-font",
    "mj-html-attributes", "mj-html-attribute", "mj-selector", "mj-preview", "mj-style", "mj-title",
    "mj-accordion", "mj-accordion-element", "mj-accordion-title", "mj-accordion-text", "mj-button",
    "mj-carousel", "mj-carousel-image", "mj-column", "mj-divider", "mj-group", "mj-hero", "mj-image",
    "mj-include", "mj-navbar", "mj-navbar-link", "mj-raw", "mj-section", "mj-social", "mj-social-element",
    "mj-spacer", "mj-table", "mj-text", "mj-wrapper",
})
HTML_ONLY_CLASS = "html-only"
# content that is never text: the head, styles, raw HTML, and the preview (already the inbox snippet)
_SKIPPED = frozenset({"mj-head", "mj-raw", "style", "script", "head", "title"})
_VOID = frozenset({"br", "img", "hr", "meta", "link", "input", "wbr", "mj-image", "mj-divider", "mj-spacer",
                   "mj-all", "mj-class", "mj-breakpoint", "mj-font", "mj-carousel-image"})
_PARAGRAPH = frozenset({"mj-section", "mj-column", "mj-text", "mj-table", "mj-hero", "mj-wrapper", "mj-group",
                        "p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote"})
_LINE = frozenset({"li", "tr"})
_SPACES = re.compile(r"[ \t\r\n\f]+")  # not \s: no-break spaces in "59,00 €" stay
_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_BREAK = "\x00"  # a line break inside a paragraph, kept apart from collapsed whitespace


_TOKEN = re.compile(r"<!--.*?-->|<(/?)([a-zA-Z][\w:-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>|([^<]+)|<", re.DOTALL)
_ATTRIBUTE = re.compile(r"""([\w:-]+)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")


def _attributes(raw: str) -> dict[str, str]:
    return {m.group(1).lower(): html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
            for m in _ATTRIBUTE.finditer(raw)}


class _TextWriter:
    """Walks rendered MJML with a regular-expression tokenizer (html.parser is several times slower)."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.skipping: list[str] = []
        self.anchors: list[tuple[str, int]] = []
        self.button: tuple[str, int] | None = None

    def feed(self, markup: str) -> None:
        for match in _TOKEN.finditer(markup):
            closing, tag, raw, data = match.group(1, 2, 3, 4)
            if data is not None:
                if not self.skipping:
                    self.out.append(_SPACES.sub(" ", html.unescape(data)))
            elif tag is None:
                continue  # a comment, or a stray "<"
            elif closing:
                self.end(tag.lower())
            else:
                name = tag.lower()
                self.start(name, raw)
                if raw.rstrip().endswith("/") and name not in _VOID:
                    self.end(name)

    def _paragraph(self) -> None:
        self.out.append("\n\n")

    def start(self, tag: str, raw: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1] and tag not in _VOID:
                self.skipping.append(tag)
            return
        attributes = _attributes(raw) if "=" in raw else {}
        classes = (attributes.get("css-class", "") + " " + attributes.get("class", "")).split()
        if tag in _SKIPPED or tag == "mj-preview" or HTML_ONLY_CLASS in classes:
            if tag not in _VOID:
                self.skipping.append(tag)
            return
        if tag in _PARAGRAPH:
            self._paragraph()
        elif tag in _LINE:
            self.out.append(_BREAK)
            if tag == "li":
                self.out.append("- ")
        elif tag == "br":
            self.out.append(_BREAK)
        elif tag in ("td", "th"):
            self.out.append(" ")
        elif tag in ("mj-divider", "hr"):
            self.out.append("\n\n----------\n\n")
        elif tag == "a":
            self.anchors.append((attributes.get("href", ""), len(self.out)))
        elif tag == "mj-button":
            self._paragraph()
            self.button = (attributes.get("href", ""), len(self.out))

    def end(self, tag: str) -> None:
        if self.skipping:
            if tag == self.skipping[-1]:
                self.skipping.pop()
            return
        if tag == "a" and self.anchors:
            href, start = self.anchors.pop()
            label = _inline("".join(self.out[start:]))
            target = href.removeprefix("mailto:")
            if href and target != label:
                del self.out[start:]
                self.out.append(f"{label} ({target})" if label else target)
        elif tag == "mj-button" and self.button is not None:
            href, start = self.button
            self.button = None
            label = _inline("".join(self.out[start:]))
            del self.out[start:]
            self.out.append(f"{label}{_BREAK}{href}" if href else label)
            self._paragraph()
        elif tag in _PARAGRAPH:
            self._paragraph()


def _inline(text: str) -> str:
    return _SPACES.sub(" ", text.replace(_BREAK, " ")).strip()


def mjml_to_text(mjml: str) -> str:
    """The readable text of rendered MJML: paragraphs, `label (url)` links, buttons as label and URL."""
    writer = _TextWriter()
    writer.feed(mjml)
    paragraphs: list[str] = []
    for chunk in "".join(writer.out).split("\n\n"):
        lines = [_SPACES.sub(" ", line).strip() for line in chunk.split(_BREAK)]
        text = "\n".join(line for line in lines if line)
        if text:
            paragraphs.append(text)
    return "\n\n".join(paragraphs) + "\n"


class _ElementChecker(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[tuple[int, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.startswith("mj-") and tag not in KNOWN_ELEMENTS:
            self.problems.append((self.getpos()[0], f"unknown MJML element <{tag}>"))
        if tag == "mj-include":
            self.problems.append((self.getpos()[0], "<mj-include> is not allowed: use Jinja {% include %}"))


def unknown_elements(source: str) -> list[tuple[int, str]]:
    """(line, message) for each unknown `mj-` element of a template source (Jinja tags ignored)."""
    # Jinja tags become blank, keeping their newlines, so lines still match the file
    blanked = _JINJA.sub(lambda m: "\n" * m.group(0).count("\n"), source)
    checker = _ElementChecker()
    checker.feed(blanked)
    checker.close()
    return checker.problems
