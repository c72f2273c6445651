"""Evaluation results as tables (Parquet + CSV) and plotly figures (HTML + PNG, with the plotted data as CSV).

Every evaluation produces rows of the long results table::

    model | objective | task | metric | value | n

``task`` is an attribute (QA), ``overall``, an attribute subset (inverse search) or a reversal task (N2D, ...);
``metric`` e.g. ``exact_match``, ``first_token``, ``logprob_correct``, ``p_value``; ``n`` the number of items behind
the value. Every file is written atomically (``probekit.io.atomic_path``); figures by the same writer as the
probe figures (``probekit.reporting.figures.write_figures``: HTML, CSV of the plotted rows, PNG).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.errors import UserError, UserFileNotFoundError
from probekit.io import atomic_path, read_table
from probekit.reporting.figures import Figure, write_figures

log = logging.getLogger(__name__)

RESULT_COLUMNS: tuple[str, ...] = ("model", "objective", "task", "metric", "value", "n")
SERIES_EXTRAS: tuple[str, ...] = ("split", "finetune", "kind")  # extra columns that split a figure's bars


def results_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The long results table from row dicts (extra keys are kept as extra columns after the standard ones)."""
    df = pd.DataFrame(list(rows))
    missing = [c for c in RESULT_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"results rows lack column(s) {missing}; every row needs {list(RESULT_COLUMNS)}")
    extra = [c for c in df.columns if c not in RESULT_COLUMNS]
    df = df[list(RESULT_COLUMNS) + extra]
    return df.astype({"value": float, "n": int})


def write_table(df: pd.DataFrame, out_dir: str | Path, stem: str) -> list[Path]:
    """Write ``stem.parquet`` and ``stem.csv`` into ``out_dir`` atomically; returns the paths. Both carry the
    provenance of this process (``probekit.provenance``: Parquet metadata and ``stem.provenance.json``)."""
    from probekit import provenance as prov

    out = Path(out_dir)
    paths = [out / f"{stem}.parquet", out / f"{stem}.csv"]
    rec = prov.record()
    with atomic_path(paths[0]) as tmp:
        prov.to_parquet(df, tmp, rec)
    with atomic_path(paths[1]) as tmp:
        df.to_csv(tmp, index=False)
    prov.write_table_sidecar(out, rec, paths, stem=stem)
    return paths


def accuracy_figure(
    df: pd.DataFrame, metric: str = "exact_match", title: str | None = None
) -> tuple[Any, pd.DataFrame]:
    """Grouped bars: ``metric`` by task (x) for each model/objective (colour); returns (figure, plotted data).

    Extra columns in ``SERIES_EXTRAS`` with more than one value (e.g. split) split the bars further. Bars carry
    ``n`` in their hover text, and error bars where the table has bootstrap intervals (``ci_low``/``ci_high``).
    Tasks keep their order of first appearance in ``df``.
    """
    import plotly.graph_objects as go

    data = df[df["metric"] == metric].copy()
    if data.empty:
        raise UserError(f"no rows with metric {metric!r} to plot; metrics present: {sorted(df['metric'].unique())}")
    data["series"] = data["model"].astype(str) + " (" + data["objective"].astype(str) + ")"
    for col in SERIES_EXTRAS:  # e.g. P_test and P_train bars side by side
        if col in data.columns and data[col].nunique() > 1:
            data["series"] += ", " + data[col].astype(str)
    if data.duplicated(["series", "task"]).any():
        raise UserError(f"several {metric} rows for the same model, objective and task; tell them apart by a column")
    tasks = list(dict.fromkeys(data["task"]))
    fig = go.Figure()
    for series, g in data.groupby("series", sort=False):
        g = g.set_index("task").reindex(tasks)
        error = None
        if "ci_low" in g.columns and g["ci_low"].notna().any():
            error = {"type": "data", "symmetric": False, "array": (g["ci_high"] - g["value"]).clip(lower=0),
                     "arrayminus": (g["value"] - g["ci_low"]).clip(lower=0), "thickness": 1.2, "width": 3}  # fmt: skip
        fig.add_trace(
            go.Bar(
                name=str(series), x=tasks, y=g["value"], customdata=g["n"], error_y=error,
                hovertemplate="%{x}: %{y:.3f} (n=%{customdata})<extra>" + str(series) + "</extra>",
            )
        )  # fmt: skip
    is_rate = metric in ("exact_match", "first_token") or metric.endswith("_acc")
    fig.update_layout(
        barmode="group", title=title or f"{metric} by task", xaxis_title="task", yaxis_title=metric,
        template="plotly_white", legend_title="model (objective)",
    )  # fmt: skip
    if is_rate:
        fig.update_yaxes(range=[0, 1])
    return fig, data.drop(columns="series")


EVAL_PNG_SIZE = (900, 500)  # evaluation bar charts: PNG layout size (drawn at 2x)


def eval_figure(fig: Any, data: pd.DataFrame, stem: str) -> Figure:
    """An evaluation figure for ``probekit.reporting.figures.write_figures`` (PNG 900 x 500 at 2x)."""
    return Figure(stem, fig, data, png_size=EVAL_PNG_SIZE, png_scale=2.0)


def write_figure(fig: Any, data: pd.DataFrame, out_dir: str | Path, stem: str, png: bool = True) -> list[Path]:
    """Write ``stem.html``, ``stem.png`` (skipped with a warning if it fails) and ``stem.csv`` (the plotted data)
    into ``out_dir`` with the one figure writer (``probekit.reporting.figures``); returns the paths written."""
    return write_figures([eval_figure(fig, data, stem)], out_dir, png=png, plotlyjs="cdn", index=False).files


def write_results(
    df: pd.DataFrame, out_dir: str | Path, stem: str, metrics: Iterable[str] = ("exact_match",), png: bool = True
) -> list[Path]:
    """Table (Parquet + CSV) plus one accuracy figure per metric present (``{stem}_{metric}.html/png/csv``).

    Figures are built before anything is written, so a table that cannot be drawn writes nothing; all of them
    are written together by ``probekit.reporting.figures.write_figures`` (one bounded PNG export for every figure)."""
    figures = [eval_figure(*accuracy_figure(df, m, title=f"{stem}: {m}"), f"{stem}_{m}") for m in metrics
               if (df["metric"] == m).any()]  # fmt: skip
    paths = write_table(df, out_dir, stem)
    return paths + write_figures(figures, out_dir, png=png, plotlyjs="cdn", index=False).files


def read_eval_results(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate evaluation result tables: each path a ``results.parquet``/``.csv`` or a directory holding one."""
    frames, paths = [], list(paths)
    for p in map(Path, paths):
        file = p / "results.parquet" if p.is_dir() else p
        if not file.exists():
            raise UserFileNotFoundError(f"no evaluation results at {p} (expected results.parquet from `probekit eval`)")
        frames.append(read_table(file, "evaluation results"))
    if not frames:
        raise UserError("no result tables given")
    try:
        return results_frame(pd.concat(frames, ignore_index=True).to_dict("records"))
    except UserError as e:  # name the tables: a column problem is theirs
        raise UserError(f"{', '.join(map(str, paths))}: {e}") from None


def write_comparison(
    paths: Iterable[str | Path],
    out_dir: str | Path,
    stem: str = "comparison",
    metrics: Iterable[str] = ("exact_match",),
    split: str | None = "test",
    png: bool = True,
) -> tuple[pd.DataFrame, list[Path]]:
    """One table and figure comparing several evaluations (e.g. NTP vs ABI vs BICO): accuracy by task and model.

    ``split`` keeps only that split's rows where a ``split`` column exists (None keeps all).
    """
    df = read_eval_results(paths)
    metrics = tuple(metrics)
    if split is not None and "split" in df.columns:
        splits = sorted(str(s) for s in df["split"].dropna().unique())
        if splits and split not in splits:
            raise UserError(f"--split {split!r}: the tables hold splits {', '.join(splits)}; choose one of them "
                            "('' keeps all)")  # fmt: skip
        df = df[df["split"].isna() | (df["split"] == split)]
    missing = [m for m in metrics if not (df["metric"] == m).any()]
    if missing:
        have = ", ".join(sorted(map(str, df["metric"].unique())))
        raise UserError(f"--metrics: {', '.join(missing)} not in the tables (they hold {have}); choose from those")
    return df, write_results(df, out_dir, stem, metrics=metrics, png=png)
