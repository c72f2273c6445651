"""The probe stage: the experiment's probe spec on every run (``<out>/probes/<run key>``: frozen P- and Q-probes,
with the random-init control when ``control_random``) and, when configured, the paper's embedding-update probe
(``<out>/probes/<run key>/embed_update``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from probekit.experiment.spec import ExperimentConfig
from probekit.experiment.stage import Context, Job, Planned, Stage, done, log, mark_done
from probekit.probes.spec import ProbeSpec
from probekit.serde import from_dict


def probe_one(spec_dict: dict[str, Any], data_dir: Path, model_dir: Path, name: str, control_random: bool,
              dest: Path, seed: int, command: list[str] | None = None) -> None:  # fmt: skip
    """Probe one trained model (and its random-init control) with one spec into ``dest``: ``results.parquet``
    and ``q_people.parquet`` (per-test-person Q-probe correctness, for comparisons across models). A top-level
    function so a worker process can run it."""
    from probekit import provenance as prov
    from probekit.data.store import load_dataset
    from probekit.io import atomic_path
    from probekit.model.checkpoint import weights_file
    from probekit.probes.runner import check_compatible, load_probe_model, random_init_like, run_spec
    from probekit.reporting.results import write_results

    if command is not None:
        prov.set_command_line(command)
    spec = from_dict(ProbeSpec, spec_dict)
    ds = load_dataset(data_dir)
    target = load_probe_model(model_dir, name=name)
    check_compatible(target, ds)
    models = [target] + ([random_init_like(target)] if control_random else [])
    people: list[dict[str, Any]] = []
    df = run_spec(spec, ds, models, progress=command is None, q_people=people)
    df["seed"] = seed  # also for tables of checkpoints that do not record their seed
    rec = prov.record(inputs={"model": weights_file(model_dir), "data": data_dir},
                      seeds={"probe": spec.seed, "train": seed})  # fmt: skip
    dest.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest / "q_people.parquet") as tmp:
        pd.DataFrame(people).assign(seed=seed).to_parquet(tmp, index=False)
    write_results(df, dest, provenance=rec)
    mark_done(dest)


class ProbeStage(Stage):
    name = "probe"
    directory = "probes"
    sections = ("embed_probe",)

    def enabled(self, cfg: ExperimentConfig) -> bool:
        return True

    def specs(self, cfg: ExperimentConfig) -> list[tuple[str, dict[str, Any], str]]:
        """(what, spec, sub-directory): the main spec and, when configured, the embedding-update probe alone."""
        specs = [("probes", {"name": cfg.name, **cfg.probe}, "")]
        if cfg.embed_probe is not None:
            # the paper's probe alone (the frozen probes are the main spec's), read causally
            spec_e = {"name": f"{cfg.name}_embed_update", "readings": ["causal"], **cfg.embed_probe, "frozen": False}
            specs.append(("embed_update", spec_e, "embed_update"))
        return specs

    def jobs(self, ctx: Context) -> list[Job]:
        cfg = ctx.cfg
        todo: list[Job] = []
        for what, spec_dict, sub in self.specs(cfg):
            for r in cfg.runs():
                dest = self.dest(ctx, r.key) / sub
                if not done(dest):
                    log.info(f"[probe] {r.key}: {what} on {cfg.data_key(r)}")
                    args = (spec_dict, ctx.data[cfg.data_key(r)], ctx.runs[r.key], r.model.name, cfg.control_random,
                            dest, r.train_seed)  # fmt: skip
                    todo.append((f"{what} {r.key}", probe_one, args))
        return todo

    def planned(self, cfg: ExperimentConfig) -> list[Planned]:
        return [Planned(f"{what} {r.key}", Path(self.directory) / r.key / sub)
                for what, _, sub in self.specs(cfg) for r in cfg.runs()]  # fmt: skip

    def collect(self, ctx: Context) -> dict[str, pd.DataFrame | None]:
        """``probe``: the frozen-probe table; ``embed_update``: the embedding-update table (None if not run)."""
        from probekit.reporting.results import read_results

        tables: dict[str, list[pd.DataFrame]] = {"": [], "embed_update": []}
        for _, _, sub in self.specs(ctx.cfg):
            for r in ctx.cfg.runs():
                table = read_results(self.dest(ctx, r.key) / sub / "results.parquet")
                table["seed"] = table["seed"].fillna(r.train_seed)  # tables written before the seed column existed
                tables[sub].append(table)
        embed = pd.concat(tables["embed_update"], ignore_index=True) if tables["embed_update"] else None
        return {"probe": pd.concat(tables[""], ignore_index=True), "embed_update": embed}


def q_people_table(cfg: ExperimentConfig, out: Path, keys: list[str] | None = None) -> pd.DataFrame:
    """The per-test-person Q-probe correctness (frozen and embedding-update probes) of every run (or of the run
    ``keys``), with run keys."""
    parts = []
    for r in cfg.runs():
        if keys is not None and r.key not in keys:
            continue
        for sub in ("", "embed_update"):
            f = out / "probes" / r.key / sub / "q_people.parquet"
            if f.exists():
                parts.append(pd.read_parquet(f).assign(run=r.key, dataset=r.model.data))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
