"""Plotly figures from probe-results tables (see ``probekit.results``).

``render_figures(df, out_dir)`` draws every figure a table supports and writes each as ``<name>.html``,
``<name>.png`` and ``<name>.csv`` (the exact rows the figure shows):

- ``p_layers_<model>_<target>``: P-probe accuracy, one heatmap (layer x attribute) per position.
- ``p_grid_<model>_<target>``: the paper's P-probing figure: position x attribute at one layer (default: last).
- ``q_layers_<model>_<target>``: Q-probe accuracy by layer, one line per attribute, majority baseline dashed.
- ``compare_p_<target>`` / ``compare_q_<target>``: several models side by side (only when the table holds
  more than one model): P grids at the chosen layer, and Q accuracy per attribute at the chosen layer.

HTML files load plotly.js from ``plotly.min.js`` written once beside them (viewable offline). PNG export uses
kaleido (needs Chromium: ``apt-get install chromium``); if it fails, the HTML and CSV are still written and the
error is returned in ``RenderReport.png_error``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from probekit.data.pools import ATTRIBUTES
from probekit.io import atomic_path
from probekit.results import normalise

log = logging.getLogger(__name__)

_SCALE = "Blues"


@dataclass
class Figure:
    name: str  # file stem
    fig: go.Figure
    data: pd.DataFrame  # the rows shown


@dataclass
class RenderReport:
    files: list[Path] = field(default_factory=list)
    png_error: str | None = None  # why PNG export failed (HTML and CSV were still written)


def slug(text: str) -> str:
    """A file-name-safe version of a model name."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_")
    return s or "model"


def _order(values: pd.Series, canonical: tuple[str, ...] = ATTRIBUTES) -> list[str]:
    present = list(dict.fromkeys(values.astype(str)))
    return [a for a in canonical if a in present] + [a for a in present if a not in canonical]


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "ok"]


def _pct(x: float) -> str:
    return "" if pd.isna(x) else f"{100 * x:.0f}"


def _heat(sub: pd.DataFrame, rows: str, cols: str, row_order: list, col_order: list[str]) -> go.Heatmap:
    piv = sub.pivot_table(index=rows, columns=cols, values="accuracy", aggfunc="mean")
    piv = piv.reindex(index=row_order, columns=col_order)
    base = sub.pivot_table(index=rows, columns=cols, values="baseline", aggfunc="mean")
    base = base.reindex(index=row_order, columns=col_order)
    text = [[_pct(v) for v in r] for r in piv.to_numpy()]
    custom = base.to_numpy()
    return go.Heatmap(
        z=piv.to_numpy(), x=col_order, y=[str(r) for r in row_order], zmin=0, zmax=1, colorscale=_SCALE,
        text=text, texttemplate="%{text}", customdata=custom, coloraxis="coloraxis",
        hovertemplate=f"{cols}=%{{x}}<br>{rows}=%{{y}}<br>accuracy=%{{z:.3f}}<br>baseline=%{{customdata:.3f}}"
        "<extra></extra>",
    )  # fmt: skip


def _final_layer(df: pd.DataFrame) -> int:
    return int(df["layer"].max())


def p_layer_heatmaps(df: pd.DataFrame, model: str, target: str, hook: str = "resid") -> Figure | None:
    """One layer x attribute heatmap per position (P-probes of one model and target kind)."""
    sub = _ok(df[(df.model == model) & (df.probe_kind == "p") & (df.target_kind == target) & (df.hook == hook)])
    if sub.empty:
        return None
    positions = _order(sub["position"])
    attrs = _order(sub["attribute"])
    layers = sorted(int(v) for v in sub["layer"].unique())
    cols = min(3, len(positions))
    nrows = (len(positions) + cols - 1) // cols
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=[f"read before {p}" for p in positions],
                        horizontal_spacing=0.07, vertical_spacing=0.22 if nrows > 1 else 0.1)  # fmt: skip
    for i, pos in enumerate(positions):
        s = sub[sub.position == pos]
        fig.add_trace(_heat(s, "layer", "attribute", layers, attrs), row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(
        title=f"P-probe accuracy by layer ({target}) - {model}", coloraxis={"colorscale": _SCALE, "cmin": 0, "cmax": 1},
        height=360 * nrows + 120, width=400 * cols + 160,
    )  # fmt: skip
    fig.update_yaxes(title_text="layer", autorange="reversed")
    fig.update_xaxes(tickangle=-40)
    return Figure(f"p_layers_{slug(model)}_{target}", fig, sub)


def p_position_grid(
    df: pd.DataFrame, model: str, target: str, layer: int | None = None, hook: str = "resid"
) -> Figure | None:
    """The paper's P-probing figure: rows = read position, columns = attribute predicted, at one layer."""
    sub = _ok(df[(df.model == model) & (df.probe_kind == "p") & (df.target_kind == target) & (df.hook == hook)])
    if sub.empty:
        return None
    layer = _final_layer(sub) if layer is None else layer
    sub = sub[sub.layer == layer]
    if sub.empty:
        return None
    positions, attrs = _order(sub["position"]), _order(sub["attribute"])
    fig = go.Figure(_heat(sub, "position", "attribute", positions, attrs))
    fig.update_layout(
        title=f"P-probe accuracy at layer {layer} ({target}) - {model}",
        coloraxis={"colorscale": _SCALE, "cmin": 0, "cmax": 1}, width=720, height=520,
    )  # fmt: skip
    fig.update_yaxes(title_text="read at the token before", autorange="reversed")
    fig.update_xaxes(title_text="attribute predicted")
    return Figure(f"p_grid_{slug(model)}_{target}", fig, sub)


def q_by_layer(df: pd.DataFrame, model: str, target: str, hook: str = "resid") -> Figure | None:
    """Q-probe accuracy by layer: one solid line per attribute, its majority baseline dashed."""
    sub = _ok(df[(df.model == model) & (df.probe_kind == "q") & (df.target_kind == target) & (df.hook == hook)])
    if sub.empty:
        return None
    sub = sub.sort_values("layer")
    fig = go.Figure()
    palette = pio.templates["plotly"].layout.colorway
    for i, attr in enumerate(_order(sub["attribute"])):
        s = sub[sub.attribute == attr]
        color = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=s["layer"], y=s["accuracy"], mode="lines+markers", name=attr,
                                 line={"color": color}, legendgroup=attr))  # fmt: skip
        fig.add_trace(go.Scatter(x=s["layer"], y=s["baseline"], mode="lines", name=f"{attr} baseline",
                                 line={"color": color, "dash": "dash", "width": 1}, legendgroup=attr,
                                 showlegend=False))  # fmt: skip
    fig.update_layout(title=f"Q-probe accuracy at the last name token ({target}) - {model}",
                      xaxis_title="layer", yaxis_title="test accuracy (dashed: majority baseline)",
                      yaxis_range=[0, 1.02], width=760, height=480)  # fmt: skip
    return Figure(f"q_layers_{slug(model)}_{target}", fig, sub)


def _per_model_layer(
    sub: pd.DataFrame, layer: int | None
) -> tuple[list[str], list[pd.DataFrame], pd.DataFrame] | None:
    """For a comparison figure: the models (at least two), each one's rows at ``layer`` (default its last), and
    those rows together; None when there is nothing to compare."""
    models = list(dict.fromkeys(sub["model"].astype(str)))
    if len(models) < 2:
        return None
    parts = []
    for m in models:
        s = sub[sub.model == m]
        parts.append(s[s.layer == (_final_layer(s) if layer is None else layer)])
    both = pd.concat(parts)
    return None if both.empty else (models, parts, both)


def compare_p(df: pd.DataFrame, target: str, layer: int | None = None, hook: str = "resid") -> Figure | None:
    """P-probe position x attribute grids of several models side by side (each at ``layer``, default its last)."""
    sub = _ok(df[(df.probe_kind == "p") & (df.target_kind == target) & (df.hook == hook)])
    picked = _per_model_layer(sub, layer)
    if picked is None:
        return None
    models, parts, sub = picked
    positions, attrs = _order(sub["position"]), _order(sub["attribute"])
    titles = [f"{m} (layer {int(p['layer'].iloc[0])})" if len(p) else m for m, p in zip(models, parts)]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=titles, shared_yaxes=True, horizontal_spacing=0.03)
    for i, (m, s) in enumerate(zip(models, parts)):
        if len(s):
            fig.add_trace(_heat(s, "position", "attribute", positions, attrs), row=1, col=i + 1)
    fig.update_layout(title=f"P-probe accuracy ({target}), models side by side",
                      coloraxis={"colorscale": _SCALE, "cmin": 0, "cmax": 1},
                      width=380 * len(models) + 160, height=500)  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    return Figure(f"compare_p_{target}", fig, sub)


def compare_q(df: pd.DataFrame, target: str, layer: int | None = None, hook: str = "resid") -> Figure | None:
    """Q-probe accuracy per attribute for several models (grouped bars at ``layer``, default each model's last),
    with each model's majority baseline as a hatched bar inside its accuracy bar."""
    sub = _ok(df[(df.probe_kind == "q") & (df.target_kind == target) & (df.hook == hook)])
    picked = _per_model_layer(sub, layer)
    if picked is None:
        return None
    models, parts, sub = picked
    attrs = _order(sub["attribute"])
    fig = go.Figure()
    for m, s in zip(models, parts):
        s = s.set_index("attribute").reindex(attrs)
        fig.add_trace(go.Bar(x=attrs, y=s["accuracy"], name=m, text=[_pct(v) for v in s["accuracy"]],
                             textposition="outside", offsetgroup=m))  # fmt: skip
        fig.add_trace(go.Bar(x=attrs, y=s["baseline"], name=f"{m} baseline", offsetgroup=m, showlegend=False,
                             marker={"color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 1.5},
                                     "pattern": {"shape": "/", "fgcolor": "black"}},
                             hovertemplate="baseline %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=f"Q-probe accuracy at the name ({target}), models side by side",
                      yaxis_title="test accuracy (hatched: majority baseline)", yaxis_range=[0, 1.1],
                      barmode="group", width=max(760, 140 * len(models) * 2), height=480)  # fmt: skip
    return Figure(f"compare_q_{target}", fig, sub)


def build_figures(df: pd.DataFrame, layer: int | None = None) -> list[Figure]:
    """Every figure the table supports (see the module docstring)."""
    df = normalise(df)
    figs: list[Figure | None] = []
    hooks = list(dict.fromkeys(df["hook"].astype(str)))
    for hook in hooks:
        sfx = "" if hook == "resid" else f"_{hook}"
        h = df[df.hook == hook]
        for target in _order(h["target_kind"], ("first_token", "value")):
            for model in dict.fromkeys(h["model"].astype(str)):
                for f in (p_layer_heatmaps(h, model, target, hook), p_position_grid(h, model, target, layer, hook),
                          q_by_layer(h, model, target, hook)):  # fmt: skip
                    if f is not None:
                        f.name += sfx
                    figs.append(f)
            for f in (compare_p(h, target, layer, hook), compare_q(h, target, layer, hook)):
                if f is not None:
                    f.name += sfx
                figs.append(f)
    return [f for f in figs if f is not None]


def check_layer(df: pd.DataFrame, layer: int | None, flag: str = "--layer") -> None:
    """Refuse a figure layer that some model's P-probes do not have (its grids would be dropped silently)."""
    if layer is None:
        return
    from probekit.errors import UserError

    p = normalise(df)
    p = p[(p["probe_kind"] == "p") & (p["status"] == "ok")]
    for model, g in p.groupby("model", sort=False):
        have = sorted(int(v) for v in g["layer"].dropna().unique())
        if have and layer not in have:
            raise UserError(f"{flag} {layer}: model {model!r} has P-probe results at layers {have[0]}..{have[-1]} "
                            f"only; choose one of {have} (or omit {flag} for each model's last layer)")  # fmt: skip


def render_figures(df: pd.DataFrame, out_dir: str | Path, layer: int | None = None, png: bool = True,
                   provenance: dict | None = None) -> RenderReport:  # fmt: skip
    """Write every figure the table supports as HTML + CSV (+ PNG unless ``png=False``) into ``out_dir``
    (``write_figures``)."""
    check_layer(df, layer)
    return write_figures(build_figures(df, layer), out_dir, png, provenance)


def write_figures(figures: list[Figure], out_dir: str | Path, png: bool = True,
                  provenance: dict | None = None) -> RenderReport:  # fmt: skip
    """Write ``figures`` (any ``Figure`` list, e.g. ``probekit.patching.patch_figures``) as HTML + CSV (+ PNG unless
    ``png=False``) into ``out_dir``.

    HTML and CSV are written first; PNG export (``probekit.png_export``) runs afterwards in one bounded child
    process, so a browser that never answers costs a time limit, never the figures. ``provenance`` (a
    ``probekit.provenance.record``; default: a record of this process) goes to ``out_dir/provenance.json`` with
    the list of figure files, into each HTML file as a trailing comment and into each PNG as a text chunk.
    """
    from probekit import provenance as prov
    from probekit.io import atomic_write_json
    from probekit.png_export import write_pngs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = RenderReport()
    rec = provenance if provenance is not None else prov.record()
    stamp = prov.compact(rec)
    comment = "\n<!-- probekit provenance: " + json.dumps(stamp, sort_keys=True).replace("--", "- -") + " -->\n"
    for f in figures:
        html, csv = out / f"{f.name}.html", out / f"{f.name}.csv"
        with atomic_path(html) as tmp:
            f.fig.write_html(tmp, include_plotlyjs="directory")
            with open(tmp, "a", encoding="utf-8") as fh:
                fh.write(comment)
        with atomic_path(csv) as tmp:
            f.data.to_csv(tmp, index=False)
        report.files += [html, csv]
    if png and figures:
        pngs = [out / f"{f.name}.png" for f in figures]
        items = [(f.fig, p, f.fig.layout.width or 760, f.fig.layout.height or 500, 1.0) for f, p in zip(figures, pngs)]
        error = write_pngs(items, provenance=stamp)
        if error is None:
            report.files += pngs
        else:  # kaleido/Chromium problems of every kind, a hang included: keep the HTML, say why
            report.png_error = (
                f"{error}; the HTML and CSV files were written. PNG export needs Chromium for kaleido: run "
                "`apt-get install -y chromium` (or `plotly_get_chrome`)"
            )
            log.warning(report.png_error)
    atomic_write_json(out / prov.PROVENANCE_FILE, {**rec, "figures": sorted(p.name for p in report.files)})
    # plotly writes plotly.min.js beside a temp file's name: it is the shared offline copy, keep it once
    stray = [p for p in out.glob(".*plotly.min.js")]
    for p in stray:
        os.unlink(p)
    return report
