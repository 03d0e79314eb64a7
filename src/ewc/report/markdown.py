"""The report as Markdown (CommonMark + tables): figures linked as relative paths to plots/*.png.

Text is backslash-escaped, so a strategy name or a note holding markup or HTML shows as text.
"""

from __future__ import annotations

import re

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

# ASCII punctuation that starts markup (emphasis, code, links, HTML, table cells); CommonMark
# lets any of them be escaped by a backslash.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#])")


def render_markdown(document: Document) -> str:
    """The Markdown text of ``document``."""
    parts = [f"# {_escape(document.title)}", *(_block(block) for block in document.blocks)]
    return "\n\n".join(parts) + "\n"


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", " ".join(text.splitlines()))


def _code(text: str) -> str:
    """An inline code span that holds ``text`` whatever backticks it contains."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _inline(parts: Parts) -> str:
    return render_inline(
        parts, text=_escape, code=_code, strong=lambda text: f"**{_escape(text)}**"
    )


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {_escape(block.text)}"
    if isinstance(block, Paragraph):
        return _inline(block.parts)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_inline(item)}" for item in block.items)
    if isinstance(block, Callout):
        lines = [f"> **⚠ {_escape(block.title)}**", ">"]
        lines += [f"> - {_inline(item)}" for item in block.items]
        return "\n".join(lines)
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return f"![{_escape(block.alt)}]({block.path})\n\n*{_inline(block.caption)}*"
    if isinstance(block, Preformatted):
        fence = "`" * max([3, *(len(run) + 1 for run in re.findall("`+", block.text))])
        return f"{fence}{block.language}\n{block.text}\n{fence}"
    raise TypeError(f"no Markdown rendering for block {type(block).__name__}")


def _table(table: Table) -> str:
    def row(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(_escape(cell) for cell in cells) + " |"

    align = "---:" if table.numeric else ":---"
    rule = "| " + " | ".join([":---", *(align for _ in table.header[1:])]) + " |"
    lines = [row(table.header), rule, *(row(cells) for cells in table.rows)]
    if table.caption:
        lines += ["", _inline(table.caption)]
    return "\n".join(lines)
