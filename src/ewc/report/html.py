"""The report as one self-contained HTML file: inline CSS, PNGs as data URIs, no script.

Every piece of text is escaped here, so a strategy name or a note holding markup shows as text.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from html import escape

from ewc.report.blocks import (
    Block,
    Bullets,
    Callout,
    Document,
    Figure,
    Heading,
    Paragraph,
    Parts,
    Preformatted,
    Table,
    render_inline,
)

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .6em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d6d6d6; padding: .25em .7em; }
th { background: #f3f4f6; font-weight: 600; }
th { text-align: left; }
table.numeric td:not(:first-child), table.numeric th:not(:first-child) { text-align: right; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: .9em; padding-top: .3em; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: .92em; max-width: 900px; }
pre { background: #f6f8fa; padding: .8em 1em; overflow-x: auto; font-size: .85em; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .92em; }
.callout { border-left: 5px solid; padding: .6em 1em; margin: 1em 0; border-radius: 3px; }
.callout.warning { border-color: #d97706; background: #fff7e6; }
.callout p { margin: .3em 0; }
.callout ul { margin: .3em 0; padding-left: 1.3em; }
"""


def render_html(document: Document, read_image: Callable[[str], bytes]) -> str:
    """The HTML page of ``document``; ``read_image(path)`` gives the PNG bytes of each figure."""
    body = "\n".join(_block(block, read_image) for block in document.blocks)
    title = escape(document.title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
    )


def _block(block: Block, read_image: Callable[[str], bytes]) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.parts)}</p>"
    if isinstance(block, Bullets):
        return _list(block.items)
    if isinstance(block, Callout):
        items = _list(block.items) if len(block.items) > 1 else f"<p>{_inline(block.items[0])}</p>"
        title = f"<p><strong>{escape(block.title)}</strong></p>"
        return f'<div class="callout {escape(block.kind)}">{title}{items}</div>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block, read_image(block.path))
    if isinstance(block, Preformatted):
        return f"<pre>{escape(block.text)}</pre>"
    raise TypeError(f"no HTML rendering for block {type(block).__name__}")


def _inline(parts: Parts) -> str:
    return render_inline(
        parts,
        text=escape,
        code=lambda text: f"<code>{escape(text)}</code>",
        strong=lambda text: f"<strong>{escape(text)}</strong>",
    )


def _list(items: tuple[Parts, ...]) -> str:
    return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in table.header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows
    )
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    kind = ' class="numeric"' if table.numeric else ""
    return f"<table{kind}>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure(figure: Figure, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{escape(figure.alt)}">'
        f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
    )
