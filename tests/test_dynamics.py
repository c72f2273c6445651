"""Training dynamics: probing every saved checkpoint of a run (``probekit probe --checkpoints``) and the layer x
step figure (``probekit plot --dynamics``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from probekit.cli import main
from probekit.reporting.dynamics import dynamics_table
from probekit.reporting.results import read_results
from probekit.training.config import TrainConfig
from probekit.training.trainer import train

pytestmark = pytest.mark.slow  # trains a run and probes every checkpoint through the CLI


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_single, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dyn") / "run"
    cfg = TrainConfig(data=str(tiny_single.root), out=str(out), objective="ntp", max_steps=6, batch_size=8,
                      seq_len=128, save_every=2, keep_checkpoints=0, log_every=2, warmup_steps=1, seed=0,
                      model={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64})  # fmt: skip
    train(cfg, progress=False)
    return out


def _spec(tmp_path: Path) -> Path:
    f = tmp_path / "spec.yaml"
    f.write_text("name: dyn\nkinds: [p, q]\ntargets: [first_token]\nl2_grid: [0.01]\nmax_iter: 20\n")
    return f


def test_probe_every_checkpoint_gives_a_step_column_and_the_figure(run_with_checkpoints: Path, tiny_single,
                                                                   tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "probes"
    args = ["probe", "--spec", str(_spec(tmp_path)), "--model", str(run_with_checkpoints), "--data",
            str(tiny_single.root), "--out", str(out), "--checkpoints", "all", "--no-png"]  # fmt: skip
    assert main(args) == 0
    df = read_results([str(out)])
    assert sorted(df["step"].dropna().unique().tolist()) == [2, 4, 6]
    assert set(df["model"].astype(str)) == {"run@2", "run@4", "run@6"}
    assert (df.groupby("step").size().nunique()) == 1  # the same probes at every step
    assert (out / "figures" / "dynamics_run.html").exists()
    table = pd.read_csv(out / "figures" / "dynamics_run.csv")
    assert set(table["measure"]) == {"q_name", "p_first", "p_own"} and sorted(table["step"].unique()) == [2, 4, 6]
    # each step's rows equal probing that checkpoint on its own (the series changes nothing but the name)
    single = tmp_path / "one"
    ckpt = run_with_checkpoints / "checkpoints" / "step_00000004"
    assert main(["probe", "--spec", str(_spec(tmp_path)), "--model", str(ckpt), "--data", str(tiny_single.root),
                 "--out", str(single), "--no-png"]) == 0  # fmt: skip
    one = read_results([str(single)]).sort_values(["probe_kind", "layer", "position", "attribute"])
    s4 = df[df["step"] == 4].sort_values(["probe_kind", "layer", "position", "attribute"])
    assert one["accuracy"].tolist() == s4["accuracy"].tolist()


def test_dynamics_table_means_over_attributes(run_with_checkpoints: Path) -> None:
    rows = []
    for step in (10, 20):
        for attr, acc in (("major", 0.2), ("company", 0.4)):
            base = {"objective": "ntp", "dataset": "d", "hook": "resid", "target_kind": "first_token",
                    "n_train": 10, "n_test": 10, "n_classes": 3, "status": "ok", "step": step, "baseline": 0.1}
            rows.append({**base, "model": f"r@{step}", "probe_kind": "q", "layer": 1, "position": "name",
                         "attribute": attr, "accuracy": acc + step / 100})  # fmt: skip
            rows.append({**base, "model": f"r@{step}", "probe_kind": "p", "layer": 1, "position": "birth_date",
                         "attribute": attr, "accuracy": 1.0})  # fmt: skip
            rows.append({**base, "model": f"r@{step}", "probe_kind": "p", "layer": 1, "position": "major",
                         "attribute": attr, "accuracy": 0.0})  # another position: not the first  # fmt: skip
    t = dynamics_table(pd.DataFrame(rows))
    q = t[t["measure"] == "q_name"].set_index("step")["accuracy"]
    assert q.loc[10] == pytest.approx(0.4) and q.loc[20] == pytest.approx(0.5)
    assert (t[t["measure"] == "p_first"]["accuracy"] == 1.0).all()
    own = t[t["measure"] == "p_own"]  # the probe of major read at the major position: 0.0 in these rows
    assert len(own) == 2 and (own["accuracy"] == 0.0).all() and (own["n_attributes"] == 1).all()
    assert set(t["model"]) == {"r"}


def test_bad_checkpoint_choice_is_one_line_error(run_with_checkpoints: Path, tiny_single, tmp_path: Path,
                                                 capsys) -> None:  # fmt: skip
    base = ["probe", "--spec", str(_spec(tmp_path)), "--model", str(run_with_checkpoints), "--data",
            str(tiny_single.root), "--no-png"]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "a"), "--checkpoints", "3"]) == 2
    assert "saved steps: 2, 4, 6" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b"), "--checkpoints", "x,y"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_plot_dynamics_with_qa_points(run_with_checkpoints: Path, tiny_single, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    assert main(["probe", "--spec", str(_spec(tmp_path)), "--model", str(run_with_checkpoints), "--data",
                 str(tiny_single.root), "--out", str(probes), "--checkpoints", "2,6", "--no-png"]) == 0  # fmt: skip
    qa = []
    for step in (2, 6):
        d = tmp_path / f"qa{step}"
        ckpt = run_with_checkpoints / "checkpoints" / f"step_{step:08d}"
        assert main(["eval", "qa", "--checkpoint", str(ckpt), "--data", str(tiny_single.root), "--out", str(d),
                     "--finetune", "none", "--no-png", "--no-progress"]) == 0  # fmt: skip
        qa.append(f"{step}={d}")
    figs = tmp_path / "figs"
    assert main(["plot", "--dynamics", str(probes), "--qa", *qa, "--out", str(figs), "--no-png"]) == 0
    points = pd.read_csv(figs / "dynamics_qa.csv")
    assert points["step"].tolist() == [2, 6] and points["n"].tolist() == [120, 120]  # 20 P_test people x 6
    assert ((points["ci_low"] <= points["exact_match"]) & (points["exact_match"] <= points["ci_high"])).all()
    shown = pd.read_csv(figs / "dynamics_run.csv")
    assert set(shown["measure"]) == {"q_name", "p_first", "p_own", "qa_exact_match"}
    assert main(["plot", "--dynamics", str(probes), "--qa", "x=y", "--out", str(tmp_path / "bad")]) == 2
