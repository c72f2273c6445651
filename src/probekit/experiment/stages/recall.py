"""The recall stage (``recall: true``): does each model reproduce the values of its training biographies?"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from probekit.experiment.spec import ExperimentConfig
from probekit.experiment.stage import Context, Job, Stage, done, log, mark_done
from probekit.io import atomic_path


def recall_one(model_dir: Path, data_dir: Path, dest: Path, name: str, command: list[str] | None = None) -> None:
    """The memorisation check of one model (``probekit.evaluate.recall``) into ``dest``."""
    from probekit.data.store import load_dataset
    from probekit.evaluate.qa import model_objective
    from probekit.evaluate.recall import biography_recall, recall_items, recall_table
    from probekit.io import atomic_write_jsonl
    from probekit.model.checkpoint import load_checkpoint

    model, tokenizer, meta = load_checkpoint(model_dir, device="cpu")
    objective = model_objective(meta)
    records = biography_recall(model, objective, recall_items(load_dataset(data_dir), tokenizer=tokenizer))
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(dest / "predictions.jsonl", records)
    with atomic_path(dest / "results.csv") as tmp:
        recall_table(records, name, objective).to_csv(tmp, index=False)
    mark_done(dest)


class RecallStage(Stage):
    name = "recall"
    directory = "recall"
    sections = ("recall",)

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return cfg.recall

    def jobs(self, ctx: Context) -> list[Job]:
        todo: list[Job] = []
        for r in ctx.cfg.runs():
            dest = self.dest(ctx, r.key)
            if not done(dest):
                log.info(f"[recall] {r.key}: values of its training biographies")
                todo.append((f"recall {r.key}", recall_one,
                             (ctx.runs[r.key], ctx.data[ctx.cfg.data_key(r)], dest, r.model.name)))  # fmt: skip
        return todo

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {"recall": pd.concat([pd.read_csv(self.dest(ctx, r.key) / "results.csv").assign(seed=r.train_seed)
                                     for r in ctx.cfg.runs()], ignore_index=True)}  # fmt: skip
