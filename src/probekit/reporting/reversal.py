"""Tables and figures of a reversal-mechanism run (``experiments/reversal_mechanism/run.sh``).

A run directory holds, per model ``<objective>_s<seed>`` (and ``ft_<objective>_s<seed>`` for finetuning from a
shared NTP checkpoint): ``<model>/results.csv`` (``probekit eval reversal``), ``probe_<model>/results.csv``,
``people.csv`` and ``link.csv`` (``probekit probe`` with the reversal read-outs) and ``patch_<model>/results.csv``
(``probekit patch`` on reversal prompts). ``summarize_run(run_dir, out_dir)`` writes:

- ``tasks.csv``: exact match per model and task with its interval, and ``headline.csv``: per objective the mean
  over seeds and the seeds' range;
- ``readout.csv``: the read-out accuracy per model, read-out, position, target, layer and test set (with chance,
  control, selectivity and intervals), and ``readout_best.csv``: each model's best layer per cell;
- ``link.csv``: the per-person agreement of read-out and reversal success, every model;
- ``patch.csv``: the patching maps (flip rate ``greedy_first`` and ``p_answer``) of every model;
- figures (HTML, PNG, CSV): read-out accuracy by layer per objective, the patching route per objective for the
  reversed task, the per-person agreement.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.errors import UserError

MODEL = re.compile(r"^(?P<ft>ft_|pretrain_)?(?P<objective>ntp|abi|bico)_s(?P<seed>\d+)$")
TASKS = ("N2D", "D2N", "N2D-reverse", "D2N-reverse")


def _models(run: Path) -> list[tuple[str, str, int, str]]:
    """``(name, objective, seed, regime)`` of every evaluated model; regime ``scratch``, ``finetune`` or
    ``pretrain``."""
    out = []
    for d in sorted(p for p in run.iterdir() if p.is_dir()):
        m = MODEL.match(d.name)
        if m and (d / "results.csv").exists():
            regime = {"ft_": "finetune", "pretrain_": "pretrain"}.get(m["ft"] or "", "scratch")
            out.append((d.name, m["objective"], int(m["seed"]), regime))
    return out


def _read(files: list[tuple[Path, dict[str, Any]]]) -> pd.DataFrame:
    frames = [pd.read_csv(f).assign(**extra) for f, extra in files if f.exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def summarize_run(run: str | Path, out: str | Path, png: bool = True) -> dict[str, pd.DataFrame]:
    """Write the tables and figures of a reversal-mechanism run directory into ``out``; returns the tables."""
    from probekit.io import atomic_path

    run, out = Path(run), Path(out)
    models = _models(run)
    if not models:
        raise UserError(f"{run} holds no evaluated reversal models (<objective>_s<seed>/results.csv); run "
                        "experiments/reversal_mechanism/run.sh first")  # fmt: skip
    meta = {name: {"objective": o, "seed": s, "regime": r} for name, o, s, r in models}
    tasks = _read([(run / n / "results.csv", {"model_dir": n, **meta[n]}) for n in meta])
    tasks = tasks[(tasks["metric"] == "exact_match") & tasks["task"].isin(TASKS)]
    tasks = tasks[["model_dir", "objective", "seed", "regime", "task", "value", "ci_low", "ci_high", "n"]]
    head = (tasks.groupby(["regime", "objective", "task"])["value"].agg(["mean", "min", "max", "count"])
            .reset_index().rename(columns={"count": "seeds"}))  # fmt: skip
    readout = _read([(run / f"probe_{n}" / "results.csv", {"model_dir": n, **meta[n]}) for n in meta])
    link = _read([(run / f"probe_{n}" / "link.csv", {"model_dir": n, **meta[n]}) for n in meta])
    patch = _read([(run / f"patch_{n}" / "results.csv", {"model_dir": n, **meta[n]}) for n in meta])
    tables = {"tasks": tasks, "headline": head, "readout": readout, "link": link, "patch": patch}
    if not readout.empty:
        real = readout[~readout["model"].astype(str).str.endswith("(random init)")]
        best = real.sort_values("accuracy").groupby(
            ["model_dir", "templates", "readout", "position", "target", "test_set", "reading"]).tail(1)  # fmt: skip
        tables["readout_best"] = best.sort_values(["model_dir", "templates", "readout", "position", "target",
                                                   "test_set"])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        with atomic_path(out / f"{name}.csv") as tmp:
            df.to_csv(tmp, index=False)
    _figures(tables, out, png)
    return tables


def _figures(tables: dict[str, pd.DataFrame], out: Path, png: bool) -> None:
    """Read-out by layer per objective, the patching route of the reversed task, the per-person agreement."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from probekit.reporting.figures import Figure, write_figures

    figs: list[Figure] = []
    readout = tables["readout"]
    if not readout.empty:
        r = readout[
            (readout["regime"] == "scratch") & (readout["reading"] == "causal") & (readout["templates"] == "test")
        ]
        r = r[~r["model"].astype(str).str.endswith("(random init)")]
        cells = [("d2n", "description", "first_name"), ("d2n", "answer", "first_name"), ("n2d", "name", "role"),
                 ("n2d", "answer", "role")]  # fmt: skip
        fig = make_subplots(rows=1, cols=len(cells), subplot_titles=[f"{a} @{p}: {t}" for a, p, t in cells],
                            shared_yaxes=True)  # fmt: skip
        colors = {"ntp": "#1f77b4", "abi": "#2ca02c", "bico": "#d62728"}
        data = (r.groupby(["objective", "readout", "position", "target", "test_set", "layer"])
                [["accuracy", "chance"]].mean().reset_index())  # fmt: skip
        for c, (a, p, t) in enumerate(cells, start=1):
            for (obj, test_set), g in data[(data.readout == a) & (data.position == p) & (data.target == t)].groupby(
                ["objective", "test_set"]
            ):
                fig.add_trace(go.Scatter(
                    x=g["layer"], y=g["accuracy"], name=f"{obj} ({test_set})", legendgroup=f"{obj}{test_set}",
                    showlegend=c == 1, line={"color": colors.get(str(obj)), "dash": "solid" if test_set ==
                                             "same_direction" else "dot"}), row=1, col=c)  # fmt: skip
        fig.update_layout(title="Reversal read-outs by layer, held-out templates (mean over seeds; solid: trained "
                          "direction, dotted: reversed people)", yaxis_title="accuracy (choice among all values)",
                          height=420, width=1400)  # fmt: skip
        figs.append(Figure("readout_by_layer", fig, data))
    patch = tables["patch"]
    if not patch.empty:
        p = patch[(patch["regime"] == "scratch") & (patch["seed"] == patch["seed"].min())
                  & (patch["metric"] == "p_answer") & (patch["hook"] == "resid")]  # fmt: skip
        objs = sorted(p["objective"].unique())
        tasks = ["N2D-reverse", "D2N"]
        fig = make_subplots(rows=len(tasks), cols=len(objs), subplot_titles=[f"{o}: {t}" for t in tasks for o in objs])
        for i, t in enumerate(tasks, start=1):
            for j, o in enumerate(objs, start=1):
                g = p[(p["objective"] == o) & (p["attribute"] == t)]
                if g.empty:
                    continue
                grid = g.pivot_table(index="layer", columns="position", values="value")
                labels = g.drop_duplicates("position").set_index("position")["position_label"]
                fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=[str(labels[c]) for c in grid.columns],
                                         y=list(grid.index), coloraxis="coloraxis"), row=i, col=j)  # fmt: skip
        fig.update_layout(title="Patching route: P(source's answer) with one clean state patched in (seed 0)",
                          coloraxis={"colorscale": "Viridis"}, height=700, width=1400)  # fmt: skip
        figs.append(Figure("patch_route", fig, p))
    link = tables["link"]
    if not link.empty:
        last = link[link["layer"] == link.groupby("model_dir")["layer"].transform("max")]
        fig = go.Figure()
        for (obj, regime), g in last.groupby(["objective", "regime"]):
            g = g.sort_values(["readout", "position", "target", "seed"])
            fig.add_trace(go.Bar(
                x=[f"{a}@{p}:{t} s{s}" for a, p, t, s in zip(g.readout, g.position, g.target, g.seed)],
                y=g["agreement"], name=f"{obj} ({regime})",
                error_y={"type": "data", "symmetric": False, "array": g["agreement_ci_high"] - g["agreement"],
                         "arrayminus": g["agreement"] - g["agreement_ci_low"]},
            ))  # fmt: skip
        fig.update_layout(
            title="Per-person agreement of the read-out (last layer) with reversal success",
            yaxis_title="share of people where both agree",
            barmode="group",
            height=480,
            width=1400,
        )
        figs.append(Figure("link_agreement", fig, last))
    write_figures(figs, out, png)
