"""The evaluation stages: QA extraction (``qa``) and inverse search (``inverse``), each finetuning every run the
section names on P_train items and answering P_test (and P_train) items into ``<out>/<qa|inverse>/<run key>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from probekit.experiment.spec import ExperimentConfig, InverseSpec, QASpec, Run
from probekit.experiment.stage import Context, Job, Planned, Stage, Timing, done, in_pool, log, mark_done
from probekit.serde import from_dict
from probekit.training.config import FinetuneConfig


def eval_one(kind: str, model_dir: Path, data_dir: Path, dest: Path, finetune: dict[str, Any], name: str,
             attrs: tuple[str, ...] | None, png: bool, train_groups: tuple[str, ...] = (),
             command: list[str] | None = None) -> None:  # fmt: skip
    """Finetune one model on P_train items (of ``train_groups`` only, when given) and answer P_test (and
    P_train) items: QA extraction (``kind`` "qa") or inverse search ("inverse"). A top-level function so a
    worker process can run it."""
    from probekit.evaluate.inverse import run_inverse
    from probekit.evaluate.qa import run_qa
    from probekit.provenance import set_command_line

    if command is not None:
        set_command_line(command)
    fcfg = from_dict(FinetuneConfig, finetune)
    kw: dict[str, Any] = {"model_name": name, "eval_train": True, "progress": command is None, "overwrite": True,
                          "png": png, "train_groups": train_groups}  # fmt: skip
    if kind == "qa":
        run_qa(model_dir, data_dir, dest, fcfg, **kw)
    elif attrs:
        run_inverse(model_dir, data_dir, dest, fcfg, attrs=attrs, **kw)
    else:
        run_inverse(model_dir, data_dir, dest, fcfg, **kw)
    mark_done(dest)


class EvalStage(Stage):
    """Finetune-then-answer, shared by QA extraction and inverse search."""

    what: ClassVar[str]

    def section(self, cfg: ExperimentConfig) -> QASpec | InverseSpec | None:
        section: QASpec | InverseSpec | None = getattr(cfg, self.name)
        return section

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return self.section(cfg) is not None

    def chosen(self, cfg: ExperimentConfig) -> list[Run]:
        ev = self.section(cfg)
        return [r for r in cfg.runs() if ev is not None and (not ev.models or r.model.name in ev.models)]

    def jobs(self, ctx: Context) -> list[Job]:
        cfg, kind, ev = ctx.cfg, self.name, self.section(ctx.cfg)
        assert ev is not None
        attrs = tuple(ev.attributes) if isinstance(ev, InverseSpec) and ev.attributes else None
        todo: list[Job] = []
        for r in self.chosen(cfg):
            dest = self.dest(ctx, r.key)
            if not done(dest):
                finetune = ev.finetune_for(r.model.name) if isinstance(ev, QASpec) else dict(ev.finetune)
                groups = tuple(ev.finetune_groups) if isinstance(ev, QASpec) else ()
                log.info(f"[{kind}] {r.key}: finetune ({finetune.get('method', 'full')}) on P_train {self.what}"
                         f"{' of ' + ', '.join(groups) if groups else ''}, answer P_test")  # fmt: skip
                args = (kind, ctx.runs[r.key], ctx.data[cfg.data_key(r)], dest, finetune, r.model.name, attrs,
                        ctx.png, groups)  # fmt: skip
                todo.append((f"{kind} {r.key}", eval_one, args))
        return todo

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        return [Planned(f"{self.name} {r.key}", Path(self.directory) / r.key) for r in self.chosen(cfg)]

    def run(self, ctx: Context) -> list[Timing]:
        """Finetune and answer; under ``--jobs`` the progress line shows each finetuning's step and loss."""
        runs = {f"{self.name} {r.key}": self.dest(ctx, r.key) / "finetune" for r in self.chosen(ctx.cfg)}
        return in_pool(self.jobs(ctx), ctx.jobs, ctx.progress, runs=runs, desc=self.name)

    def table(self, ctx: Context) -> pd.DataFrame | None:
        """The results of every chosen run, with a ``seed`` column."""
        tables = []
        for r in self.chosen(ctx.cfg):
            table = pd.read_csv(self.dest(ctx, r.key) / "results.csv")
            table["seed"] = r.train_seed
            tables.append(table)
        return pd.concat(tables, ignore_index=True) if tables else None

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {self.name: self.table(ctx)}


class QAStage(EvalStage):
    name = "qa"
    directory = "qa"
    sections = ("qa",)
    what = "QAs"

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        """``qa`` and, for datasets with groups of people, ``qa_by_group``."""
        table = self.table(ctx)
        return {"qa": table, "qa_by_group": group_table(ctx.cfg, ctx.out, "qa") if table is not None else None}


class InverseStage(EvalStage):
    name = "inverse"
    directory = "inverse"
    sections = ("inverse",)
    what = "inverse prompts (attributes -> name)"


def group_table(cfg: ExperimentConfig, out: Path, kind: str = "qa") -> pd.DataFrame | None:
    """The per-group rates (``results_by_group.csv``) of every run evaluated on a dataset with groups."""
    parts = [pd.read_csv(f).assign(seed=r.train_seed) for r in cfg.runs()
             if (f := out / kind / r.key / "results_by_group.csv").exists()]  # fmt: skip
    return pd.concat(parts, ignore_index=True) if parts else None
