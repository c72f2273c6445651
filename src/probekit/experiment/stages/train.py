"""The train stage: every run (model x seed) into ``<out>/models/<run key>``, resumed from its last checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from probekit.experiment.spec import ExperimentConfig
from probekit.experiment.stage import Context, Job, Planned, Stage, Timing, done, in_pool, log, mark_done
from probekit.serde import from_dict
from probekit.training.config import TrainConfig


def train_one(tc_dict: dict[str, Any], resume: bool, command: list[str] | None = None) -> None:
    """Train one model (a top-level function so a worker process can run it), as every stage's job does:
    ``command`` is the parent's command line, recorded in the run's provenance instead of the worker's own; without
    one the job runs in the run's own process and draws its progress bar. Its torch threads are the process's
    (one in a pool worker, ``resources.cpus`` in an executor's job)."""
    from probekit.provenance import set_command_line
    from probekit.training.trainer import train

    if command is not None:
        set_command_line(command)
    train(from_dict(TrainConfig, tc_dict), resume=resume, overwrite=not resume, progress=command is None)
    mark_done(Path(tc_dict["out"]))


def launch_command(config: Path, out: str, resume: bool, processes: int) -> list[str]:
    """The command that trains one model data-parallel over ``processes`` local processes: torchrun (which is what
    ``accelerate launch --multi_gpu`` runs) starting ``probekit train``, whose accelerate ``Accelerator`` joins the
    processes into one run (one GPU each; on a machine without GPUs, CPU processes over gloo)."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "probekit.cli", "train", "--config", str(config), "--out", out, "--no-progress",
            "--resume" if resume else "--overwrite"]  # fmt: skip


def train_launched(tc_dict: dict[str, Any], resume: bool, processes: int, command: list[str] | None = None) -> None:
    """Train one model over ``processes`` GPUs of this node (``launch_command``), then mark it done; a failed
    launch raises with the last lines of its output (the job's log has all of it). The batch is global: each
    process takes ``batch_size / processes`` windows per step, so the run follows the same schedule."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="probekit-train-") as tmp:
        config = Path(tmp) / "train_config.json"
        config.write_text(json.dumps(tc_dict), encoding="utf-8")
        proc = subprocess.run(launch_command(config, str(tc_dict["out"]), resume, processes),
                              capture_output=True, text=True)  # fmt: skip
    print(proc.stdout[-20000:], end="")  # into the job's log
    print(proc.stderr[-20000:], end="", file=sys.stderr)
    if proc.returncode != 0:
        tail = [line for line in proc.stderr.splitlines() if line.strip()][-3:]
        raise RuntimeError(f"training over {processes} processes failed (exit {proc.returncode}): {' | '.join(tail)}")
    mark_done(Path(tc_dict["out"]))


class TrainStage(Stage):
    name = "train"
    directory = "models"

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return True

    def _todo(self, ctx: Context) -> list[tuple[str, dict[str, Any], bool]]:
        cfg = ctx.cfg
        ctx.runs.update({r.key: ctx.out / "models" / r.key for r in cfg.runs()})
        todo = []
        for r in cfg.runs():
            run = ctx.runs[r.key]
            if done(run):
                continue
            tc = {**r.train, "data": str(Path(ctx.data[cfg.data_key(r)]).resolve()), "out": str(run.resolve())}
            resume = (run / "checkpoints").exists()
            log.info(f"[train] {r.key} ({tc.get('objective', 'ntp')} on {cfg.data_key(r)}, seed {r.train_seed})"
                     f"{' resuming' if resume else ''}")  # fmt: skip
            todo.append((r.key, tc, resume))
        return todo

    def jobs(self, ctx: Context) -> list[Job]:
        """One job per model left to train, as an executor runs them: with its ``resources.train.cpus`` threads
        (the executor sets them), or, with ``resources.train.gpus`` > 1, one process per GPU (``train_launched``)."""
        gpus = ctx.cfg.resources_for(self.name).gpus
        if gpus > 1:
            return [(f"train {name}", train_launched, (tc, resume, gpus)) for name, tc, resume in self._todo(ctx)]
        return [(f"train {name}", train_one, (tc, resume)) for name, tc, resume in self._todo(ctx)]

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        return [
            Planned(f"train {r.key}", Path(self.directory) / r.key, r.train, Path("data") / cfg.data_key(r))
            for r in cfg.runs()
        ]

    def run(self, ctx: Context) -> list[Timing]:
        """``--jobs`` > 1 trains that many models at once, one torch thread each, with one progress line showing
        each training's step and loss (the local pool: ``resources`` are the executors')."""
        todo = self._todo(ctx)
        runs = {f"train {name}": ctx.runs[name] for name, _, _ in todo}
        jobs: list[Job] = [(f"train {name}", train_one, (tc, resume)) for name, tc, resume in todo]
        return in_pool(jobs, ctx.jobs, ctx.progress, runs=runs, desc="train")

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {}
