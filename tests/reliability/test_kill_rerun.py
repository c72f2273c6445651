"""Kill and re-run: each long command is started in a subprocess, SIGKILLed at a point the test chooses, and run
again with the same command (from another working directory where paths allow; `eval qa`, which does not resume
a finetuning, with --overwrite after the same command has said so); the final outputs must equal an uninterrupted
run's, and no temporary file or directory may be left behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from probekit.cli import main

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}
TRAIN = {"objective": "ntp", "model": TINY, "seq_len": 32, "batch_size": 4, "max_steps": 100, "warmup_steps": 5,
         "save_every": 10, "keep_checkpoints": 2, "eval_windows": 0, "log_every": 10, "seed": 0}  # fmt: skip
_TEMP = re.compile(r"\.pid\d+\.|\.tmp$|\.old$")


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "probekit.cli", "--threads", "1", *argv], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, limit: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it finished (or errored) first."""
    t0 = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            pytest.fail(f"the command ended (status {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() - t0 > limit:
            proc.kill()
            pytest.fail(f"{what} did not happen within {limit:.0f} s")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if _TEMP.search(p.name)]


def _no_output(out: Path) -> bool:
    """Nothing published at ``out``: absent, or holding only the writer's lock file (a killed writer's lock is
    released by the kernel and taken over by the next run)."""
    from probekit.io import LOCK_FILE

    return not out.exists() or [p.name for p in out.iterdir()] == [LOCK_FILE]


def _files(root: Path, skip: tuple[str, ...] = ("provenance.json", ".probekit.lock")) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}  # fmt: skip


@pytest.mark.slow
def test_data_bios_killed_while_writing_then_rerun(tmp_path: Path, monkeypatch) -> None:
    from probekit.data.store import build_dataset

    argv = ["data", "bios", "--n", "600", "--augmentation", "multi5+permute", "--seed", "3", "--out"]
    (tmp_path / "a").mkdir()
    proc = _start(argv + ["ds"], cwd=tmp_path / "a")
    _kill_when(proc, lambda: any(p.is_dir() for p in (tmp_path / "a").glob(".ds.pid*")), "the dataset temp dir")
    assert _leftovers(tmp_path / "a") and _no_output(tmp_path / "a" / "ds")  # the kill left a half-written dir
    monkeypatch.chdir(tmp_path / "a")
    assert main(argv + ["ds"]) == 0
    ref = build_dataset(tmp_path / "b" / "ds", n_people=600, augmentation="multi5+permute", seed=3)
    assert _files(tmp_path / "a" / "ds") == _files(ref.root)
    assert _leftovers(tmp_path / "a") == []


@pytest.mark.slow
def test_train_killed_after_a_checkpoint_resumes_from_another_directory(tiny_single, tmp_path: Path,
                                                                        monkeypatch) -> None:  # fmt: skip
    from probekit.io import read_jsonl
    from probekit.model.checkpoint import latest_checkpoint
    from probekit.provenance import describe_input, sha256_file
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cfg = tmp_path / "a" / "train.yaml"
    cfg.write_text(yaml.safe_dump(TRAIN), encoding="utf-8")
    data_rel = os.path.relpath(tiny_single.root, tmp_path / "a")
    proc = _start(["train", "--config", "train.yaml", "--data", data_rel, "--out", "run", "--no-progress"],
                  cwd=tmp_path / "a")  # fmt: skip
    ckpts = tmp_path / "a" / "run" / "checkpoints"
    _kill_when(proc, lambda: (ckpts / "step_00000020").is_dir(), "the step-20 checkpoint")
    assert latest_checkpoint(tmp_path / "a" / "run").name != "step_00000100"
    monkeypatch.chdir(tmp_path / "elsewhere")  # the resume needs no relative path from the first directory
    assert main(["--threads", "1", "train", "--resume", "--out", str(tmp_path / "a" / "run"), "--no-progress"]) == 0
    ref = train(TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "ref"), **TRAIN), progress=False)
    got = latest_checkpoint(tmp_path / "a" / "run")
    assert got.name == ref.checkpoint.name == "step_00000100"
    assert (got / "model.safetensors").read_bytes() == (ref.checkpoint / "model.safetensors").read_bytes()
    losses = lambda p: [(r["step"], r["loss"]) for r in read_jsonl(p / "metrics.jsonl")]  # noqa: E731
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "ref")
    assert _leftovers(tmp_path / "a") == []
    sessions = yaml.safe_load((tmp_path / "a" / "run" / "provenance.json").read_text())["sessions"]
    assert [s["resumed_at_step"] is None for s in sessions] == [True, False]
    assert sessions[0]["inputs"]["data"] == describe_input(tiny_single.root)
    assert sessions[1]["cwd"].endswith("elsewhere")
    summary = yaml.safe_load((tmp_path / "a" / "run" / "summary.json").read_text())
    assert summary["weights_sha256"] == sha256_file(got / "model.safetensors")


@pytest.mark.slow
def test_run_killed_during_training_then_rerun(tmp_path: Path, monkeypatch) -> None:
    from probekit.experiment.runner import run_experiment
    from probekit.experiment.spec import ExperimentConfig
    from probekit.serde import from_dict

    exp = {"name": "tiny", "datasets": [{"name": "s", "n_people": 40, "augmentation": "single", "seed": 0}],
           "models": [{"name": "m", "data": "s", "train": {**TRAIN, "max_steps": 60}}],
           "probe": {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 10},
           "control_random": False}  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a" / "exp.yaml").write_text(yaml.safe_dump(exp), encoding="utf-8")
    proc = _start(["run", "exp.yaml", "--out", "out", "--no-png"], cwd=tmp_path / "a")
    ckpts = tmp_path / "a" / "out" / "models" / "m" / "checkpoints"
    _kill_when(proc, lambda: (ckpts / "step_00000020").is_dir(), "the step-20 checkpoint")
    monkeypatch.chdir(tmp_path / "elsewhere")
    out = tmp_path / "a" / "out"
    assert main(["--threads", "1", "run", str(tmp_path / "a" / "exp.yaml"), "--out", str(out), "--no-png"]) == 0
    ref = run_experiment(from_dict(ExperimentConfig, exp), tmp_path / "ref", progress=False, png=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), pd.read_csv(ref.out / "results.csv"))
    assert _files(out / "data") == _files(ref.out / "data")
    final = "models/m/checkpoints/step_00000060/model.safetensors"
    assert (out / final).read_bytes() == (ref.out / final).read_bytes()
    assert _leftovers(out) == []
    sessions = yaml.safe_load((out / "provenance.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["command"][-3:] == ["--out", str(out), "--no-png"]


@pytest.mark.slow
def test_probe_killed_while_probing_then_rerun(tiny_single, tmp_path: Path, monkeypatch) -> None:
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    tc = {**TRAIN, "max_steps": 10, "model": {**TINY, "n_ctx": 128}}  # P-probes read up to ~70 tokens
    train(TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "model"), **tc), progress=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"kinds": ["p", "q"], "targets": ["first_token"], "l2_grid": [0.01],
                                    "max_iter": 10}), encoding="utf-8")  # fmt: skip
    argv = ["probe", "--spec", str(spec), "--model", str(tmp_path / "model"), "--data", str(tiny_single.root),
            "--no-png", "--control-random", "--out"]  # fmt: skip
    (tmp_path / "a").mkdir()
    proc = _start(argv + [str(tmp_path / "a" / "p")], cwd=tmp_path)
    _kill_when(proc, lambda: any(p.is_dir() for p in (tmp_path / "a").glob(".p.pid*")), "the probe temp dir")
    assert _no_output(tmp_path / "a" / "p") and _leftovers(tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    assert main(["--threads", "1", *argv, str(tmp_path / "a" / "p")]) == 0
    assert main(["--threads", "1", *argv, str(tmp_path / "ref")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "p" / "results.csv"),
                                  pd.read_csv(tmp_path / "ref" / "results.csv"))  # fmt: skip
    assert _leftovers(tmp_path / "a") == []


@pytest.mark.slow
def test_eval_qa_killed_while_finetuning_then_rerun(tiny_single, tmp_path: Path, monkeypatch, capsys) -> None:
    """An evaluation is not resumable mid-finetune: the same command names the interruption and --overwrite, and
    the seeded re-run gives the uninterrupted run's results."""
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train

    tc = {**TRAIN, "max_steps": 10, "model": {**TINY, "n_ctx": 128}}
    train(TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "model"), **tc), progress=False)
    argv = ["eval", "qa", "--checkpoint", str(tmp_path / "model"), "--data", str(tiny_single.root), "--attrs",
            "major", "--steps", "40", "--warmup-steps", "2", "--batch-size", "8", "--no-png", "--out"]  # fmt: skip
    (tmp_path / "a").mkdir()
    out = tmp_path / "a" / "q"
    proc = _start(argv + [str(out)], cwd=tmp_path)
    metrics = out / "finetune" / "metrics.jsonl"
    _kill_when(proc, lambda: metrics.exists() and metrics.stat().st_size > 0, "the first finetuning metrics row")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["--threads", "1", *argv, str(out)]) == 2
    assert "interrupted" in capsys.readouterr().err
    assert main(["--threads", "1", *argv, str(out), "--overwrite"]) == 0
    assert main(["--threads", "1", *argv, str(tmp_path / "ref")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), pd.read_csv(tmp_path / "ref" / "results.csv"))
    assert (out / "predictions.jsonl").read_bytes() == (tmp_path / "ref" / "predictions.jsonl").read_bytes()
    assert _leftovers(tmp_path / "a") == []
