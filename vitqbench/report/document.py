"""A report as a few block types, rendered to Markdown and to self-contained HTML.

Every string in a block is text, never markup: names from metadata, labels, dataset names and file
paths are escaped by each renderer, so ``<img onerror=...>``, a ``## heading`` or a ``|`` in a name
shows as those characters and cannot break the document. Formatting comes only from the block types.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Strong:
    text: str


@dataclass
class Code:
    text: str


Inline = str | Strong | Code


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    parts: list[Inline]
    note: bool = False  # a call-out (Markdown blockquote)


@dataclass
class Bullets:
    items: list[list[Inline]]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned column indices


@dataclass
class Image:
    path: Path  # the PNG on disk
    href: str  # how report.md links it (relative to the report)
    caption: str


Block = Heading | Para | Bullets | Table | Image

# Markdown's inline markup characters, escaped with a backslash; an underscore inside a word opens no
# emphasis (CommonMark), so `deit_small_patch16` stays readable in the raw file.
_MD_SPECIAL = re.compile(r"[\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_MD_LINE_START = re.compile(r"^([#>+=-])|^(\d+)([.)])")


def md_text(text: str) -> str:
    """``text`` as literal Markdown inline text (a table cell, a span): entities for ``& < >``,
    backslashes before markup characters, whitespace runs (newlines too) as one space."""
    text = re.sub(r"\s+", " ", str(text))
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), html.escape(text, quote=False))


def _md_line(text: str) -> str:
    """Escape what would make a line a heading, quote, list item or setext underline."""
    return _MD_LINE_START.sub(lambda m: "\\" + m.group(1) if m.group(1) else m.group(2) + "\\" + m.group(3), text)


def _md_inline(parts: list[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Strong):
            out.append(f"**{md_text(part.text)}**")
        elif isinstance(part, Code):
            out.append(_md_code(part.text))
        else:
            out.append(md_text(part))
    return "".join(out)


def _md_code(text: str) -> str:
    text = re.sub(r"\s+", " ", str(text))
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}" if text.startswith("`") or text.endswith("`") else f"{fence}{text}{fence}"


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + _md_line(md_text(block.text)), ""]
        elif isinstance(block, Para):
            lines += [("> " if block.note else "") + _md_line(_md_inline(block.parts)), ""]
        elif isinstance(block, Bullets):
            lines += [f"- {_md_line(_md_inline(item))}" for item in block.items] + [""]
        elif isinstance(block, Table):
            align = ["---:" if i in block.numeric else "---" for i in range(len(block.header))]
            lines.append("| " + " | ".join(md_text(h) for h in block.header) + " |")
            lines.append("|" + "|".join(align) + "|")
            lines += ["| " + " | ".join(md_text(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Image):
            lines += [f"![{md_text(block.caption)}]({_md_href(block.href)})", ""]
    return "\n".join(lines)


def _md_href(href: str) -> str:
    return "<" + href.replace("<", "%3C").replace(">", "%3E") + ">"


def _html_inline(parts: list[Inline]) -> str:
    out = []
    for part in parts:
        if isinstance(part, Strong):
            out.append(f"<strong>{html.escape(part.text)}</strong>")
        elif isinstance(part, Code):
            out.append(f"<code>{html.escape(part.text)}</code>")
        else:
            out.append(html.escape(part))
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
h3{font-size:1.05em;margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.86em}
th,td{border:1px solid #d0d0d0;padding:.25em .55em;vertical-align:top}
th{background:#f3f3f3;text-align:left}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#fafafa}
blockquote{margin:.8em 0;padding:.4em .9em;border-left:4px solid #e0a800;background:#fff8e1}
figure{margin:1em 0 2em}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}code{background:#f3f3f3;padding:0 .25em}
"""


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained page: inline CSS, images embedded as base64 PNG, nothing fetched."""
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            body.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Para):
            inner = _html_inline(block.parts)
            body.append(f"<blockquote>{inner}</blockquote>" if block.note else f"<p>{inner}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>"
                + "".join(
                    f'<td class="num">{html.escape(c)}</td>' if i in block.numeric else f"<td>{html.escape(c)}</td>"
                    for i, c in enumerate(row)
                )
                + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            caption = html.escape(block.caption)
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
                f"<figcaption>{caption}</figcaption></figure>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        # No network: a strict policy keeps the page from fetching anything, even if a name slipped through.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
