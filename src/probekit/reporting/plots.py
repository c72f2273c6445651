"""Plotly figures from probe-results tables (see ``probekit.reporting.results``).

``render_figures(df, out_dir)`` draws every figure a table supports and writes each as ``<name>.html``,
``<name>.png`` and ``<name>.csv`` (the exact rows the figure shows):

- ``p_layers_<model>_<target>``: P-probe accuracy, one heatmap (layer x attribute) per position.
- ``p_grid_<model>_<target>``: the paper's P-probing figure: position x attribute at one layer (default: last).
- ``p_grid_<model>_<target>_selectivity``: the same grid of selectivity (accuracy - control-task accuracy), when
  the table has control-task probes (``control_task`` in the spec).
- ``q_layers_<model>_<target>``: Q-probe accuracy by layer, one line per attribute with its person-bootstrap
  interval as a band, majority baseline dashed, control-task accuracy dotted.
- ``compare_p_<target>`` / ``compare_q_<target>``: several models side by side (only when the table holds
  more than one model): P grids at the chosen layer, and Q accuracy per attribute at the chosen layer (error
  bars: the bootstrap interval).

With several training seeds in a table (column ``seed``), heatmaps and lines show the mean over seeds, Q lines
add each seed as a point, and bars' error bars span the seeds' range. Hovering a heatmap cell shows its interval,
baseline and number of seeds.

Files are written by ``probekit.reporting.figures.write_figures`` (the one figure writer, which evaluation figures use
too;
``Figure``, ``RenderReport`` and ``write_figures`` are re-exported here): HTML files load plotly.js from
``plotly.min.js`` written once beside them (viewable offline). PNG export uses kaleido (needs Chromium:
``apt-get install chromium``); if it fails, the HTML and CSV are still written and the error is returned in
``RenderReport.png_error``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from probekit.data.pools import ATTRIBUTES
from probekit.reporting.figures import Figure as Figure
from probekit.reporting.figures import RenderReport as RenderReport
from probekit.reporting.figures import write_figures as write_figures
from probekit.reporting.results import normalise

log = logging.getLogger(__name__)

_SCALE = "Blues"


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
    """A cell label in %, rounded ("-0" shown as "0")."""
    if pd.isna(x):
        return ""
    text = f"{100 * x:.0f}"
    return "0" if text == "-0" else text


def _cells(sub: pd.DataFrame, rows: str, cols: str, row_order: list, col_order: list[str],
           values: list[str]) -> dict[str, np.ndarray]:  # fmt: skip
    """``{value: [rows, cols] mean over seeds}`` for each of ``values`` (NaN where a cell has no number), plus
    ``"_seeds"``: how many seeds stand behind each cell. One grouping for all of them."""
    g = sub.assign(_s=sub["seed"].fillna(-1)).groupby([rows, cols], dropna=False, sort=False)
    agg = g[values].mean()
    agg["_seeds"] = g["_s"].nunique()
    full = pd.MultiIndex.from_product([row_order, col_order], names=[rows, cols])
    agg = agg.reindex(full)
    shape = (len(row_order), len(col_order))
    return {c: agg[c].to_numpy(dtype=float).reshape(shape) for c in [*values, "_seeds"]}


def _heat(sub: pd.DataFrame, rows: str, cols: str, row_order: list, col_order: list[str],
          value: str = "accuracy") -> go.Heatmap:  # fmt: skip
    """A heatmap of ``value`` (accuracy or selectivity, mean over seeds); the hover shows the baseline, the
    bootstrap interval (one seed) and the number of seeds."""
    lo_col, hi_col = ("ci_low", "ci_high") if value == "accuracy" else (f"{value}_ci_low", f"{value}_ci_high")
    cells = _cells(sub, rows, cols, row_order, col_order, list(dict.fromkeys([value, "baseline", lo_col, hi_col])))
    z = cells[value]  # [rows, cols]
    custom = np.stack([cells[c] for c in ("baseline", lo_col, hi_col, "_seeds")], axis=-1)  # [rows, cols, 4]
    text = [[_pct(v) for v in r] for r in z]
    sel = value != "accuracy"
    return go.Heatmap(
        z=z, x=col_order, y=[str(r) for r in row_order], zmin=-1 if sel else 0, zmax=1,
        colorscale="RdBu" if sel else _SCALE, zmid=0 if sel else None,
        text=text, texttemplate="%{text}", customdata=custom, coloraxis=None if sel else "coloraxis",
        hovertemplate=f"{cols}=%{{x}}<br>{rows}=%{{y}}<br>{value}=%{{z:.3f}} [%{{customdata[1]:.3f}}, "
        "%{customdata[2]:.3f}]<br>baseline=%{customdata[0]:.3f}<br>seeds=%{customdata[3]}<extra></extra>",
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


def _seeds_note(sub: pd.DataFrame) -> str:
    n = sub["seed"].nunique()
    return f", mean of {n} seeds" if n > 1 else ""


def p_position_grid(
    df: pd.DataFrame,
    model: str,
    target: str,
    layer: int | None = None,
    hook: str = "resid",
    value: str = "accuracy",
) -> Figure | None:
    """The paper's P-probing figure: rows = read position, columns = attribute predicted, at one layer.
    ``value="selectivity"`` draws accuracy minus control-task accuracy instead (None without a control task)."""
    sub = _ok(df[(df.model == model) & (df.probe_kind == "p") & (df.target_kind == target) & (df.hook == hook)])
    if sub.empty or sub[value].isna().all():
        return None
    layer = _final_layer(sub) if layer is None else layer
    sub = sub[sub.layer == layer]
    if sub.empty:
        return None
    positions, attrs = _order(sub["position"]), _order(sub["attribute"])
    fig = go.Figure(_heat(sub, "position", "attribute", positions, attrs, value))
    what = "accuracy" if value == "accuracy" else "selectivity (accuracy - control task)"
    fig.update_layout(
        title=f"P-probe {what} at layer {layer} ({target}{_seeds_note(sub)}) - {model}",
        coloraxis={"colorscale": _SCALE, "cmin": 0, "cmax": 1}, width=720, height=520,
    )  # fmt: skip
    fig.update_yaxes(title_text="read at the token before", autorange="reversed")
    fig.update_xaxes(title_text="attribute predicted")
    sfx = "" if value == "accuracy" else f"_{value}"
    return Figure(f"p_grid_{slug(model)}_{target}{sfx}", fig, sub)


def _rgba(color: str, alpha: float) -> str:
    """A ``#rrggbb`` colour with transparency."""
    c = color.lstrip("#")
    return f"rgba({int(c[0:2], 16)},{int(c[2:4], 16)},{int(c[4:6], 16)},{alpha})"


def q_by_layer(df: pd.DataFrame, model: str, target: str, hook: str = "resid", control: bool = True) -> Figure | None:
    """Q-probe accuracy by layer: one solid line per attribute (the mean over seeds) with its person-bootstrap
    interval as a band (one seed) or each seed as a point (several), the majority baseline dashed and, with
    ``control`` and a control task in the table, the control-task accuracy dotted."""
    sub = _ok(df[(df.model == model) & (df.probe_kind == "q") & (df.target_kind == target) & (df.hook == hook)])
    if sub.empty:
        return None
    sub = sub.sort_values("layer")
    fig = go.Figure()
    palette = pio.templates["plotly"].layout.colorway
    several = sub["seed"].nunique() > 1
    for i, attr in enumerate(_order(sub["attribute"])):
        s = sub[sub.attribute == attr]
        m = s.groupby("layer", sort=True)[["accuracy", "baseline", "ci_low", "ci_high", "control_accuracy"]].mean()
        color = palette[i % len(palette)]
        if not several and m["ci_low"].notna().all():  # the interval as a band under the line
            fig.add_trace(go.Scatter(x=list(m.index) + list(m.index[::-1]),
                                     y=list(m["ci_high"]) + list(m["ci_low"][::-1]), fill="toself", mode="lines",
                                     fillcolor=_rgba(color, 0.15), line={"width": 0}, hoverinfo="skip",
                                     legendgroup=attr, showlegend=False))  # fmt: skip
        fig.add_trace(go.Scatter(x=m.index, y=m["accuracy"], mode="lines+markers", name=attr,
                                 line={"color": color}, legendgroup=attr))  # fmt: skip
        if several:  # every seed's own accuracy
            fig.add_trace(go.Scatter(x=s["layer"], y=s["accuracy"], mode="markers", name=f"{attr} seeds",
                                     marker={"color": color, "size": 5, "opacity": 0.5}, legendgroup=attr,
                                     customdata=s["seed"], showlegend=False,
                                     hovertemplate="layer %{x}: %{y:.3f} (seed %{customdata})"
                                                   "<extra></extra>"))  # fmt: skip
        fig.add_trace(go.Scatter(x=m.index, y=m["baseline"], mode="lines", name=f"{attr} baseline",
                                 line={"color": color, "dash": "dash", "width": 1}, legendgroup=attr,
                                 showlegend=False))  # fmt: skip
        if control and m["control_accuracy"].notna().any():
            fig.add_trace(go.Scatter(x=m.index, y=m["control_accuracy"], mode="lines", name=f"{attr} control task",
                                     line={"color": color, "dash": "dot", "width": 1}, legendgroup=attr,
                                     showlegend=False))  # fmt: skip
    notes = ["dashed: majority baseline"]
    if control and sub["control_accuracy"].notna().any():
        notes.append("dotted: control task")
    if several:
        notes.append("points: seeds")
    elif sub["ci_low"].notna().any():
        notes.append("band: 95% person-bootstrap interval")
    fig.update_layout(title=f"Q-probe accuracy at the last name token ({target}{_seeds_note(sub)}) - {model}"
                            f"<br><sup>{'; '.join(notes)}</sup>",
                      xaxis_title="layer", yaxis_title="test accuracy", yaxis_range=[0, 1.02], width=760,
                      height=480)  # fmt: skip
    return Figure(f"q_layers_{slug(model)}_{target}", fig, sub)


def _per_model_layer(sub: pd.DataFrame, layer: int | None) -> tuple[list[str], list[pd.DataFrame], pd.DataFrame] | None:
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
    for i, s in enumerate(parts):
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
        agg = s.groupby("attribute").agg(accuracy=("accuracy", "mean"), baseline=("baseline", "mean"),
                                         lo=("ci_low", "mean"), hi=("ci_high", "mean"),
                                         amin=("accuracy", "min"), amax=("accuracy", "max"),
                                         n=("accuracy", "size"))  # fmt: skip
        s = agg.reindex(attrs)
        several = bool((s["n"] > 1).any())
        lo, hi = (s["amin"], s["amax"]) if several else (s["lo"], s["hi"])  # seeds' range, or the interval
        error = None
        if lo.notna().any():
            error = {"type": "data", "symmetric": False, "array": (hi - s["accuracy"]).clip(lower=0),
                     "arrayminus": (s["accuracy"] - lo).clip(lower=0), "thickness": 1.2, "width": 3}  # fmt: skip
        fig.add_trace(go.Bar(x=attrs, y=s["accuracy"], name=m, text=[_pct(v) for v in s["accuracy"]],
                             textposition="outside", offsetgroup=m, error_y=error))  # fmt: skip
        fig.add_trace(go.Bar(x=attrs, y=s["baseline"], name=f"{m} baseline", offsetgroup=m, showlegend=False,
                             marker={"color": "rgba(0,0,0,0)", "line": {"color": "black", "width": 1.5},
                                     "pattern": {"shape": "/", "fgcolor": "black"}},
                             hovertemplate="baseline %{y:.3f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title=f"Q-probe accuracy at the name ({target}), models side by side",
                      yaxis_title="test accuracy (hatched: majority baseline)", yaxis_range=[0, 1.1],
                      barmode="group", width=max(760, 140 * len(models) * 2), height=480)  # fmt: skip
    return Figure(f"compare_q_{target}", fig, sub)


def build_figures(df: pd.DataFrame, layer: int | None = None, control: bool = True) -> list[Figure]:
    """Every figure the table supports (see the module docstring). ``control``: where the table has control-task
    probes, also draw their accuracy (dotted, Q) and the selectivity grids (P)."""
    from probekit.reporting.results import reading_labels

    df = reading_labels(normalise(df))  # an ABI model's abi reading is drawn as its own model: '<name> [abi reading]'
    figs: list[Figure | None] = []
    hooks = list(dict.fromkeys(df["hook"].astype(str)))
    for hook in hooks:
        sfx = "" if hook == "resid" else f"_{hook}"
        h = df[df.hook == hook]
        for target in _order(h["target_kind"], ("first_token", "value")):
            for model in dict.fromkeys(h["model"].astype(str)):
                sel = p_position_grid(h, model, target, layer, hook, "selectivity") if control else None
                for f in (p_layer_heatmaps(h, model, target, hook), p_position_grid(h, model, target, layer, hook),
                          sel, q_by_layer(h, model, target, hook, control)):  # fmt: skip
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
                   provenance: dict | None = None, control: bool = True) -> RenderReport:  # fmt: skip
    """Write every figure the table supports as HTML + CSV (+ PNG unless ``png=False``) into ``out_dir``
    (``write_figures``); ``control`` as in ``build_figures``."""
    check_layer(df, layer)
    return write_figures(build_figures(df, layer, control), out_dir, png, provenance)
