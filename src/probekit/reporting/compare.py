"""Comparison across the models of one experiment: where each stores a fact, and whether that predicts
extraction and reversal (the questions of Physics of LMs 3.1/3.2 and the reversal curse).

Input: the experiment's tables (``probekit.experiment.runner``): frozen and embedding-update probe results, the
per-test-person Q-probe correctness (``probes/<run>/q_people.parquet``), and the QA and inverse-search
predictions (``qa/<run>/predictions.jsonl``, ``inverse/<run>/predictions.jsonl``). Every model is read the way
it is used (``reading_of``: the ABI reading for ABI models, causal otherwise) and every figure title says so.

* ``storage_points``: one point per (model, attribute, storage measure): Q-probe accuracy at the name (its layer
  chosen on validation people, never P_test) beside QA exact match for that attribute and inverse-search exact
  match (attributes -> full name), each as per-person 0/1 vectors over the P_test people. A probe none of whose
  test classes occurs in training (a whole birth date, one class per person) gives no point.
* ``correlations``: Pearson and Spearman correlations between storage and extraction / inverse search over the
  points, with a 95% interval from one person-clustered bootstrap (the same resampled people for every point,
  so the interval covers the noise of both axes; ``probekit.stats``).
* Figures: the P grids of all models at one layer (``objective_p_grids``), their Q profiles over layers
  (``objective_q_profiles``), the storage scatter with its correlations (``storage_scatter``) and extraction /
  inverse search per model (``extraction_bars``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from scipy.stats import rankdata

from probekit.reporting.figures import Figure
from probekit.reporting.plots import _SCALE, _heat, _ok, _order
from probekit.reporting.report import SummaryPart, SummaryTable
from probekit.stats import DEFAULT_N_BOOT, bootstrap_means

OBJECTIVE_COLORS = {"ntp": "#1f77b4", "abi": "#d62728", "bico": "#2ca02c"}
DATASET_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "star")
RANDOM_INIT = "(random init)"
# storage measures: (label, hook, target kind); the embedding-update probe reads the last layer
MEASURES = (("Q frozen, first token", "resid", "first_token"), ("Q frozen, whole value", "resid", "value"),
            ("Q embedding update, first token", "embed_update", "first_token"))  # fmt: skip


def reading_of(objective: str) -> str:
    """The reading a model of ``objective`` is used in: an ABI model sees its prompts as bidirectional Part A."""
    return "abi" if objective == "abi" else "causal"


def trained_models(probe: pd.DataFrame) -> pd.DataFrame:
    """One row per trained model (random-init controls left out): model, objective, dataset, in table order."""
    m = probe[~probe["model"].astype(str).str.contains(RANDOM_INIT, regex=False)]
    return m[["model", "objective", "dataset"]].astype(str).drop_duplicates("model").reset_index(drop=True)


def _in_reading(df: pd.DataFrame, models: pd.DataFrame) -> pd.DataFrame:
    """The rows of each trained model in the reading it is used in (``reading_of``); the embedding-update probe,
    which trains through the model and reads it causally for every objective, is kept as it is."""
    want = {r.model: reading_of(r.objective) for r in models.itertuples()}
    keep = df["model"].astype(str).map(want)
    reading = df["reading"].astype(str) if "reading" in df.columns else pd.Series("causal", index=df.index)
    return df[keep.notna() & ((reading == keep) | (df["hook"].astype(str) == "embed_update"))]


@dataclass
class Points:
    """Storage and evaluation per point, as per-person vectors over the P_test people ``pids``."""

    table: pd.DataFrame  # one row per point: model, objective, dataset, attribute, measure, layer, storage, qa, inverse
    pids: np.ndarray  # [N] the P_test people
    storage: np.ndarray  # [P, N] 1/0 Q-probe correct per person (NaN: the person has no row)
    qa: np.ndarray  # [P, N] QA exact match on the point's attribute
    inverse: np.ndarray  # [P, N] inverse search exact match (one prompt per person, all attributes)


def read_predictions(path: Path) -> pd.DataFrame:
    """P_test predictions of one QA or inverse run (pid, task, exact_match)."""
    df = pd.read_json(path, lines=True)
    return df[df["split"] == "test"][["pid", "task", "exact_match"]]


def storage_points(probe: pd.DataFrame, q_people: pd.DataFrame, qa: dict[str, pd.DataFrame],
                   inverse: dict[str, pd.DataFrame]) -> Points:  # fmt: skip
    """Every (trained model, attribute, storage measure) with its per-person vectors.

    ``probe``: the experiment's probe table(s) (frozen and embedding-update rows); ``q_people``: the per-person
    Q-probe correctness (``probekit.probes.runner.person_rows``); ``qa``/``inverse``: each model's P_test
    predictions (``read_predictions``), keyed by model name. A frozen probe is read at the layer of its best
    validation accuracy (validation people come from P_train), the embedding-update probe at its last layer.
    """
    models = trained_models(probe)
    q = _in_reading(_ok(probe[probe["probe_kind"] == "q"]), models)
    qp = _in_reading(q_people, models)
    pids = np.array(sorted(set(qp["pid"].astype(int))))
    col = {p: i for i, p in enumerate(pids)}
    rows, store, qa_v, inv_v = [], [], [], []

    def vector(pid: pd.Series, val: pd.Series) -> np.ndarray:
        v = np.full(len(pids), np.nan)
        idx = [col.get(int(p), -1) for p in pid]
        ok = np.array([i >= 0 for i in idx], dtype=bool)
        v[np.array(idx)[ok]] = val.to_numpy(dtype=float)[ok]
        return v

    for m in models.itertuples():
        for label, hook, target in MEASURES:
            sub = q[(q["model"] == m.model) & (q["hook"] == hook) & (q["target_kind"] == target)]
            for attr in _order(sub["attribute"]):
                s = sub[sub["attribute"] == attr]
                best = s.sort_values(["val_accuracy", "layer"], ascending=[False, True]).iloc[0]
                if best.get("n_test_unseen", 0) >= best.get("n_test", 1):  # no test class seen in training (a
                    continue  # whole birth date): the probe cannot score, so it says nothing about storage
                people = qp[(qp["model"] == m.model) & (qp["hook"] == hook) & (qp["target_kind"] == target)
                            & (qp["attribute"] == attr) & (qp["layer"] == best["layer"])]  # fmt: skip
                if people.empty:
                    continue
                store.append(vector(people["pid"], people["correct"].astype(float)))
                a = qa.get(m.model)
                a = a[a["task"] == attr] if a is not None else None
                qa_v.append(vector(a["pid"], a["exact_match"].astype(float)) if a is not None and len(a)
                            else np.full(len(pids), np.nan))  # fmt: skip
                inv = inverse.get(m.model)
                inv_v.append(vector(inv["pid"], inv["exact_match"].astype(float)) if inv is not None and len(inv)
                             else np.full(len(pids), np.nan))  # fmt: skip
                rows.append(
                    {
                        "model": m.model,
                        "objective": m.objective,
                        "dataset": m.dataset,
                        "attribute": attr,
                        "measure": label,
                        "layer": int(best["layer"]),
                        "reading": "causal" if hook == "embed_update" else reading_of(m.objective),
                        "storage": float(np.nanmean(store[-1])),
                        "baseline": float(best["baseline"]),
                        "qa": float(np.nanmean(qa_v[-1])) if np.isfinite(qa_v[-1]).any() else np.nan,
                        "inverse": float(np.nanmean(inv_v[-1])) if np.isfinite(inv_v[-1]).any() else np.nan,
                    }
                )
    empty = np.zeros((0, len(pids)))
    return Points(pd.DataFrame(rows), pids, np.array(store) if store else empty, np.array(qa_v) if qa_v else empty,
                  np.array(inv_v) if inv_v else empty)  # fmt: skip


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis: Pearson's on average ranks (ties share their mean rank)."""
    return _pearson(rankdata(x, axis=-1), rankdata(y, axis=-1))


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis of [..., P] arrays (NaN where either side is constant)."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def correlations(points: Points, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Pearson and Spearman correlation of storage with QA and with inverse search over the points of each
    storage measure, with a person-bootstrap interval: one draw of P_test people serves every point and both
    axes, so the interval reflects the sampling noise of every accuracy behind the correlation."""
    rows = []
    t = points.table
    for measure in dict.fromkeys(t["measure"]) if len(t) else []:
        sel = np.flatnonzero((t["measure"] == measure).to_numpy())
        for what, ys in (("qa", points.qa), ("inverse", points.inverse)):
            keep = [i for i in sel if np.isfinite(ys[i]).any()]
            if len(keep) < 3:
                continue
            x, y = points.storage[keep], ys[keep]  # [P, N]
            x0, y0 = np.nanmean(x, 1), np.nanmean(y, 1)
            flat = [
                f"every point's {n} is {100 * v[0]:.1f}%" for n, v in (("storage", x0), (what, y0)) if np.ptp(v) == 0
            ]
            if flat:  # a constant axis: no correlation is defined
                rows += [{"measure": measure, "versus": what, "method": name, "r": np.nan, "ci_low": np.nan,
                          "ci_high": np.nan, "n_points": len(keep), "n_people": len(points.pids), "n_boot": 0,
                          "level": level, "note": "undefined: " + "; ".join(flat)}
                         for name in ("pearson", "spearman")]  # fmt: skip
                continue
            pids = np.arange(len(points.pids))
            bx = bootstrap_means(x, pids, n_boot, seed).T  # [B, P]
            by = bootstrap_means(y, pids, n_boot, seed).T  # [B, P]: the same people draws
            ok = np.isfinite(bx).all(1) & np.isfinite(by).all(1)
            bx, by = bx[ok], by[ok]
            a = (1 - level) / 2
            for name, f in (("pearson", _pearson), ("spearman", _spearman)):
                r = float(f(x0, y0))
                boot = f(bx, by)
                boot = boot[np.isfinite(boot)]
                lo, hi = np.quantile(boot, [a, 1 - a]) if len(boot) else (np.nan, np.nan)
                rows.append({"measure": measure, "versus": what, "method": name, "r": r, "ci_low": float(lo),
                             "ci_high": float(hi), "n_points": len(keep), "n_people": len(points.pids),
                             "n_boot": len(boot), "level": level, "note": ""})  # fmt: skip
    return pd.DataFrame(rows)


def _symbols(datasets: Sequence[str]) -> dict[str, str]:
    return {d: DATASET_SYMBOLS[i % len(DATASET_SYMBOLS)] for i, d in enumerate(dict.fromkeys(datasets))}


def storage_scatter(points: Points, corr: pd.DataFrame) -> Figure | None:
    """Storage at the name (x) against QA extraction and against inverse search (y): one panel per storage
    measure and evaluation, one point per (model, attribute); colour = objective, symbol = dataset; each panel's
    title gives Pearson r and Spearman rho with their 95% person-bootstrap intervals."""
    t = points.table
    if t.empty:
        return None
    measures = list(dict.fromkeys(t["measure"]))
    evals = [e for e in ("qa", "inverse") if t[e].notna().any()]
    if not evals:
        return None
    names = {"qa": "QA exact match", "inverse": "inverse search exact match"}

    def title(m: str, e: str) -> str:
        c = corr[(corr["measure"] == m) & (corr["versus"] == e)] if len(corr) else corr
        parts = [f"{'r' if r.method == 'pearson' else 'rho'} {r.r:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                 for r in c.itertuples() if pd.notna(r.r)]  # fmt: skip
        notes = {str(r.note) for r in c.itertuples() if pd.isna(r.r) and getattr(r, "note", "")}
        parts += sorted(notes)
        return f"{m} vs {names[e]}<br><sup>{'; '.join(parts) or 'too few points'}</sup>"

    fig = make_subplots(rows=len(measures), cols=len(evals), subplot_titles=[title(m, e) for m in measures
                                                                             for e in evals],
                        vertical_spacing=0.12, horizontal_spacing=0.08)  # fmt: skip
    sym = _symbols(t["dataset"].tolist())
    shown: set[str] = set()
    for i, m in enumerate(measures):
        for j, e in enumerate(evals):
            s = t[t["measure"] == m]
            for (obj, ds), g in s.groupby(["objective", "dataset"], sort=False):
                key = f"{obj} / {ds}"
                fig.add_trace(go.Scatter(
                    x=g["storage"], y=g[e], mode="markers", name=key, legendgroup=key, showlegend=key not in shown,
                    marker={"color": OBJECTIVE_COLORS.get(str(obj), "#7f7f7f"), "symbol": sym[str(ds)], "size": 9,
                            "line": {"width": 0.5, "color": "black"}},
                    customdata=np.stack([g["attribute"], g["model"], g["layer"], g["baseline"]], axis=-1),
                    hovertemplate="%{customdata[1]} %{customdata[0]}<br>storage %{x:.3f} (layer %{customdata[2]}, "
                                  "baseline %{customdata[3]:.3f})<br>" + e + " %{y:.3f}<extra></extra>",
                ), row=i + 1, col=j + 1)  # fmt: skip
                shown.add(key)
            fig.update_xaxes(title_text="Q-probe accuracy at the name", range=[0, 1.02], row=i + 1, col=j + 1)
            fig.update_yaxes(title_text=names[e], range=[-0.02, 1.02], row=i + 1, col=j + 1)
    against = " and ".join({"qa": "extraction", "inverse": "reversal"}[e] for e in evals)
    note = "one point per model x attribute" + ("; ABI models in the ABI reading" if (t["objective"] == "abi").any()
                                                else "")  # fmt: skip
    fig.update_layout(title=f"Storage at the name against {against}<br><sup>{note}</sup>",
                      width=560 * len(evals) + 200, height=380 * len(measures) + 140, font={"size": 11})  # fmt: skip
    fig.update_annotations(font_size=11)
    return Figure("compare_storage_scatter", fig, t)


def objective_p_grids(probe: pd.DataFrame, target: str, layer: int | None = None) -> Figure | None:
    """The P-probe position x attribute grid of every trained model at one layer (default the last), datasets
    as rows and objectives as columns; ABI models in the ABI reading."""
    models = trained_models(probe)
    p = _in_reading(_ok(probe[(probe["probe_kind"] == "p") & (probe["hook"] == "resid")
                              & (probe["target_kind"] == target)]), models)  # fmt: skip
    if p.empty:
        return None
    layer = int(p["layer"].max()) if layer is None else layer
    p = p[p["layer"] == layer]
    objectives = list(dict.fromkeys(models["objective"]))
    datasets = list(dict.fromkeys(models["dataset"]))
    positions, attrs = _order(p["position"]), _order(p["attribute"])
    titles = []
    for ds in datasets:
        for obj in objectives:
            mm = models[(models["objective"] == obj) & (models["dataset"] == ds)]["model"].tolist()
            titles.append(f"{mm[0]} ({reading_of(obj)} reading)" if mm else "")
    fig = make_subplots(rows=len(datasets), cols=len(objectives), subplot_titles=titles, shared_yaxes=True,
                        shared_xaxes=True, horizontal_spacing=0.03, vertical_spacing=0.08)  # fmt: skip
    for i, ds in enumerate(datasets):
        for j, obj in enumerate(objectives):
            mm = models[(models["objective"] == obj) & (models["dataset"] == ds)]["model"].tolist()
            s = p[p["model"].isin(mm)]
            if len(s):
                fig.add_trace(_heat(s, "position", "attribute", positions, attrs), row=i + 1, col=j + 1)
    fig.update_layout(title=f"P-probe accuracy at layer {layer} ({target}): objectives side by side",
                      coloraxis={"colorscale": _SCALE, "cmin": 0, "cmax": 1}, width=360 * len(objectives) + 200,
                      height=430 * len(datasets) + 80)  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_annotations(font_size=11)
    return Figure(f"compare_objectives_p_{target}", fig, p)


def objective_q_profiles(probe: pd.DataFrame, target: str) -> Figure | None:
    """Q-probe accuracy at the name over layers, one panel per attribute, one line per trained model (colour =
    objective, dash = dataset); the embedding-update probe as a marker at the last layer; baselines grey."""
    models = trained_models(probe)
    q = _in_reading(_ok(probe[(probe["probe_kind"] == "q") & (probe["target_kind"] == target)]), models)
    if q.empty:
        return None
    attrs = _order(q["attribute"])
    cols = 3
    rows = (len(attrs) + cols - 1) // cols
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=attrs, shared_yaxes=True, vertical_spacing=0.14)
    dashes = dict(zip(dict.fromkeys(models["dataset"]), ("solid", "dash", "dot", "dashdot")))
    for k, attr in enumerate(attrs):
        r, c = k // cols + 1, k % cols + 1
        for m in models.itertuples():
            s = q[(q["model"] == m.model) & (q["attribute"] == attr)]
            fr, eu = s[s["hook"] == "resid"].sort_values("layer"), s[s["hook"] == "embed_update"]
            color = OBJECTIVE_COLORS.get(m.objective, "#7f7f7f")
            if len(fr):
                fig.add_trace(go.Scatter(x=fr["layer"], y=fr["accuracy"], mode="lines+markers", name=m.model,
                                         legendgroup=m.model, showlegend=k == 0,
                                         line={"color": color, "dash": dashes.get(m.dataset, "solid")},
                                         marker={"size": 5}), row=r, col=c)  # fmt: skip
            if len(eu):
                fig.add_trace(go.Scatter(x=eu["layer"], y=eu["accuracy"], mode="markers", name=f"{m.model} emb. update",
                                         legendgroup=m.model, showlegend=False,
                                         marker={"color": color, "symbol": "star", "size": 11,
                                                 "line": {"width": 0.5, "color": "black"}}), row=r, col=c)  # fmt: skip
        base = q[q["attribute"] == attr]["baseline"].max()
        fig.add_hline(y=base, line={"color": "grey", "dash": "dot", "width": 1}, row=r, col=c)
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(title_text="layer")
    fig.update_layout(title=f"Q-probe accuracy at the last name token by layer ({target}); ABI in the ABI reading"
                            "<br><sup>solid: single-style data, dashed: second dataset; star: embedding-update probe"
                            " (last layer); grey dotted: majority baseline</sup>",
                      width=1150, height=330 * rows + 140)  # fmt: skip
    return Figure(f"compare_objectives_q_{target}", fig, q)


def extraction_bars(qa: pd.DataFrame | None, inverse: pd.DataFrame | None, models: pd.DataFrame) -> Figure | None:
    """QA extraction (overall exact match) and inverse search on P_test per model, grouped by dataset and
    coloured by objective, with 95% person-bootstrap intervals."""
    panels = [
        (n, t)
        for n, t in (("QA extraction (all attributes)", qa), ("inverse search (attributes -> name)", inverse))
        if t is not None and len(t)
    ]
    if not panels:
        return None
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[n for n, _ in panels], shared_yaxes=True)
    rows = []
    for j, (name, t) in enumerate(panels):
        v = t[(t["split"] == "test") & (t["metric"] == "exact_match")]
        v = v[v["task"] == "overall"] if (v["task"] == "overall").any() else v
        v = v.merge(models, on="model", suffixes=("", "_m"))
        for obj, g in v.groupby("objective_m", sort=False):
            g = g.groupby("dataset", sort=False)[["value", "ci_low", "ci_high"]].mean().reset_index()
            fig.add_trace(go.Bar(x=g["dataset"], y=g["value"], name=str(obj), legendgroup=str(obj), showlegend=j == 0,
                                 marker={"color": OBJECTIVE_COLORS.get(str(obj), "#7f7f7f")},
                                 text=[f"{100 * x:.0f}" for x in g["value"]], textposition="outside",
                                 error_y={"type": "data", "symmetric": False, "array": g["ci_high"] - g["value"],
                                          "arrayminus": g["value"] - g["ci_low"]}), row=1, col=j + 1)  # fmt: skip
            rows += [{"panel": name, "objective": obj, **r} for r in g.to_dict("records")]
    fig.update_layout(title="Extraction and inverse search on P_test, per objective and dataset (95% person-bootstrap"
                            " intervals)", barmode="group", yaxis_range=[0, 1.1], width=520 * len(panels) + 160,
                      height=460)  # fmt: skip
    fig.update_yaxes(title_text="exact match", col=1)
    return Figure("compare_objectives_extraction", fig, pd.DataFrame(rows))


def comparison_figures(probe: pd.DataFrame, points: Points, corr: pd.DataFrame, qa: pd.DataFrame | None,
                       inverse: pd.DataFrame | None, layer: int | None = None) -> list[Figure]:  # fmt: skip
    """Every comparison figure the tables support (none when the experiment has a single trained model)."""
    models = trained_models(probe)
    if len(models) < 2:
        return []
    figs = [objective_p_grids(probe, t, layer) for t in _order(probe["target_kind"], ("first_token", "value"))]
    figs += [objective_q_profiles(probe, t) for t in _order(probe["target_kind"], ("first_token", "value"))]
    figs += [storage_scatter(points, corr), extraction_bars(qa, inverse, models)]
    return [f for f in figs if f is not None]


def correlation_summary(corr: pd.DataFrame) -> list[SummaryPart]:
    """Each correlation with its interval, as a summary table (``summary.txt`` keeps one line per correlation)."""
    if corr.empty:
        return []
    lines, rows = [], []
    for r in corr.itertuples():
        value = (
            f"{r.r:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
            if pd.notna(r.r)
            else str(getattr(r, "note", "") or "undefined")
        )
        lines.append(
            f"  {r.measure:34s} vs {r.versus:8s} {r.method:9s} {value}  ({r.n_points} points, {r.n_people} people)"
        )
        rows.append({"storage measure": r.measure, "versus": r.versus, "correlation": r.method, "r [95% CI]": value,
                     "points": r.n_points, "people": r.n_people})  # fmt: skip
    title = (
        "Storage at the name vs extraction (one point per model x attribute; layer chosen on validation "
        "people; 95% person-bootstrap interval):"
    )
    return [SummaryTable(title, pd.DataFrame(rows), name="correlations", text=tuple(lines))]


def load_eval_predictions(out: Path, kind: str, runs: Sequence[tuple[str, str]]) -> dict[str, pd.DataFrame]:
    """``{model name: P_test predictions}`` of an evaluation stage (``kind`` "qa" or "inverse") for ``runs``
    (``(run key, model name)`` pairs) where they exist."""
    found: dict[str, Any] = {}
    for key, name in runs:
        f = out / kind / key / "predictions.jsonl"
        if f.exists():
            found[name] = read_predictions(f)
    return found
