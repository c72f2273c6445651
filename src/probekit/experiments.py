"""The stage runner behind ``probekit run`` and ``probekit demo``.

An experiment is a YAML file (``experiments/<name>/config.yaml``) naming datasets, models to train on them,
a probe spec, and optional QA extraction. ``run_experiment`` walks the stages in order::

    data  ->  train  ->  probe (+ random-init control)  ->  qa (optional)  ->  tables + figures + summary

Every stage writes into ``<out>/<stage>/<name>`` atomically and is skipped when its output is already
complete, and training resumes from its last checkpoint, so an interrupted experiment is re-run with the same
command and continues where it stopped. The same config and seeds give the same data, weights and numbers.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.config import from_dict, to_dict
from probekit.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    name: str
    n_people: int = 500
    augmentation: str = "single"
    seed: int = 0
    pool_limits: dict[str, int] = field(default_factory=dict)


@dataclass
class ModelSpec:
    name: str
    data: str  # a DatasetSpec name
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields (data and out are filled in)


@dataclass
class QASpec:
    models: list[str] = field(default_factory=list)  # ModelSpec names; empty = all
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig fields


@dataclass
class ExperimentConfig:
    name: str
    datasets: list[DatasetSpec]
    models: list[ModelSpec]
    probe: dict[str, Any] = field(default_factory=dict)  # ProbeSpec fields
    control_random: bool = True  # also probe a randomly initialised model of each shape
    qa: QASpec | None = None
    figures_layer: int | None = None  # layer of the position x attribute grids (None = last)
    notes: str = ""

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DatasetSpec) else from_dict(DatasetSpec, d) for d in self.datasets]
        self.models = [m if isinstance(m, ModelSpec) else from_dict(ModelSpec, m) for m in self.models]
        if isinstance(self.qa, dict):
            self.qa = from_dict(QASpec, self.qa)
        self.validate()

    def validate(self) -> None:
        """Cross-references and every stage's settings, checked before any work starts."""
        from probekit.data.bios import parse_augmentation
        from probekit.evaluate.qa import FinetuneConfig
        from probekit.probes.spec import ProbeSpec
        from probekit.train import TrainConfig

        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names) or len({m.name for m in self.models}) != len(self.models):
            raise ValueError(f"experiment {self.name}: dataset and model names must be unique")
        for d in self.datasets:
            aug = parse_augmentation(d.augmentation)
            if d.n_people < 1:
                raise ValueError(f"dataset {d.name!r}: n_people must be at least 1, got {d.n_people}")
            from probekit.data.integrity import check_memory
            from probekit.data.pools import LIMITABLE

            check_memory(d.n_people, aug.multi)
            bad = {k: v for k, v in d.pool_limits.items() if k not in LIMITABLE or v < 2}
            if bad:
                raise ValueError(f"dataset {d.name!r}: pool_limits {bad}: only {', '.join(LIMITABLE)} can be "
                                 "limited, each to at least 2 values")  # fmt: skip
        for m in self.models:
            if m.data not in names:
                raise ValueError(f"model {m.name!r} trains on unknown dataset {m.data!r}; datasets: {names}")
            from_dict(TrainConfig, {**m.train, "data": "x", "out": "x"}).validate()
            if self.figures_layer is not None and not m.train.get("init_from"):
                from probekit.model import ModelConfig

                n_layers = dict(m.train.get("model") or {}).get("n_layers", ModelConfig.n_layers)
                if not 0 <= self.figures_layer <= n_layers:
                    raise ValueError(f"figures_layer {self.figures_layer}: model {m.name!r} has layers "
                                     f"0..{n_layers} (0 = embeddings, {n_layers} = last block's output); "
                                     "choose one of those")  # fmt: skip
        from_dict(ProbeSpec, {"name": self.name, **self.probe})
        if self.qa is not None:
            unknown = sorted(set(self.qa.models) - {m.name for m in self.models})
            if unknown:
                raise ValueError(f"qa.models names unknown model(s) {unknown}")
            from_dict(FinetuneConfig, self.qa.finetune)


def load_experiment(path: str | Path) -> ExperimentConfig:
    from probekit.config import load_mapping

    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"experiment config {path} does not exist")
    data = load_mapping(path, "experiment config")
    data.setdefault("name", path.parent.name if path.name == "config.yaml" else path.stem)
    return from_dict(ExperimentConfig, data)


# The main job: the README's first command runs this, within 15 minutes on 2 CPU cores.
DEMO = {
    "name": "demo",
    "notes": "bioS single vs multi5+permute, NTP, 4x128 Llama-shaped model, P- and Q-probes at every layer.",
    "datasets": [
        {"name": "single", "n_people": 400, "augmentation": "single", "seed": 0,
         "pool_limits": {"birth_city": 20, "university": 20, "major": 20, "company": 20}},
        {"name": "multi5_permute", "n_people": 400, "augmentation": "multi5+permute", "seed": 0,
         "pool_limits": {"birth_city": 20, "university": 20, "major": 20, "company": 20}},
    ],
    "models": [
        {"name": "ntp_single", "data": "single", "train": {
            "objective": "ntp", "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_mlp": 512},
            "seq_len": 128, "batch_size": 16, "max_steps": 700, "warmup_steps": 50, "lr": 0.002, "min_lr": 0.0002,
            "eval_every": 0, "save_every": 200, "log_every": 20, "seed": 0}},
        {"name": "ntp_multi5_permute", "data": "multi5_permute", "train": {
            "objective": "ntp", "model": {"d_model": 128, "n_layers": 4, "n_heads": 4, "d_mlp": 512},
            "seq_len": 128, "batch_size": 16, "max_steps": 700, "warmup_steps": 50, "lr": 0.002, "min_lr": 0.0002,
            "eval_every": 0, "save_every": 200, "log_every": 20, "seed": 0}},
    ],
    "probe": {"kinds": ["p", "q"], "targets": ["first_token", "value"], "l2_grid": [0.001, 0.01, 0.1],
              "max_iter": 60},
    "control_random": True,
}  # fmt: skip


def demo_config(**overrides: Any) -> ExperimentConfig:
    data = copy.deepcopy(DEMO)
    data.update(overrides)
    return from_dict(ExperimentConfig, data)


@dataclass
class ExperimentResult:
    out: Path
    probe_table: pd.DataFrame
    qa_table: pd.DataFrame | None
    figures: list[Path]
    summary: str
    seconds: float


def _done(path: Path) -> bool:
    return (path / ".complete").exists()


def _mark_done(path: Path, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(path / ".complete", info or {})


def _stage_data(cfg: ExperimentConfig, out: Path) -> dict[str, Path]:
    from probekit.data.store import build_dataset

    paths = {}
    for d in cfg.datasets:
        p = out / "data" / d.name
        if not (p / "manifest.json").exists():
            log.info(f"[data] {d.name}: {d.n_people} people, {d.augmentation}")
            build_dataset(p, n_people=d.n_people, augmentation=d.augmentation, seed=d.seed,
                          pool_limits=d.pool_limits or None, overwrite=True, name=d.name)  # fmt: skip
        paths[d.name] = p
    return paths


def _train_one(tc_dict: dict[str, Any], resume: bool, progress: bool, threads: int | None) -> None:
    """Train one model (a top-level function so a worker process can run it)."""
    import torch

    from probekit.train import TrainConfig, train

    if threads is not None:
        torch.set_num_threads(threads)
    train(from_dict(TrainConfig, tc_dict), resume=resume, overwrite=not resume, progress=progress)


def _last_metrics(run: Path) -> dict[str, Any]:
    try:
        lines = (run / "metrics.jsonl").read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _watch(futures: dict[str, Any], runs: dict[str, Path], progress: bool) -> None:
    """One progress line for trainings running in worker processes (read from their metrics.jsonl)."""
    from concurrent.futures import wait

    from tqdm.auto import tqdm

    with tqdm(desc="train", unit="step", disable=not progress, bar_format="{desc} {postfix} [{elapsed}]") as bar:
        while True:
            _, pending = wait(list(futures.values()), timeout=2.0)
            parts = []
            for name in futures:
                m = _last_metrics(runs[name])
                if m:
                    parts.append(f"{name} step {m.get('step')} loss {m.get('loss', float('nan')):.3f}")
            bar.set_postfix_str(" | ".join(parts))
            if not pending:
                return


def _stage_train(cfg: ExperimentConfig, out: Path, data: dict[str, Path], progress: bool,
                 jobs: int = 1) -> dict[str, Path]:  # fmt: skip
    """Train every model not yet complete; ``jobs`` > 1 trains that many at once, one torch thread each."""
    runs = {m.name: out / "models" / m.name for m in cfg.models}
    todo = []
    for m in cfg.models:
        run = runs[m.name]
        if _done(run):
            continue
        tc = {**m.train, "data": str(Path(data[m.data]).resolve()), "out": str(run.resolve())}
        resume = (run / "checkpoints").exists()
        log.info(f"[train] {m.name} ({tc.get('objective', 'ntp')} on {m.data}){' resuming' if resume else ''}")
        todo.append((m.name, tc, resume))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {name: pool.submit(_train_one, tc, resume, False, 1) for name, tc, resume in todo}
            _watch(futures, runs, progress)
            for name, fut in futures.items():
                fut.result()
                _mark_done(runs[name])
    else:
        for name, tc, resume in todo:
            _train_one(tc, resume, progress, None)
            _mark_done(runs[name])
    return runs


def _stage_probe(cfg: ExperimentConfig, out: Path, data: dict[str, Path], runs: dict[str, Path],
                 progress: bool) -> pd.DataFrame:  # fmt: skip
    from probekit.data.store import load_dataset
    from probekit.probes.runner import check_compatible, load_probe_model, random_init_like, run_spec
    from probekit.probes.spec import ProbeSpec
    from probekit.results import read_results, write_results

    spec = from_dict(ProbeSpec, {"name": cfg.name, **cfg.probe})
    tables = []
    for m in cfg.models:
        dest = out / "probes" / m.name
        if not _done(dest):
            ds = load_dataset(data[m.data])
            target = load_probe_model(runs[m.name], name=m.name)
            check_compatible(target, ds)
            models = [target] + ([random_init_like(target)] if cfg.control_random else [])
            log.info(f"[probe] {m.name}: {', '.join(k.upper() for k in spec.kinds)}-probes on {m.data}")
            df = run_spec(spec, ds, models, progress=progress)
            from probekit import provenance as prov

            rec = prov.record(inputs={"model": prov.weights_file(runs[m.name]), "data": data[m.data]},
                              seeds={"probe": spec.seed})  # fmt: skip
            write_results(df, dest, provenance=rec)
            _mark_done(dest)
        tables.append(read_results(dest / "results.parquet"))
    return pd.concat(tables, ignore_index=True)


def _stage_qa(cfg: ExperimentConfig, out: Path, data: dict[str, Path], runs: dict[str, Path],
              progress: bool) -> pd.DataFrame | None:  # fmt: skip
    if cfg.qa is None:
        return None
    from probekit.evaluate.qa import FinetuneConfig, run_qa

    fcfg = from_dict(FinetuneConfig, cfg.qa.finetune)
    tables = []
    for m in cfg.models:
        if cfg.qa.models and m.name not in cfg.qa.models:
            continue
        dest = out / "qa" / m.name
        if not _done(dest):
            log.info(f"[qa] {m.name}: finetune ({fcfg.method}) on P_train QAs, answer P_test")
            run_qa(runs[m.name], data[m.data], dest, fcfg, model_name=m.name, eval_train=True, progress=progress,
                   overwrite=True)  # fmt: skip
            _mark_done(dest)
        tables.append(pd.read_csv(dest / "results.csv"))
    return pd.concat(tables, ignore_index=True) if tables else None


def summarize(probe: pd.DataFrame, qa: pd.DataFrame | None) -> str:
    """The headline numbers: per model, P-probe accuracy at each attribute's own position and at the birth-date
    position (the token before the birth date: right after the name in ``single`` order, anywhere under
    ``permute``), Q-probe accuracy at the name, each at its best layer on test people, beside the majority
    baseline; the random-init control appears as its own model."""
    ok = probe[(probe["status"] == "ok") & (probe["hook"] == "resid")]
    lines = []
    for target in ("first_token", "value"):
        sub = ok[ok["target_kind"] == target]
        if sub.empty:
            continue
        rows = []
        for (model, attr), g in sub.groupby(["model", "attribute"], sort=False):
            p = g[g["probe_kind"] == "p"]
            q = g[g["probe_kind"] == "q"]
            own = p[p["position"] == attr]["accuracy"].max()
            first = p[p["position"] == "birth_date"]["accuracy"].max()
            rows.append({"model": model, "attribute": attr, "P own pos": own, "P @birth_date": first,
                         "Q name": q["accuracy"].max(), "baseline": g["baseline"].max(),
                         "n_train": int(g["n_train"].max()), "classes": int(g["n_classes"].max())})  # fmt: skip
        t = pd.DataFrame(rows)
        for c in ("P own pos", "P @birth_date", "Q name", "baseline"):
            t[c] = (100 * t[c]).round(1)
        lines.append(f"Probe accuracy % on P_test people, best layer, target = {target}:")
        lines.append(t.to_string(index=False))
        lines.append("")
    if qa is not None and not qa.empty:
        view = qa[(qa["split"] == "test") & (qa["metric"] == "exact_match")]
        pivot = view.pivot_table(index="model", columns="task", values="value", aggfunc="first")
        lines.append("QA extraction on P_test (exact match %, after finetuning on P_train):")
        lines.append((100 * pivot).round(1).to_string())
    return "\n".join(lines)


def run_experiment(cfg: ExperimentConfig, out: str | Path, progress: bool = True,
                   figures_out: str | Path | None = None, png: bool = True, jobs: int = 1) -> ExperimentResult:  # fmt: skip
    """Run (or continue) every stage of ``cfg`` into ``out``; returns the tables, figures and summary.

    ``jobs`` > 1 trains up to that many models at once in worker processes (one torch thread each): on a
    small-CPU machine two single-thread trainings finish sooner than two consecutive two-thread ones.
    """
    from probekit.plots import render_figures
    from probekit.results import write_results

    from probekit import provenance as prov

    t0 = time.perf_counter()
    cfg.validate()  # everything is checked before the first file is written
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"--jobs must be a whole number >= 1 (models trained at once), got {jobs!r}")
    out = Path(out).expanduser().resolve()  # absolute: runs record paths that work from any directory
    cfg_file = out / "experiment.json"
    _check_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_file, to_dict(cfg))
    seeds = {**{f"data.{d.name}": d.seed for d in cfg.datasets},
             **{f"train.{m.name}": m.train.get("seed", 0) for m in cfg.models},
             "probe": cfg.probe.get("seed", 0)}  # fmt: skip
    prov.append_session(out, prov.record(seeds=seeds, jobs=jobs))
    data = _stage_data(cfg, out)
    runs = _stage_train(cfg, out, data, progress, jobs)
    probe = _stage_probe(cfg, out, data, runs, progress)
    qa = _stage_qa(cfg, out, data, runs, progress)
    inputs = {**{f"data/{k}": v for k, v in data.items()},
              **{f"probes/{m.name}": out / "probes" / m.name / "results.parquet" for m in cfg.models}}  # fmt: skip
    rec = prov.record(inputs=inputs, seeds=seeds)
    write_results(probe, out, provenance=rec)
    fig_rec = {**rec, "tables": {"results.parquet": prov.sha256_file(out / "results.parquet")}}
    report = render_figures(probe, out / "figures", layer=cfg.figures_layer, png=png, provenance=fig_rec)
    if report.png_error:
        log.warning(report.png_error)
    summary = summarize(probe, qa)
    seconds = time.perf_counter() - t0
    atomic_write_text(out / "summary.txt", summary + "\n")
    files = list(report.files)
    if figures_out is not None:
        dest = Path(figures_out)
        dest.mkdir(parents=True, exist_ok=True)
        for f in report.files:
            if f.suffix in (".png", ".csv"):
                shutil.copyfile(f, dest / f.name)
        shutil.copyfile(out / "figures" / prov.PROVENANCE_FILE, dest / prov.PROVENANCE_FILE)  # what made them
    return ExperimentResult(out, probe, qa, files, summary, seconds)


_STAGE_DIRS = ("data", "models", "probes", "qa", "figures")


def _check_out(cfg: ExperimentConfig, out: Path) -> None:
    """Refuse an unrelated non-empty directory, or one holding another experiment's finished stages."""
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a directory for the experiment")
    cfg_file = out / "experiment.json"
    if not cfg_file.exists():
        if any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise FileExistsError(f"--out {out} is not empty and holds no probekit experiment (no experiment.json); "
                                  "choose a new or empty directory")  # fmt: skip
        return
    try:
        old = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    new = to_dict(cfg)
    if json.loads(json.dumps(new)) == old:
        return
    started = [d for d in _STAGE_DIRS if (out / d).is_dir() and any((out / d).iterdir())]
    if not started:
        return  # nothing was produced with the old config: the corrected one replaces it
    changed = sorted(k for k in set(new) | set(old or {}) if json.loads(json.dumps(new.get(k))) != (old or {}).get(k))
    raise ValueError(f"{out} holds the outputs ({', '.join(started)}) of a different experiment config (changed: "
                     f"{', '.join(changed) or 'unreadable experiment.json'}); choose another --out, or delete {out} "
                     "to start again")  # fmt: skip


__all__ = ["DatasetSpec", "ModelSpec", "QASpec", "ExperimentConfig", "load_experiment", "demo_config",
           "run_experiment", "summarize"]  # fmt: skip
