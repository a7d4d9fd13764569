"""MJML helpers: the plain-text part derived from rendered MJML, and a check for unknown elements.

The text part is read from the rendered MJML rather than from the compiled HTML: the MJML
says what is a paragraph, a button or an image, where the HTML is nested layout tables.
An element with `css-class="html-only"` (a logo, a decorative image) is left out of the text.
"""

from __future__ import annotations

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


class _TextWriter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skipping: list[str] = []
        self.anchors: list[tuple[str, int]] = []
        self.button: tuple[str, int] | None = None

    def _paragraph(self) -> None:
        self.out.append("\n\n")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {k: v or "" for k, v in attrs}
        if self.skipping:
            if tag == self.skipping[-1] and tag not in _VOID:
                self.skipping.append(tag)
            return
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
        elif tag == "mj-divider" or tag == "hr":
            self.out.append("\n\n----------\n\n")
        elif tag == "a":
            self.anchors.append((attributes.get("href", ""), len(self.out)))
        elif tag == "mj-button":
            self._paragraph()
            self.button = (attributes.get("href", ""), len(self.out))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
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

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.out.append(_SPACES.sub(" ", data))


def _inline(text: str) -> str:
    return _SPACES.sub(" ", text.replace(_BREAK, " ")).strip()


def mjml_to_text(mjml: str) -> str:
    """The readable text of rendered MJML: paragraphs, `label (url)` links, buttons as label and URL."""
    writer = _TextWriter()
    writer.feed(mjml)
    writer.close()
    paragraphs: list[str] = []
    for chunk in "".join(writer.out).split("\n\n"):
        lines = [_SPACES.sub(" ", line).strip() for line in chunk.split(_BREAK)]
        text = "\n".join(line for line in lines if line)
        if text and not text.isspace():
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
