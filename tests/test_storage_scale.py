"""experiments/storage_scale shrunk to seconds with its axes kept (depth as shipped, width and people scaled
down): every stage runs and the scale table and figure put each model on its axis (pipeline, not science)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from probekit.experiment.runner import run_experiment
from probekit.experiment.spec import ExperimentConfig
from probekit.serde import from_dict
from tests.quick import quick_record


@pytest.mark.slow
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
    # one model per axis value (the shipped config has a single/multi5+permute pair at each)
    keep = ("ntp_single", "ntp_multi5_permute", "ntp_multi5_permute_2l", "ntp_multi5_permute_8l",
            "ntp_multi5_permute_w256", "ntp_multi5_permute_1000")  # fmt: skip
    rec["models"] = [m for m in rec["models"] if m["name"] in keep]
    rec["datasets"] = [d for d in rec["datasets"] if d["name"] in {m["data"] for m in rec["models"]}]
    rec["embed_probe"].update(l2_grid=[0.01], bootstrap=30)
    rec["control_random"] = False  # the random-init copies would double the probe stage
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


@pytest.mark.slow
def test_parts_run_apart_join_into_one_scale_figure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A part of the experiment run with ``models`` into its own directory still writes its scale table (its
    models share every axis value; a one-model part too), and ``probekit plot --scale`` joins it with the other
    parts' tables; a model given twice with different numbers, or tables where nothing varies, are refused
    before anything is written."""
    from probekit.cli import main

    rec = quick_record("storage_scale")
    people = {"single": 40, "multi5_permute": 40, "single_1000": 60, "multi5_permute_1000": 60}
    for d in rec["datasets"]:
        d["n_people"] = people[d["name"]]
    rec["embed_probe"] = rec["patch"] = None  # the scale table needs the Q-probe at the name and QA only
    rec["recall"] = rec["control_random"] = False
    rec["probe"].update(kinds=["q"], targets=["first_token"], control_task=False)
    cfg = from_dict(ExperimentConfig, rec)
    runs = {"base": ["ntp_single", "ntp_multi5_permute"], "people": ["ntp_multi5_permute_1000"],
            "people_single": ["ntp_single_1000"]}
    for name, models in runs.items():
        run_experiment(cfg, tmp_path / name, progress=False, png=False, jobs=2, models=models)
        part = pd.read_csv(tmp_path / name / "comparison" / "scale.csv")
        assert sorted(part["model"]) == sorted(models)
        assert not (tmp_path / name / "figures" / "scale_storage_extraction.html").exists()  # nothing varies
    out = tmp_path / "joined"
    assert main(["plot", "--scale", str(tmp_path / "base"), str(tmp_path / "people" / "comparison" / "scale.csv"),
                 str(tmp_path / "people_single"), "--out", str(out), "--no-png"]) == 0  # fmt: skip
    joined = pd.read_csv(out / "scale_storage_extraction.csv")
    assert sorted(joined["model"]) == sorted(m for part in runs.values() for m in part)
    assert set(joined["n_people"]) == {40, 60}
    assert (out / "scale_storage_extraction.html").exists()
    # the same table twice is one set of models; a changed copy of a model is refused, as is nothing to vary
    again = tmp_path / "again.csv"
    base = pd.read_csv(tmp_path / "base" / "comparison" / "scale.csv")
    base.to_csv(again, index=False)
    assert main(["plot", "--scale", str(tmp_path / "base"), str(again), str(tmp_path / "people"),
                 "--out", str(tmp_path / "twice"), "--no-png"]) == 0  # fmt: skip
    base.assign(qa=base["qa"] + 0.01).to_csv(again, index=False)
    capsys.readouterr()
    for given, error in (([tmp_path / "base", again], "has different rows"), ([tmp_path / "base"], "nothing varies"),
                         ([tmp_path / "base" / "models"], "no scale table")):  # fmt: skip
        assert main(["plot", "--scale", *map(str, given), "--out", str(tmp_path / "bad")]) == 2
        assert error in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_name_pools_are_a_scale_axis() -> None:
    from probekit.reporting.scaling import full_last_names, model_axes, varying_axes

    rec = quick_record("shared_names")
    cfg = from_dict(ExperimentConfig, rec)
    axes = model_axes(cfg).set_index("model")
    assert axes.loc["ntp_single_n12", "last_names"] == 12 and axes.loc["ntp_single_n50", "last_names"] == 50
    assert varying_axes(axes) == ["last_names"]  # same depth, width and people: only the name pools vary
    rec["datasets"] = [{k: v for k, v in d.items() if k != "name_pools"} for d in rec["datasets"]]
    assert set(model_axes(from_dict(ExperimentConfig, rec))["last_names"]) == {full_last_names()}


def test_scale_tables_from_before_the_name_axis_read_as_full_pools(tmp_path: Path) -> None:

    from probekit.cli.plot import _read_scale_tables
    from probekit.reporting.scaling import full_last_names

    old = pd.read_csv(Path(__file__).resolve().parents[1] / "experiments/storage_scale/results/comparison/scale.csv")
    assert "last_names" not in old.columns
    (tmp_path / "old.csv").write_text(old.to_csv(index=False))
    [(_, t)] = _read_scale_tables([str(tmp_path / "old.csv")])
    assert (t["last_names"] == full_last_names()).all() and len(t) == len(old)


def _scale_rows(points: list[tuple[str, int, int]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": f"{aug}_{n}", "augmentation": aug, "n_layers": 4, "d_model": 128, "n_people": n,
                          "last_names": names, "measure": "Q frozen, first token", "attributes": 6,
                          "q_name": 0.1, "q_low": 0.08, "q_high": 0.12, "qa": n / 4000, "qa_low": n / 4000 - 0.02,
                          "qa_high": n / 4000 + 0.02, "baseline": 0.13} for aug, n, names in points])  # fmt: skip


def test_scale_figure_lets_name_pools_grow_with_the_people() -> None:
    """At 3,000 people 12 names per part cannot give every person a full name of their own, so the pools grow
    with the people: the people panel keeps those points (the pools named in its title) instead of holding the
    pools at their base and dropping them, and a panel with one value of its axis left is not drawn."""
    from probekit.reporting.scaling import scale_figure

    table = _scale_rows([("m5p", 300, 12), ("m5p", 1000, 12), ("m5p", 3000, 15), ("single", 300, 12),
                         ("single", 3000, 15)])  # fmt: skip
    fig = scale_figure(table).fig
    assert [a.text for a in fig.layout.annotations] == [
        "people<br>(4 layers, width 128; last names in the pool 12-15 with the people)"]
    qa = {t.name: list(t.x) for t in fig.data if t.name.endswith("QA extraction")}
    assert qa == {"m5p: QA extraction": [300, 1000, 3000], "single: QA extraction": [300, 3000]}
    # axes that vary apart from each other are still held at their base (the most common value)
    apart = _scale_rows([("m5p", 300, 12), ("m5p", 1000, 12), ("m5p", 300, 50)])
    fig = scale_figure(apart).fig
    assert len(fig.layout.annotations) == 2
    qa_by_panel = [(t.xaxis, list(t.x)) for t in fig.data if t.name.endswith("QA extraction")]
    assert qa_by_panel == [("x", [300, 1000]), ("x2", [12, 50])]
