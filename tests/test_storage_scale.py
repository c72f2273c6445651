"""experiments/storage_scale shrunk to seconds with its axes kept (depth as shipped, width and people scaled
down): every stage runs and the scale table and figure put each model on its axis (pipeline, not science)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probekit.config import from_dict
from probekit.experiments import ExperimentConfig, run_experiment
from tests.quick import quick_record


def test_quick_storage_scale_experiment_plots_storage_and_qa_against_each_axis(tmp_path: Path) -> None:
    rec = quick_record("storage_scale")
    people = {"single": 40, "multi5_permute": 40, "single_1000": 60, "multi5_permute_1000": 60}
    for d in rec["datasets"]:
        d["n_people"] = people[d["name"]]
    for m in rec["models"]:  # quick_record gave every model the tiny shape: put the axes back, scaled down
        name = m["name"]
        layers = 2 if name.endswith("_2l") else 8 if name.endswith("_8l") else 4
        width = 64 if name.endswith("_w256") else 32
        m["train"]["model"] = {"d_model": width, "n_layers": layers, "n_heads": 2, "d_mlp": 2 * width, "n_ctx": 160}
    rec["embed_probe"].update(l2_grid=[0.01], bootstrap=30)
    rec["control_random"] = False  # ten models: the random-init copies would double the probe stage
    rec["embed_probe"]["embed_probe"].update(epochs=1, patience=1)
    out = tmp_path / "scale"
    res = run_experiment(from_dict(ExperimentConfig, rec), out, progress=False, png=False, jobs=2)
    scale = pd.read_csv(out / "comparison" / "scale.csv")
    assert len(scale) == len(rec["models"])
    assert set(scale["n_layers"]) == {2, 4, 8} and set(scale["d_model"]) == {32, 64}
    assert set(scale["n_people"]) == {40, 60}
    assert set(scale["augmentation"]) == {"single", "multi5+permute"}
    assert ((scale["q_low"] <= scale["q_name"] + 1e-9) & (scale["q_name"] <= scale["q_high"] + 1e-9)).all()
    assert (out / "figures" / "scale_storage_extraction.html").exists()
    assert "Scale:" in res.summary and "Activation patching" in res.summary
    embed = pd.read_parquet(out / "embed_update" / "results.parquet")
    assert set(embed["probe_kind"]) == {"q"}
