"""experiments/reversal_mechanism/run.sh shrunk to seconds (pipeline, not science): tiny models and facts, one seed,
every step of the shipped script (train and evaluate NTP, ABI and BICO, pretrain NTP and finetune it with NTP and
BICO, patch, read out and link each model, the summary tables and figures), resumed by running it again, and
nothing copied into the repository by a variant."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "reversal_mechanism" / "run.sh"
TRAIN = """objective: ntp
model: {d_model: 32, n_layers: 2, n_heads: 2, d_mlp: 64, n_ctx: 64}
seq_len: 48
batch_size: 16
max_steps: 6
warmup_steps: 2
save_every: 3
log_every: 3
seed: 0
"""
FINETUNE = """objective: ntp
init_from: PRETRAINED
seq_len: 48
batch_size: 16
max_steps: 3
warmup_steps: 1
save_every: 3
log_every: 3
seed: 0
"""


@pytest.mark.slow
def test_quick_reversal_mechanism_runs_every_step_and_resumes(tmp_path: Path) -> None:
    cfg = tmp_path / "configs"
    cfg.mkdir()
    (cfg / "train.yaml").write_text(TRAIN)
    (cfg / "pretrain.yaml").write_text(TRAIN.replace("max_steps: 6", "max_steps: 4"))
    (cfg / "finetune.yaml").write_text(FINETUNE)
    (cfg / "data.args").write_text("--n-per-group 4 --train-templates 3 --test-templates 2\n")
    shipped = {p: p.stat().st_mtime_ns for d in ("experiments/reversal_mechanism/results", "figures/reversal_mechanism")
               for p in (ROOT / d).iterdir()}  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = tmp_path / "run"

    def run() -> str:
        r = subprocess.run(["bash", str(SCRIPT), str(out), "0", str(cfg)], capture_output=True, text=True, env=env,
                           timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    run()
    models = ["ntp_s0", "abi_s0", "bico_s0", "pretrain_ntp_s0", "ft_ntp_s0", "ft_bico_s0"]
    for m in models:  # every step of every model
        assert (out / m / "results.csv").exists() and (out / f"patch_{m}" / "results.csv").exists(), m
        assert (out / f"probe_{m}" / "link.csv").exists(), m
    summary = tmp_path / "run_summary"
    tasks = pd.read_csv(summary / "tasks.csv")
    assert set(models) <= set(tasks["model_dir"])
    assert {"N2D-reverse", "D2N-reverse"} <= set(tasks["task"])
    for f in ("headline.csv", "link.csv", "link_agreement.csv", "readout_by_layer.html", "patch_route.html"):
        assert (summary / f).exists(), f
    assert not list(summary.glob("*.png"))  # a variant draws no PNGs
    def outputs() -> dict[Path, int]:  # the per-seed configs the script writes from CONFIGS aside
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}

    before = outputs()
    assert "nothing copied into the repository" in run()  # resumed: every step is skipped
    assert outputs() == before
    assert {p: p.stat().st_mtime_ns for p in shipped} == shipped
