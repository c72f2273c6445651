"""``probekit run --dry-run`` (the plan: jobs, resources, estimated GPU-hours, every setting checked, nothing written),
the paper-scale config it is made for, and training one model over several processes as a multi-GPU Slurm job
does (torchrun + accelerate; CPU processes over gloo here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from probekit.cli import main
from probekit.experiment.plan import train_flops, train_tokens
from probekit.experiment.spec import config_record, load_experiment
from probekit.experiment.stage import mark_done
from tests.test_executor import two_models, write_config
from tests.test_experiments import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "experiments" / "paper_scale" / "config.yaml"


def test_training_flops_are_six_per_parameter_and_token_plus_attention() -> None:
    train = {"model": {"d_model": 8, "n_layers": 2, "n_heads": 2, "d_mlp": 16}, "seq_len": 4, "batch_size": 2,
             "max_steps": 3}  # fmt: skip
    assert train_tokens(train) == 3 * 2 * 4
    n = 2 * (4 * 8 * 8 + 3 * 8 * 16) + 8 * 10  # attention + SwiGLU per layer, and the unembedding
    assert train_flops(train, vocab=10) == 6 * (n + 2 * 4 * 8) * 24
    assert train_tokens({**train, "max_steps": None, "tokens": 1000}) == 1000
    assert train_tokens({**train, "max_steps": None, "epochs": 2.0}) is None  # windows unknown before the data
    assert train_tokens({**train, "max_steps": None, "epochs": 2.0}, windows=10) == 2 * 10 * 4


def test_paper_scale_config_is_the_papers_setting() -> None:
    cfg = load_experiment(PAPER)
    cfg.validate()
    assert {d.n_people for d in cfg.datasets} == {100_000} and not any(d.name_pools for d in cfg.datasets)
    assert {d.augmentation for d in cfg.datasets} == {"single", "multi5+permute"}
    for m in cfg.models:
        t = m.train
        assert (t["model"]["n_layers"], t["model"]["d_model"], t["seq_len"], t["batch_size"]) == (12, 768, 512, 96)
        assert (t["max_steps"], t["lr"], t["min_lr"], t["warmup_steps"]) == (80000, 0.001, 0.0001, 1000)
        assert t["batch_size"] % cfg.resources_for("train").gpus == 0  # split over the node's GPUs
    # 85M non-embedding weights, as GPT-2 small's
    mc = cfg.models[0].train["model"]
    assert mc["n_layers"] * (4 * mc["d_model"] ** 2 + 3 * mc["d_model"] * mc["d_mlp"]) == 12 * 7_077_888


def test_paper_scale_dry_run_prints_the_jobs_and_writes_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "paper"
    assert main(["run", str(PAPER.parent), "--out", str(out), "--executor", "slurm", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()  # nothing written (nor submitted: no jobs/ folder)
    assert "10 jobs in 5 stages, 10 left to run" in text
    rows = {line.split()[2]: line.split() for line in text.splitlines() if line.strip().startswith("train ")}
    assert set(rows) == {"ntp_multi5_permute", "ntp_single"}
    # stage, "train", key, cpus, gpus, mem, time, partition, PFLOPs, est GPU-h, requested GPU-h, done
    pflops, est = float(rows["ntp_single"][8]), float(rows["ntp_single"][9])
    assert rows["ntp_single"][3:6] == ["32", "4", "256G"] and 2000 < pflops < 2400  # 6 N T, N ~ 90M, T = 3.9B
    assert est == pytest.approx(pflops * 1e15 / 300e12 / 3600, abs=0.01)
    assert "GPU-hours at 300 effective TFLOP/s per GPU" in text
    # the assumed throughput is the user's to give
    assert main(["run", str(PAPER.parent), "--out", str(out), "--dry-run", "--gpu-tflops", "150"]) == 0
    assert f"{2 * est:.1f}"[:-1] in capsys.readouterr().out.replace(",", "")
    assert main(["run", str(PAPER.parent), "--out", str(out), "--dry-run", "--gpu-tflops", "0"]) == 2


@pytest.mark.parametrize("change, message", [
    ({"resources": {"probe": {"gpus": 2}}}, "resources.probe.gpus is 2, but only training runs over several GPUs"),
    ({"resources": {"train": {"mem": "lots"}}}, "resources.train.mem must be a whole number with a unit"),
    ({"probe": {"kinds": ["x"]}}, "kinds"),
])  # fmt: skip
def test_dry_run_checks_every_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any],
                                      message: str) -> None:  # fmt: skip
    cfg = write_config(tmp_path, two_models(**change))
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_dry_run_marks_finished_shares_and_refuses_changed_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    rec = two_models(qa={"finetune": {"method": "full", "epochs": 1}})
    cfg_file = write_config(tmp_path, rec)
    out = tmp_path / "run"
    out.mkdir()
    (out / "experiment.json").write_text(json.dumps(config_record(load_experiment(cfg_file))))
    mark_done(out / "models" / "a")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["run", str(cfg_file), "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "6 jobs in 3 stages, 5 left to run" in text
    done = {line.split()[2]: line.split()[-1] for line in text.splitlines() if line.strip().startswith("train ")}
    assert done == {"a": "True", "b": "False"}
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    # a started run with other settings is refused, as probekit run refuses it
    rec["models"][0]["train"]["lr"] = 0.5
    cfg_file.write_text(yaml.safe_dump(rec))
    assert main(["run", str(cfg_file), "--out", str(out), "--dry-run"]) == 2
    assert "holds the outputs (models) of a different" in capsys.readouterr().err


@pytest.mark.slow
def test_training_over_two_processes_matches_one(tmp_path: Path) -> None:
    """What a Slurm job with resources.train.gpus > 1 runs (one process per GPU): here two CPU processes, which must
    train the same weights as one process (the batch is global and split between them)."""
    import torch
    from safetensors.torch import load_file

    from probekit.data.store import build_dataset
    from probekit.experiment.stages.train import train_launched, train_one

    data = tmp_path / "d"
    build_dataset(data, n_people=20, augmentation="single", seed=0, pool_limits={"major": 4})
    tc = {**TINY_TRAIN, "max_steps": 6, "save_every": 3, "data": str(data)}
    train_one({**tc, "out": str(tmp_path / "one")}, False)
    train_launched({**tc, "out": str(tmp_path / "two")}, False, 2)
    assert (tmp_path / "two" / ".complete").exists()
    one = load_file(str(tmp_path / "one" / "checkpoints" / "step_00000006" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=1e-5, rtol=1e-4, msg=k)
    # a launch that fails says why in one line (the job's log has the rest)
    with pytest.raises(RuntimeError, match="training over 2 processes failed"):
        train_launched({**tc, "batch_size": 7, "out": str(tmp_path / "odd")}, False, 2)
