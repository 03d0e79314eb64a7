"""The report as a list of blocks, so that the HTML and the Markdown files say the same things.

The content is written once (:mod:`ewc.report.content`) as headings, paragraphs, tables, figures
and preformatted text; :mod:`ewc.report.html` and :mod:`ewc.report.markdown` render it. Text is
plain: each renderer escapes it for its own format, so user strings never become markup.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """Inline code or a file name."""

    text: str


@dataclass(frozen=True)
class Strong:
    """Emphasised inline text."""

    text: str


Inline = str | Code | Strong
Parts = tuple[Inline, ...]


def render_inline(
    parts: Parts,
    *,
    text: Callable[[str], str],
    code: Callable[[str], str],
    strong: Callable[[str], str],
) -> str:
    """``parts`` joined, each rendered by the function for its kind (plain, code or strong)."""
    out = []
    for part in parts:
        if isinstance(part, Code):
            out.append(code(part.text))
        elif isinstance(part, Strong):
            out.append(strong(part.text))
        else:
            out.append(text(part))
    return "".join(out)


@dataclass(frozen=True)
class Heading:
    """A section title; level 2 for sections, 3 for subsections (1 is the title)."""

    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """A paragraph of inline parts."""

    parts: Parts


@dataclass(frozen=True)
class Callout:
    """A paragraph that must not be missed: a subset warning, an unfinished run."""

    title: str
    items: tuple[Parts, ...]
    kind: str = "warning"


@dataclass(frozen=True)
class Bullets:
    """An unordered list, one item of inline parts each."""

    items: tuple[Parts, ...]


@dataclass(frozen=True)
class Table:
    """A table whose first column holds labels; ``numeric``: the others hold numbers."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: Parts = ()
    numeric: bool = True


@dataclass(frozen=True)
class Figure:
    """A PNG figure at ``path`` (relative to the report, POSIX separators)."""

    path: str
    alt: str
    caption: Parts


@dataclass(frozen=True)
class Preformatted:
    """Text shown verbatim in a monospace block (``language`` names it)."""

    text: str
    language: str = ""


Block = Heading | Paragraph | Callout | Bullets | Table | Figure | Preformatted


@dataclass(frozen=True)
class Document:
    """The title and the blocks of a whole report."""

    title: str
    blocks: tuple[Block, ...]
