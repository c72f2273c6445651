"""Training dynamics: storage against training step, from the probes of a run's saved checkpoints.

``probekit probe --model <run> --checkpoints all`` probes every checkpoint of a run as its own model and adds a
``step`` column to the results table. From such a table ``dynamics_table`` takes, per step and layer, two means
over the attributes (first token of each value, P_test people, frozen linear probes):

- ``p_own``: the P-probe at each attribute's own position (the token before its value): memorisation;
- ``q_name``: the Q-probe at the last name token (the name read alone): is the person's knowledge at the name?
- ``p_first``: the P-probe at the birth-date position (the first sentence of a ``single`` biography), predicting
  every *other* attribute: is the whole biography already known where it starts?

beside the mean majority baseline of the same probes. ``dynamics_figure`` draws them as layer x step heatmaps,
with QA exact match against step (``qa`` rows: ``step``, ``exact_match``, ``ci_low``, ``ci_high``, from
``probekit eval qa`` on the same checkpoints) as a line under them, so a reader sees whether storage at the name
appears before, with or after memorisation and extraction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from probekit.errors import UserError
from probekit.reporting.figures import Figure

FIRST_POSITION = "birth_date"  # the P position of the first sentence of a biography
MEASURE_LABELS = {"p_own": "P-probe at each attribute's own position (memorisation)",
                  "p_first": "P-probe at the birth-date position (other attributes)",
                  "q_name": "Q-probe at the name"}  # fmt: skip


def dynamics_table(df: pd.DataFrame, target: str = "first_token") -> pd.DataFrame:
    """Rows ``model, step, layer, measure, accuracy, baseline, n_attributes`` from a results table with ``step``.

    ``model`` is the run (the model name without its ``@step`` suffix); random-init controls are left out.
    """
    if "step" not in df.columns or df["step"].dropna().nunique() < 1:
        raise UserError("the results table has no 'step' column; probe a run's checkpoints with "
                        "`probekit probe --model <run> --checkpoints all`")  # fmt: skip
    d = df[df["step"].notna() & (df["hook"].astype(str) == "resid") & (df["target_kind"].astype(str) == target)
           & (df["status"].astype(str) == "ok")].copy()  # fmt: skip
    d["run"] = d["model"].astype(str).str.replace(r"@\d+$", "", regex=True)
    q = d[d["probe_kind"].astype(str) == "q"].assign(measure="q_name")
    pk = d[d["probe_kind"].astype(str) == "p"]
    p = pk[(pk["position"].astype(str) == FIRST_POSITION)
           & (pk["attribute"].astype(str) != FIRST_POSITION)].assign(measure="p_first")  # fmt: skip
    own = pk[pk["position"].astype(str) == pk["attribute"].astype(str)].assign(measure="p_own")
    both = pd.concat([q, p, own], ignore_index=True)
    if both.empty:
        raise UserError(f"no {target} Q-probes or P-probes at the {FIRST_POSITION} position in the table; "
                        "probe with kinds [p, q]")  # fmt: skip
    out = (both.groupby(["run", "step", "layer", "measure"], as_index=False)
           .agg(accuracy=("accuracy", "mean"), baseline=("baseline", "mean"), n_attributes=("attribute", "nunique"))
           .rename(columns={"run": "model"}))  # fmt: skip
    out["step"] = out["step"].astype(int)
    out["layer"] = out["layer"].astype(int)
    return out.sort_values(["model", "measure", "step", "layer"]).reset_index(drop=True)


def dynamics_figure(table: pd.DataFrame, qa: pd.DataFrame | None = None, model: str | None = None) -> Figure:
    """Layer x step heatmaps of ``q_name`` and ``p_first`` (accuracy in %, colour capped at 100) for one run, and
    QA exact match against step beneath them when ``qa`` is given."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = list(dict.fromkeys(table["model"].astype(str)))
    model = model or runs[0]
    t = table[table["model"] == model]
    measures = [m for m in MEASURE_LABELS if m in set(t["measure"])]
    rows = len(measures) + (1 if qa is not None and len(qa) else 0)
    titles = [MEASURE_LABELS[m] for m in measures] + (["QA exact match (P_test)"] if rows > len(measures) else [])
    fig = make_subplots(rows=rows, cols=1, subplot_titles=titles, vertical_spacing=0.12, shared_xaxes=True)
    steps = sorted(t["step"].unique())
    for i, m in enumerate(measures, start=1):
        grid = t[t["measure"] == m].pivot(index="layer", columns="step", values="accuracy").reindex(columns=steps)
        base = float(t[t["measure"] == m]["baseline"].mean())
        fig.add_trace(go.Heatmap(z=(grid.to_numpy() * 100).round(1), x=steps,
                                 y=[str(int(v)) for v in grid.index], zmin=0, zmax=100, colorscale="Viridis",
                                 showscale=i == 1, colorbar={"title": "%"}, texttemplate="%{z:.0f}",
                                 hovertemplate="step %{x}, layer %{y}: %{z}%<extra>" + f"baseline {base:.1%}"
                                 + "</extra>"), row=i, col=1)  # fmt: skip
        fig.update_yaxes(title_text=f"layer (baseline {base:.0%})", row=i, col=1)
    if rows > len(measures) and qa is not None:
        q = qa.sort_values("step")
        err = {"type": "data", "symmetric": False, "array": (q["ci_high"] - q["exact_match"]) * 100,
               "arrayminus": (q["exact_match"] - q["ci_low"]) * 100} if "ci_low" in q else None  # fmt: skip
        fig.add_trace(go.Scatter(x=q["step"], y=q["exact_match"] * 100, mode="lines+markers",
                                 error_y=err, name="QA exact match"), row=rows, col=1)  # fmt: skip
        fig.update_yaxes(title_text="%", range=[0, 100], row=rows, col=1)
    fig.update_xaxes(title_text="training step", tickvals=steps, row=rows, col=1)
    fig.update_layout(title=f"{model}: storage through training", height=300 * rows, width=760, showlegend=False)
    data = table[table["model"] == model]
    if qa is not None and len(qa):
        data = pd.concat([data, qa.assign(model=model, measure="qa_exact_match", accuracy=qa["exact_match"])
                         [["model", "step", "measure", "accuracy"]]], ignore_index=True)  # fmt: skip
    safe = model.replace("/", "_")
    return Figure(name=f"dynamics_{safe}", fig=fig, data=data, png_size=(760, 300 * rows))


def qa_point(qa_dir: str | Path, step: int, seed: int = 0) -> dict[str, Any]:
    """One QA point from a ``probekit eval qa`` output directory: exact match over every P_test question (all
    attributes), with its 95% person-bootstrap interval (a person's six questions resampled together)."""
    import numpy as np

    from probekit.io import read_jsonl
    from probekit.stats import DEFAULT_LEVEL, DEFAULT_N_BOOT, person_bootstrap

    f = Path(qa_dir) / "predictions.jsonl"
    if not f.is_file():
        raise UserError(f"{qa_dir} holds no predictions.jsonl; give a `probekit eval qa` output directory")
    rows = [r for r in read_jsonl(f) if r.get("split", "test") == "test"]
    if not rows:
        raise UserError(f"{f} holds no P_test predictions")
    em = np.array([float(r["exact_match"]) for r in rows])
    pids = np.array([int(r["pid"]) for r in rows])
    iv = person_bootstrap(em[None], pids, DEFAULT_N_BOOT, DEFAULT_LEVEL, seed)
    return {"step": int(step), "exact_match": float(em.mean()), "ci_low": float(iv.low[0]),
            "ci_high": float(iv.high[0]), "n": len(rows)}  # fmt: skip
