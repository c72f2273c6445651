"""The data stage: build every dataset the runs need into ``<out>/data/<data key>``."""

from __future__ import annotations

import pandas as pd

from probekit.experiment.spec import ExperimentConfig
from probekit.experiment.stage import Context, Job, Planned, Stage, Timing, log


class DataStage(Stage):
    name = "data"
    directory = "data"

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return True

    def jobs(self, ctx: Context) -> list[Job]:
        return []  # datasets take seconds: built here, in order, by ``run``

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        return []  # built in the submitting process, not as jobs

    def run(self, ctx: Context) -> list[Timing]:
        import time

        from probekit.data.store import build_dataset

        times: list[Timing] = []
        cfg = ctx.cfg
        for run in cfg.runs():
            key = cfg.data_key(run)
            if key in ctx.data:
                continue
            d = cfg.dataset(run.model.data)
            seed = run.seed if key != d.name else d.seed
            p = ctx.out / "data" / key
            if not (p / "manifest.json").exists():
                aug = ", ".join(f"{g.name} {g.augmentation}" for g in d.groups) if d.groups else d.augmentation
                log.info(f"[data] {key}: {d.n_people} people, {aug}, seed {seed}")
                w0, c0 = time.perf_counter(), time.process_time()
                build_dataset(p, n_people=d.n_people, augmentation=d.augmentation, seed=seed,
                              pool_limits=d.pool_limits or None, name_pools=d.name_pools or None, overwrite=True,
                              name=d.name, groups=d.groups or None)  # fmt: skip
                times.append(Timing(f"data {key}", time.perf_counter() - w0, time.process_time() - c0))
            ctx.data[key] = p
        return times

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        return {}
