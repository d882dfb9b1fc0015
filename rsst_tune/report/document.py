"""A tiny document model (`Heading`, `Para`, `Code`, `Table`, `Image`, `Plot`), rendered once
to Markdown and once to self-contained HTML (images inlined as base64; interactive plots as
prepared HTML fragments, their one script library inlined once by the caller)."""

from __future__ import annotations

import base64
import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    """Plain text; `backticks` mark inline code. `warning`: set apart (a quote in Markdown, a
    highlighted box in HTML)."""

    text: str
    warning: bool = False


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str


@dataclass(frozen=True)
class Plot:
    """An interactive plot: `html`, a self-contained fragment (a div and the script drawing it,
    without the plotting library) for the HTML page; Markdown shows `fallback` (a PNG of the
    same data) or, without one, `title` and where to find the plot."""

    html: str
    title: str
    fallback: Image | None = None


Block = Heading | Para | Code | Table | Image | Plot


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render blocks as GitHub-flavoured Markdown; images are referenced by file name."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            parts.append(f"> {b.text}" if b.warning else b.text)
        elif isinstance(b, Code):
            parts.append(f"```\n{b.text}\n```")
        elif isinstance(b, Plot):
            if b.fallback is not None:
                parts.append(f"![{b.fallback.alt}]({b.fallback.path.name})")
            else:
                parts.append(f"*{b.title}: interactive plot in `report.html`.*")
        elif isinstance(b, Table):
            lines = [
                "| " + " | ".join(_md_cell(h) for h in b.headers) + " |",
                "|" + "|".join("---" for _ in b.headers) + "|",
            ]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            parts.append("\n".join(lines))
        else:
            parts.append(f"![{b.alt}]({b.path.name})")
    return "\n\n".join(parts) + "\n"


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#212529;line-height:1.45}
h1{border-bottom:2px solid #dee2e6;padding-bottom:.3em}h2{margin-top:2em;color:#343a40}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
th,td{border:1px solid #dee2e6;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f1f3f5}tr:nth-child(even) td{background:#f8f9fa}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;background:#f1f3f5;border-radius:3px}
code{padding:0 .25em}pre{padding:.7em;overflow-x:auto}
img{max-width:100%;border:1px solid #dee2e6;margin:.5em 0}
p.warning{background:#fff3bf;border-left:4px solid #f08c00;padding:.4em .7em}
.plot{border:1px solid #dee2e6;margin:.5em 0}
#report-errors{display:none}
""".strip()

# Installed before any other script: every uncaught error and rejected promise of the page is
# written into the hidden #report-errors element (and its count into data-errors on <body>),
# so a headless browser's dumped DOM says whether the page ran cleanly.
ERROR_HOOK = """
window.__reportErrors=[];
function __reportFlush(){var el=document.getElementById('report-errors');
if(el){el.textContent=window.__reportErrors.join('\\n');}
if(document.body){document.body.setAttribute('data-errors',String(window.__reportErrors.length));}}
function __reportError(text){window.__reportErrors.push(String(text));__reportFlush();}
window.addEventListener('error',function(e){__reportError((e&&e.message)||e);});
window.addEventListener('unhandledrejection',
  function(e){__reportError('unhandled rejection: '+(e&&e.reason));});
document.addEventListener('DOMContentLoaded',__reportFlush);
""".strip()

_INLINE_CODE = re.compile(r"`([^`]+)`")


# A table cell that is exactly one relative Markdown link, `[text](path)` (e.g. the export
# table's model.onnx), becomes a link in HTML too; any other cell is plain text.
_CELL_LINK = re.compile(r"\[([^\]]+)\]\(([\w./-]+)\)")


def _html_cell(text: str) -> str:
    m = _CELL_LINK.fullmatch(text)
    if m is None or m.group(2).startswith("/") or ".." in m.group(2).split("/"):
        return html.escape(text)
    return f'<a href="{html.escape(m.group(2))}">{html.escape(m.group(1))}</a>'


def _html_inline(text: str) -> str:
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str | None:
    try:
        payload = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None
    return f"data:image/png;base64,{payload}"


def to_html(blocks: Sequence[Block], title: str, *, script: str = "") -> str:
    """Render blocks as one self-contained HTML page: inline CSS, images as data URIs, and
    `script` (the library the `Plot` fragments call, e.g. plotly.js) inlined once in <head>,
    after a hook that records the page's JavaScript errors in a hidden `#report-errors`."""
    if "</script" in script.lower():
        raise ValueError("an inlined script must not contain '</script'")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style>",
        f"<script>{ERROR_HOOK}</script>",
    ]
    if script:
        parts.append(f"<script>{script}</script>")
    parts.append('</head><body data-errors="0">')
    parts.append('<pre id="report-errors"></pre>')
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = ' class="warning"' if b.warning else ""
            parts.append(f"<p{cls}>{_html_inline(b.text)}</p>")
        elif isinstance(b, Plot):
            parts.append(f'<div class="plot">{b.html}</div>')
        elif isinstance(b, Code):
            parts.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join(
                "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                for row in b.rows
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            uri = _data_uri(b.path)
            if uri is None:
                parts.append(f"<p>(plot {html.escape(b.path.name)} could not be read)</p>")
            else:
                parts.append(f'<img alt="{html.escape(b.alt)}" src="{uri}">')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
