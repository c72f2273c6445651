"""Storage at the name and extraction against scale (the storage_scale experiment).

Each trained model of an experiment sits at a point of four axes: depth (``n_layers``), width (``d_model``), people
(``n_people`` of its dataset) and name sharing (``last_names``: the size of the last-name pool its people were
drawn from, ``name_pools``; people per last name is about ``n_people / last_names`` once the pool is smaller than
the people), for one augmentation. ``scale_table`` gives per model the Q-probe accuracy
at the name (mean over attributes of each attribute's probe at its validation-chosen layer; one storage measure
of ``probekit.reporting.compare.MEASURES``) and QA exact match (mean over the same attributes), each with a
person-bootstrap
interval over P_test people, beside the mean majority baseline. ``scale_figure`` plots both against each axis
that varies, holding the others at the base (their most common values), but for an axis that changes with it
(the name pools that grow with the people).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from probekit.reporting.compare import Points
from probekit.reporting.report import SummaryPart, SummaryTable
from probekit.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, person_bootstrap

AXES: dict[str, str] = {"n_layers": "layers", "d_model": "width (d_model)", "n_people": "people",
                        "last_names": "last names in the pool"}  # fmt: skip
LOG_AXES = ("n_people", "last_names")
SHORT: dict[str, str] = {"n_layers": "{} layers", "d_model": "width {}", "n_people": "{} people",
                         "last_names": "{} last names"}  # fmt: skip


def full_last_names() -> int:
    """The size of the built-in last-name pool (the axis value of a dataset without ``name_pools``)."""
    from probekit.data.pools import load_pools

    return len(load_pools().last_names)


def model_axes(cfg: Any) -> pd.DataFrame:
    """One row per model of ``cfg`` (``ExperimentConfig``): model, augmentation, n_layers, d_model, n_people,
    last_names."""
    from probekit.model.config import ModelConfig

    full = full_last_names()
    rows = []
    for m in cfg.models:
        shape = dict(m.train.get("model") or {})
        d = cfg.dataset(m.data)
        aug = "+".join(f"{g.name}:{g.augmentation}" for g in d.groups) if d.groups else d.augmentation
        rows.append({"model": m.name, "augmentation": aug + (" (mixed QA)" if m.train.get("qa_mix") else ""),
                     "n_layers": int(shape.get("n_layers", ModelConfig.n_layers)),
                     "d_model": int(shape.get("d_model", ModelConfig.d_model)),
                     "n_people": int(d.n_people), "last_names": int(d.name_pools.get("last", full))})  # fmt: skip
    return pd.DataFrame(rows)


def varying_axes(axes: pd.DataFrame) -> list[str]:
    """The axes on which the models take more than one value."""
    return [a for a in AXES if axes[a].nunique() > 1]


def scale_table(points: Points, axes: pd.DataFrame, measure: str = "Q frozen, first token",
                n_boot: int = DEFAULT_N_BOOT, level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per model: Q-probe accuracy at the name and QA exact match, each the mean over the attributes the measure
    has points for, with the interval of that mean over resampled P_test people (one draw for both)."""
    rows = []
    t = points.table
    for a in axes.itertuples(index=False):
        sel = np.flatnonzero(((t["model"] == a.model) & (t["measure"] == measure)).to_numpy())
        if not len(sel):
            continue
        with warnings.catch_warnings():  # a person outside a model's people (another N) has no rows: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            store = np.nanmean(points.storage[sel], axis=0)  # [N] per person, mean over attributes
            qa = np.nanmean(points.qa[sel], axis=0)  # [N]
        iv = person_bootstrap(np.stack([store, qa]), points.pids, n_boot, level, seed)
        rows.append({**a._asdict(), "measure": measure, "attributes": len(sel),
                     "q_name": float(np.nanmean(store)), "q_low": float(iv.low[0]), "q_high": float(iv.high[0]),
                     "qa": float(np.nanmean(qa)) if np.isfinite(qa).any() else np.nan,
                     "qa_low": float(iv.low[1]), "qa_high": float(iv.high[1]),
                     "baseline": float(t.iloc[sel]["baseline"].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def _base(axes: pd.DataFrame) -> dict[str, int]:
    return {a: int(axes[a].mode().iloc[0]) for a in AXES}


def _moves_with(table: pd.DataFrame, axis: str) -> list[str]:
    """The other varying axes that ``axis`` determines in ``table`` (one value of theirs per value of ``axis``):
    they change with it, as the name pools must grow with the people once the smallest pools cannot give every
    person a full name of their own, so a panel along ``axis`` lets them move instead of holding them at base."""
    return [b for b in varying_axes(table) if b != axis and table.groupby(axis)[b].nunique().max() == 1]


def scale_figure(table: pd.DataFrame) -> Any:
    """Q-probe accuracy at the name (solid) and QA exact match (dashed) against each varying axis, a line per
    augmentation, the other axes at their base values (those that change with the axis, ``_moves_with``, move
    with it and are named in the panel's title); None when no axis varies. A panel with a single value of its
    axis left is not drawn."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    from probekit.reporting.figures import Figure

    varying = varying_axes(table) if not table.empty else []
    base = _base(table) if varying else {}
    panels: list[tuple[str, pd.DataFrame, str]] = []  # (axis, its rows, its title)
    for a in varying:
        moving = _moves_with(table, a)
        held = [b for b in AXES if b != a and b not in moving]
        keep = np.ones(len(table), dtype=bool)  # [rows] held axes at their base (none held: every row)
        for b in held:
            keep &= (table[b] == base[b]).to_numpy()
        along = table[keep]
        if along[a].nunique() < 2:
            continue
        title = ", ".join(SHORT[b].format(base[b]) for b in held)
        for b in moving:
            title += f"; {AXES[b]} {along[b].min()}-{along[b].max()} with the {AXES[a]}"
        panels.append((a, along, f"{AXES[a]}<br>({title})"))
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), shared_yaxes=True, subplot_titles=[t for _, _, t in panels])
    augs = list(dict.fromkeys(table["augmentation"]))
    shown = []
    for j, (axis, along, _) in enumerate(panels):
        for k, aug in enumerate(augs):
            g = along[along["augmentation"] == aug].sort_values(axis)
            if g.empty:
                continue
            color = qualitative.Plotly[k % len(qualitative.Plotly)]
            for what, col, lo_c, hi_c, dash in (("Q-probe at the name", "q_name", "q_low", "q_high", "solid"),
                                                 ("QA extraction", "qa", "qa_low", "qa_high", "dash")):  # fmt: skip
                lo, hi = g[lo_c], g[hi_c]
                fig.add_trace(go.Scatter(
                    x=g[axis], y=100 * g[col], mode="lines+markers", line={"color": color, "dash": dash},
                    name=f"{aug}: {what}", legendgroup=f"{aug}{what}", showlegend=(aug, what) not in shown,
                    error_y={"type": "data", "symmetric": False, "array": 100 * (hi - g[col]),
                             "arrayminus": 100 * (g[col] - lo), "thickness": 1},
                    customdata=g["model"], hovertemplate="%{customdata}: %{y:.1f}%<extra>" + what + "</extra>",
                ), row=1, col=j + 1)  # fmt: skip
                shown.append((aug, what))
        ticks = sorted(set(along[axis]))  # the values trained, not a continuous axis
        fig.update_xaxes(title_text=AXES[axis], type="log" if axis in LOG_AXES else "linear", tickvals=ticks,
                         row=1, col=j + 1)  # fmt: skip
    fig.update_yaxes(title_text="% on P_test (mean over attributes)", range=[-3, 103], col=1)
    measure = table["measure"].iloc[0]
    fig.update_layout(title=f"Storage at the name ({measure}, solid)<br>and QA extraction (dashed) against scale",
                      width=max(600, 420 * len(panels) + 100), height=620, margin={"t": 140},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0})  # fmt: skip
    return Figure("scale_storage_extraction", fig, table)


def scale_summary(table: pd.DataFrame) -> list[SummaryPart]:
    """The scale table as a summary table (%, 95% intervals)."""
    if table.empty:
        return []

    def cell(v: float, lo: float, hi: float) -> str:
        return "-" if pd.isna(v) else f"{100 * v:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"

    rows = [{"model": r.model, "augmentation": r.augmentation, "layers": r.n_layers, "width": r.d_model,
             "people": r.n_people, "last names": r.last_names, "Q at name": cell(r.q_name, r.q_low, r.q_high),
             "baseline": f"{100 * r.baseline:.1f}", "QA": cell(r.qa, r.qa_low, r.qa_high)}
            for r in table.itertuples()]  # fmt: skip
    measure = table["measure"].iloc[0]
    return [SummaryTable(f"Scale: {measure} at the name and QA exact match, % on P_test, mean over attributes [95% "
                         "interval]:", pd.DataFrame(rows), name="scale")]  # fmt: skip
