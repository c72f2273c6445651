"""One self-contained HTML report per experiment run.

``write_report(path, ...)`` writes a single HTML file that opens offline with no other files: the run's title,
question and notes, the headline numbers (one table, first), the summary's tables as HTML tables (numbers
right-aligned, intervals kept as text ``97.9 [96.8, 98.8]``, wide tables scroll sideways) with any summary text in
monospace blocks, the config and provenance as JSON in collapsible blocks, a table of contents, and every figure as
an interactive plotly plot. plotly.js is embedded inline exactly once (about 4.8 MB), so the file is large but
needs no network.

A summary is a list of parts: ``SummaryTable`` (a title and a DataFrame) or a line of text. ``summary_text`` gives
the plain-text form ``summary.txt`` holds (each table as ``DataFrame.to_string``), so the text and the HTML tables
come from the same DataFrames.

Figures are grouped by the prefix of their name (``compare_p``, ``p_grid``, ``p_layers``, ``q_layers``, ...);
comparison groups (names starting with ``compare_``) come first, the others in order of first appearance, and
figures keep their given order within a group. Each figure's div has a stable id derived from its name
(``fig-<slug>``), so links into a report survive regeneration.

A tiny script at the top of the page records uncaught script errors (``window.onerror`` and unhandled promise
rejections) into a hidden ``<pre id="report-errors">``, so a headless browser check can assert that it stayed empty.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import pandas as pd
from plotly.offline import get_plotlyjs

from probekit.io import atomic_path
from probekit.reporting.figures import Figure

ERRORS_ID = "report-errors"
COMPARE_PREFIX = "compare_"

_Groups = list[tuple[str, list[tuple[Figure, str]]]]  # (group name, [(figure, its div id)]) in page order


@dataclass(frozen=True)
class SummaryTable:
    """One table of a summary: its title line, the table, whether its index is a column (``index``), a short
    ``name`` (the HTML anchor ``summary-<name>``; empty: none) and, where ``summary.txt`` keeps a layout of its own,
    that ``text`` (its lines; empty: the table as fixed-width text)."""

    title: str
    table: pd.DataFrame
    index: bool = False
    name: str = ""
    text: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """The table as summary text: the title, the table as fixed-width text (or ``text``), a blank line."""
        if self.text:
            return [self.title, *self.text, ""]
        return [self.title, self.table.to_string(index=self.index), ""]


SummaryPart: TypeAlias = SummaryTable | str  # a table, or one line of text


def summary_text(parts: Iterable[SummaryPart]) -> str:
    """The summary as plain text (``summary.txt``): every part's lines joined by newlines."""
    return "\n".join(line for p in parts for line in (p.lines() if isinstance(p, SummaryTable) else [p]))


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.45; color: #222;
       max-width: 1200px; margin: 0 auto; padding: 1rem 1.5rem 4rem; }
h1 { margin-bottom: 0.2rem; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h3 { margin: 1.8rem 0 0.4rem; font-size: 1.05rem; font-family: ui-monospace, Menlo, Consolas, monospace; }
h3.table-title { font-family: inherit; font-size: 0.95rem; margin-top: 1.2rem; }
.table-wrap { overflow-x: auto; margin: 0.3rem 0 1.2rem; }
table.summary { border-collapse: collapse; font-size: 0.85rem; white-space: nowrap; }
table.summary th, table.summary td { padding: 0.2rem 0.7rem; text-align: left; border-bottom: 1px solid #e1e4e8; }
table.summary thead th { border-bottom: 2px solid #bbb; vertical-align: bottom; }
table.summary tbody tr:nth-child(even) { background: #f6f8fa; }
table.summary .num { text-align: right; font-variant-numeric: tabular-nums; }
table.headline { font-size: 0.95rem; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; padding: 0.8rem; overflow-x: auto;
      font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85rem; line-height: 1.3; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; font-weight: 600; }
nav ul { columns: 2; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.85rem; }
nav li { break-inside: avoid; }
.figure { overflow-x: auto; }
.notes { white-space: pre-wrap; }
.top { font-size: 0.8rem; font-weight: normal; margin-left: 0.6rem; }
"""

# Runs before plotly.js and every figure script; appends each uncaught error to the hidden <pre>.
_ERROR_SCRIPT = """
(function () {
  var box = document.getElementById("ERRORS_ID");
  function record(msg) { box.textContent += String(msg) + "\\n"; }
  window.onerror = function (msg, src, line, col) { record(msg + " (" + src + ":" + line + ":" + col + ")"); };
  window.addEventListener("unhandledrejection", function (e) { record("unhandled rejection: " + e.reason); });
})();
""".replace("ERRORS_ID", ERRORS_ID)


def write_report(
    path: Path,
    *,
    title: str,
    question: str,
    config: dict[str, Any],
    provenance: dict[str, Any] | None,
    summary: str | Sequence[SummaryPart],
    figures: list[Figure],
    notes: str = "",
    headline: SummaryTable | None = None,
) -> Path:
    """Write the run's self-contained HTML report to ``path`` atomically; return ``path``. ``summary``: its parts
    (tables become HTML tables, text lines monospace blocks) or one text, shown as is; ``headline``: the table of
    key numbers shown first."""
    path = Path(path)
    groups = group_figures(figures)
    parts: list[SummaryPart] = [summary] if isinstance(summary, str) else list(summary)
    page = "".join(_page(title, question, config, provenance, parts, headline, groups, notes))
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def figure_ids(names: Iterable[str]) -> list[str]:
    """A stable, unique HTML id per figure: ``fig-<slug of name>``, with ``-2``, ``-3``... on collisions."""
    ids: list[str] = []
    used: set[str] = set()
    last: dict[str, int] = {}  # base -> last suffix tried, so many equal names stay linear
    for name in names:
        base = "fig-" + _slug(name)
        candidate, n = base, last.get(base, 1)
        while candidate in used:
            n += 1
            candidate = f"{base}-{n}"
        last[base] = n
        ids.append(candidate)
        used.add(candidate)
    return ids


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "figure"


def group_key(name: str) -> str:
    """The group a figure belongs to: the first two ``_``-separated parts of its name (``p_grid``, ``compare_q``)."""
    return "_".join(name.split("_")[:2])


def group_figures(figures: list[Figure]) -> _Groups:
    """(group, [(figure, div id)]) pairs: ``compare_*`` groups first, others by first appearance (order kept)."""
    groups: dict[str, list[tuple[Figure, str]]] = {}
    for f, div_id in zip(figures, figure_ids(f.name for f in figures)):
        groups.setdefault(group_key(f.name), []).append((f, div_id))
    compare = [(k, v) for k, v in groups.items() if k.startswith(COMPARE_PREFIX)]
    rest = [(k, v) for k, v in groups.items() if not k.startswith(COMPARE_PREFIX)]
    return compare + rest


def _page(
    title: str,
    question: str,
    config: dict[str, Any],
    provenance: dict[str, Any] | None,
    summary: list[SummaryPart],
    headline: SummaryTable | None,
    groups: _Groups,
    notes: str,
) -> Iterable[str]:
    esc = html.escape
    yield f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{esc(title)}</title>\n'
    yield f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{_CSS}</style>\n</head>\n'
    yield f'<body id="top">\n<pre id="{ERRORS_ID}" hidden></pre>\n<script>{_ERROR_SCRIPT}</script>\n'
    yield f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
    yield f"<h1>{esc(title)}</h1>\n"
    if question:
        yield f'<p class="notes"><strong>Question:</strong> {esc(question)}</p>\n'
    if notes:
        yield f'<p class="notes"><strong>Notes:</strong> {esc(notes)}</p>\n'
    if headline is not None:
        yield '<h2 id="headline">Headline numbers</h2>\n'
        yield _table_section(headline, "summary headline")
    yield '<h2 id="summary">Summary</h2>\n'
    yield from _summary_parts(summary)
    yield _json_details("Config", config)
    yield _json_details("Provenance", provenance)
    yield from _toc(groups)
    for key, figs in groups:
        yield from _group_section(key, figs)
    yield "</body>\n</html>\n"


def _summary_parts(parts: list[SummaryPart]) -> Iterable[str]:
    """Each table as an HTML table, each run of text lines as one monospace block (blank runs left out)."""
    text: list[str] = []
    for p in [*parts, None]:  # None: the end, which flushes the last run of text
        if isinstance(p, str):
            text.append(p)
            continue
        block = "\n".join(text).strip("\n")
        if block.strip():
            yield f'<pre class="summary-text">{html.escape(block)}</pre>\n'
        text = []
        if p is not None:
            yield _table_section(p)


def _table_section(t: SummaryTable, css: str = "summary") -> str:
    """A summary table: its title as a heading, then the table in a box that scrolls sideways when wide."""
    anchor = f' id="summary-{_slug(t.name)}"' if t.name else ""
    title = html.escape(t.title.rstrip(":"))
    return (f'<section{anchor}>\n<h3 class="table-title">{title}</h3>\n'
            f'<div class="table-wrap">{html_table(t.table, t.index, css)}</div>\n</section>\n')  # fmt: skip


_NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?%?( \[-?\d+(\.\d+)?, -?\d+(\.\d+)?\]| ± .*)?")  # 97.9 [96.8, 98.8]


def html_table(table: pd.DataFrame, index: bool = False, css: str = "summary") -> str:
    """``table`` as an HTML table: cells as the summary text shows them (missing ones ``-``), columns of numbers
    (with or without an interval, or a mean ± sd) right-aligned, the index as the first column when ``index``."""
    frame = table.reset_index() if index else table
    columns = ["" if index and i == 0 and table.index.name is None else str(c) for i, c in enumerate(frame.columns)]
    cells = [[_cell_text(v) for v in frame.iloc[:, i]] for i in range(frame.shape[1])]
    numeric = [bool(col) and all(v == "-" or _NUMBER.fullmatch(v) for v in col) for col in cells]

    def cls(i: int) -> str:
        return ' class="num"' if numeric[i] else ""

    head = "".join(f"<th{cls(i)}>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{html.escape(col[r])}</td>" for i, col in enumerate(cells)) + "</tr>\n"
        for r in range(len(frame))
    )
    return f'<table class="{css}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'


def _cell_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _json_details(label: str, value: dict[str, Any] | None) -> str:
    if value is None:
        return f"<details><summary>{html.escape(label)}</summary><p>(none recorded)</p></details>\n"
    text = json.dumps(value, indent=2, default=str, ensure_ascii=False)
    return f"<details><summary>{html.escape(label)}</summary>\n<pre>{html.escape(text)}</pre>\n</details>\n"


def _toc(groups: _Groups) -> Iterable[str]:
    if not groups:
        yield "<h2>Figures</h2>\n<p>(no figures)</p>\n"
        return
    total = sum(len(figs) for _, figs in groups)
    yield f'<h2>Figures ({total})</h2>\n<nav aria-label="Figures">\n'
    for key, figs in groups:
        yield f'<details open><summary><a href="#group-{_slug(key)}">{html.escape(key)}</a> ({len(figs)})</summary>\n'
        yield "<ul>\n"
        for f, div_id in figs:
            yield f'<li><a href="#{div_id}">{html.escape(f.name)}</a></li>\n'
        yield "</ul>\n</details>\n"
    yield "</nav>\n"


def _group_section(key: str, figs: list[tuple[Figure, str]]) -> Iterable[str]:
    yield f'<section id="group-{_slug(key)}">\n<h2>{html.escape(key)} ({len(figs)})</h2>\n'
    for f, div_id in figs:
        yield f'<h3>{html.escape(f.name)}<a class="top" href="#top">top</a></h3>\n'
        yield f'<div class="figure">{_figure_div(f, div_id)}</div>\n'
    yield "</section>\n"


def _figure_div(f: Figure, div_id: str) -> str:
    """The figure as a plotly div plus its drawing script (plotly.js itself is embedded once, at the top)."""
    return f.fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, default_height="500px")
