"""The patch stage: name-swap patching maps of every run the section names (``<out>/patch/<run key>``), on QA
prompts with the model the QA stage left (finetuned, or the pretrained one where it answered without
finetuning), or on biography prefixes with the pretrained model."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.experiment.spec import ExperimentConfig, Run
from probekit.experiment.stage import Context, Job, Planned, Stage, done, log, mark_done
from probekit.patching.config import PatchConfig
from probekit.serde import from_dict


def patch_one(model_dir: Path, data_dir: Path, dest: Path, config: dict[str, Any], name: str, png: bool,
              command: list[str] | None = None) -> None:  # fmt: skip
    """Patching maps of one model into ``dest`` (``probekit.patching.patch.save_patching``); a worker can run it."""
    from probekit.data.store import load_dataset
    from probekit.patching.patch import run_patching, save_patching
    from probekit.probes.runner import check_compatible, load_probe_model
    from probekit.provenance import set_command_line

    if command is not None:
        set_command_line(command)
    t0 = time.perf_counter()
    cfg = from_dict(PatchConfig, config)
    ds = load_dataset(data_dir)
    pm = load_probe_model(model_dir, name=name)
    check_compatible(pm, ds)
    res = run_patching(pm, ds, cfg, progress=command is None)
    save_patching(res, cfg, dest, png, model=str(model_dir), model_name=name, data=str(data_dir),
                  seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    mark_done(dest)


class PatchStage(Stage):
    name = "patch"
    directory = "patch"
    sections = ("patch",)

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return cfg.patch is not None

    def chosen(self, cfg: ExperimentConfig) -> list[Run]:
        pt = cfg.patch
        return [r for r in cfg.runs() if pt is not None and (not pt.models or r.model.name in pt.models)]

    def jobs(self, ctx: Context) -> list[Job]:
        pt = ctx.cfg.patch
        assert pt is not None
        prompts = pt.config.build().prompts
        todo: list[Job] = []
        for r in self.chosen(ctx.cfg):
            dest = self.dest(ctx, r.key)
            if done(dest):
                continue
            model = ctx.runs[r.key]
            if prompts == "qa" and (ctx.out / "qa" / r.key / "finetune").is_dir():
                model = ctx.out / "qa" / r.key / "finetune"
            log.info(f"[patch] {r.key}: name-swap maps on {prompts} prompts ({model.relative_to(ctx.out)})")
            args = (model, ctx.data[ctx.cfg.data_key(r)], dest, pt.config.to_dict(), r.model.name, ctx.png)
            todo.append((f"patch {r.key}", patch_one, args))
        return todo

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        return [Planned(f"patch {r.key}", Path(self.directory) / r.key) for r in self.chosen(cfg)]

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {"patch": pd.concat([pd.read_parquet(self.dest(ctx, r.key) / "results.parquet").assign(seed=r.train_seed)
                                    for r in self.chosen(ctx.cfg)], ignore_index=True)}  # fmt: skip
