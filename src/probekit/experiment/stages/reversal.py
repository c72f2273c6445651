"""The reversal stage: the reversal curse per objective, on its own fictitious-people data
(``<out>/reversal/data``), one model per objective trained and evaluated into ``<out>/reversal/<objective>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from probekit.data.reversal import ReversalConfig
from probekit.experiment.spec import ExperimentConfig
from probekit.experiment.stage import Context, Job, Planned, Stage, Timing, done, in_pool, log, mark_done
from probekit.serde import from_dict
from probekit.training.config import TrainConfig


def reversal_one(data_dir: Path, train: dict[str, Any], objective: str, dest: Path, png: bool,
                 command: list[str] | None = None) -> None:  # fmt: skip
    """Train one model of ``objective`` on the reversal facts and evaluate it (a worker process can run it)."""
    from probekit.evaluate.reversal import run_reversal, train_reversal
    from probekit.provenance import set_command_line

    if command is not None:
        set_command_line(command)
    model_dir = dest / "model"
    tc = from_dict(TrainConfig, {**train, "objective": objective, "data": str(data_dir), "out": str(model_dir)})
    resume = (model_dir / "checkpoints").exists()
    result = train_reversal(data_dir, tc, progress=command is None, overwrite=not resume, resume=resume)
    run_reversal(result.checkpoint, data_dir, dest / "eval", model_name=objective, progress=command is None,
                 overwrite=True, png=png)  # fmt: skip
    mark_done(dest)


class ReversalStage(Stage):
    name = "reversal"
    directory = "reversal"
    sections = ("reversal",)

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return cfg.reversal is not None

    def jobs(self, ctx: Context) -> list[Job]:
        from probekit.data.reversal import make_reversal_dataset

        rv = ctx.cfg.reversal
        assert rv is not None
        data_dir = ctx.out / "reversal" / "data"
        if not (data_dir / "manifest.json").exists():
            log.info("[reversal] data: fictitious people, name <-> description facts")
            make_reversal_dataset(data_dir, from_dict(ReversalConfig, rv.data), overwrite=True)
        todo: list[Job] = []
        for obj in rv.objectives:
            dest = ctx.out / "reversal" / obj
            if not done(dest):
                log.info(f"[reversal] {obj}: train on the facts, evaluate N2D, D2N and their reverses")
                todo.append((f"reversal {obj}", reversal_one, (data_dir, rv.train, obj, dest, ctx.png)))
        return todo

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        rv = cfg.reversal
        assert rv is not None
        return [
            Planned(f"reversal {o}", Path("reversal") / o, {**rv.train, "objective": o}, Path("reversal/data"))
            for o in rv.objectives
        ]

    def run(self, ctx: Context) -> list[Timing]:
        """Train and evaluate each objective's model; under ``--jobs`` the progress line shows each training's step
        and loss (the trainings run in workers)."""
        rv = ctx.cfg.reversal
        assert rv is not None
        runs = {f"reversal {o}": ctx.out / "reversal" / o / "model" for o in rv.objectives}
        return in_pool(self.jobs(ctx), ctx.jobs, ctx.progress, runs=runs, desc="reversal")

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        rv = ctx.cfg.reversal
        assert rv is not None
        return {"reversal": pd.concat([pd.read_csv(ctx.out / "reversal" / o / "eval" / "results.csv")
                                       for o in rv.objectives], ignore_index=True)}  # fmt: skip
