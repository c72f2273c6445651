"""The objectives experiment (experiments/objectives/config.yaml) shrunk to seconds: every stage runs for NTP, ABI
and BICO models and every table and comparison figure is written (pipeline, not science)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from probekit.experiment.runner import run_experiment
from probekit.experiment.spec import ExperimentConfig
from probekit.serde import from_dict
from tests.quick import QUICK_FINETUNE, quick_record

# every objective, and ABI on both datasets (the shipped config's other three models add nothing to the pipeline)
QUICK_MODELS = ("ntp_single", "abi_single", "abi_multi5_permute", "bico_single")


def quick_objectives_config() -> ExperimentConfig:
    """The shipped config with its scale cut down (people, model, steps, resamples) and four of its models
    (``QUICK_MODELS``); everything else as shipped."""
    rec = quick_record("objectives")
    assert set(QUICK_MODELS) < {m["name"] for m in rec["models"]}
    rec["models"] = [m for m in rec["models"] if m["name"] in QUICK_MODELS]
    rec["embed_probe"].update(l2_grid=[0.01], max_iter=10, bootstrap=30)
    rec["embed_probe"]["embed_probe"].update(epochs=1, patience=1)
    rec["inverse"]["finetune"] = dict(QUICK_FINETUNE)
    return from_dict(ExperimentConfig, rec)


@pytest.mark.slow
def test_quick_objectives_experiment_writes_every_table_and_figure(tmp_path: Path) -> None:
    cfg = quick_objectives_config()
    assert {m.train["objective"] for m in cfg.models} == {"ntp", "abi", "bico"} and len(cfg.models) == 4
    out = tmp_path / "objectives"
    res = run_experiment(cfg, out, progress=False, png=False, jobs=2)
    probe = res.probe_table
    names = [m.name for m in cfg.models]
    assert set(probe["model"]) == set(names) | {f"{n} (random init)" for n in names}
    # the ABI models are read both ways; the others causally only
    readings = {m: set(g["reading"]) for m, g in probe.groupby("model")}
    assert readings["abi_single"] == {"abi", "causal"}
    assert readings["ntp_single"] == readings["bico_single"] == {"causal"}
    embed = pd.read_parquet(out / "embed_update" / "results.parquet")
    assert set(embed["hook"]) == {"embed_update"} and set(embed["model"]) == set(probe["model"])
    for kind in ("qa", "inverse"):
        table = pd.read_csv(out / f"{kind}.csv")
        assert set(table["model"]) == set(names), kind
        assert {"ci_low", "ci_high"} <= set(table.columns)
    points = pd.read_csv(out / "comparison" / "points.csv")
    # one point per trained model x attribute x storage measure (frozen first token, whole value, embedding
    # update) wherever the Q-probe was fitted (a whole birth date is one class per person: no probe)
    q = pd.concat([probe, embed])
    q = q[(q["probe_kind"] == "q") & (q["status"] == "ok") & ~q["model"].str.contains("random init")]
    q = q[((q["reading"] == "abi") == (q["objective"] == "abi")) | (q["hook"] == "embed_update")]
    q = q[q["n_test_unseen"] < q["n_test"]]  # a probe whose test classes were never seen cannot score: no point
    assert len(points) == len(q.drop_duplicates(["model", "hook", "target_kind", "attribute"])) > 4 * 6 * 2
    # every model has its embedding-update points (read causally, the ABI models too)
    assert set(points.loc[points["measure"].str.contains("embedding"), "model"]) == set(names)
    assert set(points.loc[(points["objective"] == "abi") & points["measure"].str.startswith("Q frozen"),
                          "reading"]) == {"abi"}
    corr = pd.read_csv(out / "comparison" / "correlations.csv")
    assert set(corr["versus"]) == {"qa", "inverse"} and set(corr["method"]) == {"pearson", "spearman"}
    finite = corr.dropna(subset=["r"])
    assert ((finite["ci_low"] <= finite["r"] + 1e-9) | finite["ci_low"].isna()).all()
    figs = {f.stem for f in res.figures if f.suffix == ".html" and f.name != "report.html"}
    for stem in ("compare_objectives_p_first_token", "compare_objectives_q_first_token", "compare_storage_scatter",
                 "compare_objectives_extraction"):
        assert stem in figs and (out / "figures" / f"{stem}.csv").exists(), stem
    assert "Storage at the name vs extraction" in res.summary and "Embedding-update probe" in res.summary
    recall = pd.read_csv(out / "recall.csv")
    assert set(recall["model"]) == set(names) and "overall" in set(recall["task"])
    assert "Memorisation" in res.summary
    report = (out / "report.html").read_text()
    from probekit.reporting.report import figure_ids

    assert all(f'id="{i}"' in report for i in figure_ids(sorted(figs)))
    # resuming redoes nothing and gives the same tables
    again = run_experiment(cfg, out, progress=False, png=False, jobs=2)
    assert again.probe_table.equals(probe)
    assert np.allclose(pd.read_csv(out / "comparison" / "correlations.csv")["r"].fillna(9), corr["r"].fillna(9))
    # `probekit plot --experiment` re-renders the same figures, comparisons included, from the tables
    from probekit.cli import main

    figs_dir = tmp_path / "replot"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    assert main(["plot", "--experiment", str(out), "--out", str(figs_dir), "--no-png"]) == 0
    assert {p.stem for p in figs_dir.glob("*.html")} == figs | {"report"}
    # it reads the run and writes only under --out: its comparison tables too
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    replotted = pd.read_csv(figs_dir / "comparison" / "correlations.csv")
    assert replotted.equals(pd.read_csv(out / "comparison" / "correlations.csv"))
    assert main(["plot", "--out", str(figs_dir)]) == 2  # neither --results nor --experiment
