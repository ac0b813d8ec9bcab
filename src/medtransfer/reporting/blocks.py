"""The few block types every report is made of, and their three renderers (HTML, markdown, console).

Why one set: the experiment report, the shift report, the demo and the CLI say the same kinds of
things (headings, sentences, tables, plots), so each report only decides *what* to say, as a list of
blocks, and the renderers decide how it looks. The HTML page is self-contained (plots are embedded
base64 PNGs, nothing is fetched) because a report gets mailed, archived and opened offline; its inline
script counts the plots that decoded into ``<body data-plots-loaded>`` for a headless-browser check.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Union


@dataclass
class Heading:
    text: str
    level: int = 2  # 2: a section, 3: a part of one (level 1 is the report's title)


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    title: str | None = None  # shown by the console (rich title) and HTML (caption); markdown has its headings


@dataclass
class Plot:
    png: str  # base64-encoded PNG
    alt: str
    file: str | None = None  # a PNG file next to the markdown, when the report writes one


@dataclass
class Pre:
    text: str  # shown verbatim (a config file, a log)


Block = Union[Heading, Paragraph, Bullets, Table, Plot, Pre]


def png(fig, dpi: int = 110) -> str:
    """A matplotlib ``Figure`` as base64 PNG, cropped to its content (Agg on savefig: no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def metrics_table(metrics: dict, title: str) -> Table:
    """Metric / value / 95% CI of ``{name: {"value": v, "ci": [lo, hi]}}``, as the CLI prints it; entries
    that are not metrics (the operating point, counts) are left to their own line."""
    rows = [[name, f"{m['value']:.4f}", f"[{m['ci'][0]:.4f}, {m['ci'][1]:.4f}]"] for name, m in metrics.items()
            if isinstance(m, dict) and "value" in m]
    return Table(["metric", "value", "95% CI"], rows, title=title)


# ----------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}img{max-width:100%;display:block;margin:.8em 0}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}"""
_SCRIPT = """window.addEventListener('load', function () {
  var ok = function (img) { return img.complete && img.naturalWidth > 0; };
  document.body.dataset.plotsLoaded = String(Array.prototype.filter.call(document.images, ok).length);
});"""


def _html_block(block: Block) -> str:
    e = html.escape
    if isinstance(block, Heading):
        return f"<h{block.level}>{e(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{e(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{e(t)}</li>" for t in block.items) + "</ul>"
    if isinstance(block, Table):
        caption = f"<caption>{e(block.title)}</caption>" if block.title else ""
        head = "".join(f"<th>{e(h)}</th>" for h in block.header)
        body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in block.rows)
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Plot):
        return f'<img class="plot" alt="{e(block.alt)}" src="data:image/png;base64,{block.png}">'
    if isinstance(block, Pre):
        return f"<pre>{e(block.text)}</pre>"
    raise TypeError(f"not a report block: {block!r}")


def to_html(title: str, blocks: list[Block]) -> str:
    """One self-contained HTML page: inline CSS, embedded plots, the plot-count script."""
    e = html.escape
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head>\n<body><h1>{e(title)}</h1>\n"
            + "\n".join(map(_html_block, blocks)) + "\n</body></html>\n")


# ----------------------------------------------------------------------------- markdown


def _cell(c) -> str:
    return str(c).replace("|", "\\|").replace("\n", " ")


def _markdown_block(block: Block, html_name: str) -> str | None:
    if isinstance(block, Heading):
        return "#" * block.level + " " + block.text
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Bullets):
        return "\n".join(f"- {t}" for t in block.items) or None
    if isinstance(block, Table):
        rows = [block.header, ["---"] * len(block.header)] + block.rows
        return "\n".join("| " + " | ".join(_cell(c) for c in r) + " |" for r in rows)
    if isinstance(block, Plot):
        return f"![{block.alt}]({block.file})" if block.file else f"_Plot in {html_name}: {block.alt}._"
    if isinstance(block, Pre):
        fence = "~~~~" if "```" in block.text else "```"
        return f"{fence}\n{block.text.rstrip()}\n{fence}"
    raise TypeError(f"not a report block: {block!r}")


def to_markdown(title: str, blocks: list[Block], html_name: str = "report.html") -> str:
    """Markdown for diffs and reviews; an embedded plot without a file becomes a pointer to ``html_name``."""
    parts = [_markdown_block(b, html_name) for b in blocks]
    return "\n\n".join([f"# {title}"] + [p for p in parts if p is not None]) + "\n"


# ----------------------------------------------------------------------------- console


def _rich_table(block: Table):
    from rich.markup import escape
    from rich.table import Table as RichTable

    table = RichTable(title=escape(block.title) if block.title else None)
    for column in block.header:
        table.add_column(escape(column))
    for row in block.rows:
        table.add_row(*(escape(str(c)) for c in row))
    return table


def to_console(console, blocks: list[Block]) -> None:
    """Print blocks on a rich ``Console``: tables as rich tables, a plot as a one-line note."""
    from rich.markup import escape

    for block in blocks:
        if isinstance(block, Table):
            console.print(_rich_table(block))
        elif isinstance(block, Heading):
            console.print(f"[bold]{escape(block.text)}[/bold]")
        elif isinstance(block, Paragraph):
            console.print(escape(block.text))
        elif isinstance(block, Bullets):
            for item in block.items:
                console.print(f"• {escape(item)}")
        elif isinstance(block, Plot):
            console.print(f"(plot: {escape(block.alt)}{f', {block.file}' if block.file else ''})")
        elif isinstance(block, Pre):
            console.print(block.text, markup=False, highlight=False)
        else:
            raise TypeError(f"not a report block: {block!r}")
