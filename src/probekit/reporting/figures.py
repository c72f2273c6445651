"""The one figure writer: every figure probekit draws (probes, evaluation, patching, comparisons) is written here
as ``<name>.html``, ``<name>.csv`` (the exact rows the figure shows) and ``<name>.png``.

``write_figures(figures, out_dir)`` writes the HTML and CSV of every ``Figure`` first, then all PNGs in one
bounded child process (``probekit.reporting.png_export``: a browser that never answers costs a time limit, never the
figures; a failed export is reported in ``RenderReport.png_error`` and the HTML and CSV stay). A provenance
record (``probekit.provenance``) goes into each HTML file as a trailing comment, into each PNG as a text chunk
and, with ``index=True``, into ``out_dir/provenance.json`` with the list of figure files.

HTML files load plotly.js from ``plotly.min.js`` written once beside them (``plotlyjs="directory"``: viewable
offline) or from the CDN (``plotlyjs="cdn"``: small files, as the evaluation directories have them).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probekit.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Figure:
    name: str  # file stem
    fig: Any  # a plotly.graph_objects.Figure
    data: pd.DataFrame  # the rows shown
    png_size: tuple[int, int] | None = None  # PNG width x height (None: the layout's size, else 760 x 500)
    png_scale: float = 1.0  # PNG pixels per layout pixel


@dataclass
class RenderReport:
    files: list[Path] = field(default_factory=list)
    png_error: str | None = None  # why PNG export failed (HTML and CSV were still written)


def write_figures(figures: Sequence[Figure], out_dir: str | Path, png: bool = True,
                  provenance: dict[str, Any] | None = None, plotlyjs: str = "directory",
                  index: bool = True) -> RenderReport:  # fmt: skip
    """Write ``figures`` as HTML + CSV (+ PNG unless ``png=False``) into ``out_dir`` (see the module docstring).

    ``provenance``: a ``probekit.provenance.record`` (default: a record of this process). ``index``: also write
    ``out_dir/provenance.json`` (leave it off where that file records the sessions of a run directory).
    """
    from probekit import provenance as prov
    from probekit.io import atomic_write_json
    from probekit.reporting.png_export import write_pngs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    rec = provenance if provenance is not None else prov.record()
    stamp = prov.compact(rec)
    comment = "\n<!-- probekit provenance: " + json.dumps(stamp, sort_keys=True).replace("--", "- -") + " -->\n"
    for f in figures:
        html, csv = out / f"{f.name}.html", out / f"{f.name}.csv"
        with atomic_path(html) as tmp:
            f.fig.write_html(tmp, include_plotlyjs=plotlyjs)
            with open(tmp, "a", encoding="utf-8") as fh:
                fh.write(comment)
        with atomic_path(csv) as tmp:
            f.data.to_csv(tmp, index=False)
        report.files += [html, csv]
    if png and figures:
        pngs = [out / f"{f.name}.png" for f in figures]
        items = [(f.fig, p, *_png_size(f), f.png_scale) for f, p in zip(figures, pngs)]
        error = write_pngs(items, provenance=stamp)
        if error is None:
            report.files += pngs
        else:  # kaleido/Chromium problems of every kind, a hang included: keep the HTML, say why
            report.png_error = (
                f"{error}; the HTML and CSV files were written. PNG export needs Chromium for kaleido: run "
                "`apt-get install -y chromium` (or `plotly_get_chrome`)"
            )
            log.warning(report.png_error)
    if index:
        atomic_write_json(out / prov.PROVENANCE_FILE, {**rec, "figures": sorted(p.name for p in report.files)})
    # plotly writes plotly.min.js beside a temp file's name: it is the shared offline copy, keep it once
    for p in out.glob(".*plotly.min.js"):
        os.unlink(p)
    return report


def _png_size(f: Figure) -> tuple[int, int]:
    if f.png_size is not None:
        return f.png_size
    return f.fig.layout.width or 760, f.fig.layout.height or 500


__all__ = ["Figure", "RenderReport", "write_figures"]
