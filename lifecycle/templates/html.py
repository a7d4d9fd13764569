"""The HTML part: rendered MJML compiled to HTML (mjml-python) with its CSS inlined (css-inline),
and the open-tracking pixel the sender adds."""

from __future__ import annotations

import re
from pathlib import Path

import css_inline
from mjml import mjml2html

from lifecycle.templates.errors import TemplateError

# keep_style_tags: media queries (responsive columns) cannot be inlined and must stay in <head>;
# no remote stylesheets: rendering never reaches out to the network
_INLINER = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
_MJML_POSITION = re.compile(r"at position (\d+):(\d+)")


def with_open_pixel(html: str, pixel_url: str) -> str:
    """The HTML with a 1x1 open-tracking image as the last thing of its body."""
    pixel = (f'<img src="{pixel_url}" width="1" height="1" alt="" '
             'style="display:block;width:1px;height:1px;border:0;margin:0;padding:0;" />')
    at = html.rfind("</body>")
    return html[:at] + pixel + html[at:] if at != -1 else html + pixel


def _no_include(path: str) -> str:
    raise ValueError(f"<mj-include path={path!r}> is not allowed")


def compile_mjml(path: Path, mjml: str) -> str:
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
