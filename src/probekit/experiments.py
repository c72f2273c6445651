"""The stage runner behind ``probekit run`` and ``probekit demo``.

An experiment is a YAML file (``experiments/<name>/config.yaml``) naming datasets, models to train on them,
a probe spec, and optional QA extraction. ``run_experiment`` walks the stages in order::

    data  ->  train  ->  probe (+ random-init control)  ->  qa, inverse (optional)  ->  tables + figures + summary

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

import numpy as np
import pandas as pd

from probekit.config import from_dict, to_dict
from probekit.errors import UserError, UserFileExistsError, UserFileNotFoundError
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
class InverseSpec:
    """Inverse search (attributes -> full name, the reversal direction on bioS) as a stage of the experiment."""

    models: list[str] = field(default_factory=list)  # ModelSpec names; empty = all
    finetune: dict[str, Any] = field(default_factory=dict)  # FinetuneConfig fields
    attributes: list[str] = field(default_factory=list)  # the attributes in the prompt; empty = all six


@dataclass(frozen=True)
class Run:
    """One model trained with one seed (``seed`` None: the seed of the model's train section)."""

    model: ModelSpec
    seed: int | None = None

    @property
    def key(self) -> str:
        """Its directory under ``models/``, ``probes/`` and ``qa/``: the model name, plus ``/seed_<s>`` on a seeds axis."""
        return self.model.name if self.seed is None else f"{self.model.name}/seed_{self.seed}"

    @property
    def train(self) -> dict[str, Any]:
        """The model's train section with this run's seed."""
        return {**self.model.train, **({"seed": self.seed} if self.seed is not None else {})}

    @property
    def train_seed(self) -> int:
        return int(self.train.get("seed", 0))


@dataclass
class ExperimentConfig:
    name: str
    datasets: list[DatasetSpec]
    models: list[ModelSpec]
    probe: dict[str, Any] = field(default_factory=dict)  # ProbeSpec fields
    control_random: bool = True  # also probe a randomly initialised model of each shape
    qa: QASpec | None = None
    inverse: InverseSpec | None = None  # inverse search on P_test after finetuning on P_train's inverse prompts
    figures_layer: int | None = None  # layer of the position x attribute grids (None = last)
    notes: str = ""
    # seeds as an axis: train every model once per seed (its train.seed replaced); None = one run per model with
    # the seed of its train section. Tables carry the seed; summaries and figures aggregate over seeds.
    seeds: list[int] | None = None
    seed_data: bool = False  # with seeds: also draw each dataset anew per seed (new people and biographies)

    def __post_init__(self) -> None:
        self.datasets = [d if isinstance(d, DatasetSpec) else from_dict(DatasetSpec, d) for d in self.datasets]
        self.models = [m if isinstance(m, ModelSpec) else from_dict(ModelSpec, m) for m in self.models]
        if isinstance(self.qa, dict):
            self.qa = from_dict(QASpec, self.qa)
        if isinstance(self.inverse, dict):
            self.inverse = from_dict(InverseSpec, self.inverse)
        self.validate()

    def runs(self) -> list[Run]:
        """Every model x seed to train, probe and evaluate, in config order."""
        return [Run(m, s) for m in self.models for s in (self.seeds if self.seeds is not None else [None])]

    def dataset(self, name: str) -> DatasetSpec:
        return next(d for d in self.datasets if d.name == name)

    def data_key(self, run: Run) -> str:
        """The dataset directory a run trains on (relative to ``<out>/data``)."""
        return f"{run.model.data}/seed_{run.seed}" if self.seed_data and run.seed is not None else run.model.data

    def validate(self) -> None:
        """Cross-references and every stage's settings, checked before any work starts."""
        from probekit.data.bios import parse_augmentation
        from probekit.evaluate.qa import FinetuneConfig
        from probekit.probes.spec import ProbeSpec
        from probekit.train import TrainConfig

        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names) or len({m.name for m in self.models}) != len(self.models):
            raise UserError(f"experiment {self.name}: dataset and model names must be unique")
        if self.seeds is not None:
            if (not isinstance(self.seeds, list) or not self.seeds or len(set(self.seeds)) != len(self.seeds)
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)):
                raise UserError(f"seeds must be a non-empty list of distinct non-negative integers, e.g. [0, 1, 2], "
                                f"got {self.seeds!r}")  # fmt: skip
        elif self.seed_data:
            raise UserError("seed_data: true needs a list of seeds (seeds: [0, 1, 2]); add one or drop seed_data")
        for d in self.datasets:
            aug = parse_augmentation(d.augmentation)
            if d.n_people < 1:
                raise UserError(f"dataset {d.name!r}: n_people must be at least 1, got {d.n_people}")
            from probekit.data.integrity import check_memory
            from probekit.data.pools import LIMITABLE

            check_memory(d.n_people, aug.multi)
            bad = {k: v for k, v in d.pool_limits.items() if k not in LIMITABLE or v < 2}
            if bad:
                raise UserError(f"dataset {d.name!r}: pool_limits {bad}: only {', '.join(LIMITABLE)} can be "
                                "limited, each to at least 2 values")  # fmt: skip
        for m in self.models:
            if m.data not in names:
                raise UserError(f"model {m.name!r} trains on unknown dataset {m.data!r}; datasets: {names}")
            from_dict(TrainConfig, {**m.train, "data": "x", "out": "x"}).validate()
            if self.figures_layer is not None and not m.train.get("init_from"):
                from probekit.model import ModelConfig

                n_layers = dict(m.train.get("model") or {}).get("n_layers", ModelConfig.n_layers)
                if not 0 <= self.figures_layer <= n_layers:
                    raise UserError(f"figures_layer {self.figures_layer}: model {m.name!r} has layers "
                                    f"0..{n_layers} (0 = embeddings, {n_layers} = last block's output); "
                                    "choose one of those")  # fmt: skip
        from_dict(ProbeSpec, {"name": self.name, **self.probe})
        for what, ev in (("qa", self.qa), ("inverse", self.inverse)):
            if ev is None:
                continue
            unknown = sorted(set(ev.models) - {m.name for m in self.models})
            if unknown:
                raise UserError(f"{what}.models names unknown model(s) {unknown}; models: "
                                f"{[m.name for m in self.models]}")  # fmt: skip
            from_dict(FinetuneConfig, ev.finetune)
        if self.inverse is not None:
            from probekit.data.pools import ATTRIBUTES

            bad = [a for a in self.inverse.attributes if a not in ATTRIBUTES]
            if bad or len(set(self.inverse.attributes)) != len(self.inverse.attributes):
                raise UserError(f"inverse.attributes {self.inverse.attributes}: choose distinct attributes from "
                                f"{list(ATTRIBUTES)} (empty: all six)")  # fmt: skip


def load_experiment(path: str | Path) -> ExperimentConfig:
    from probekit.config import load_mapping

    path = Path(path)
    if path.is_dir():
        path = path / "config.yaml"
    if not path.exists():
        raise UserFileNotFoundError(f"experiment config {path} does not exist")
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
              "max_iter": 60, "control_task": True},
    "control_random": True,
}  # fmt: skip


def config_record(cfg: ExperimentConfig) -> dict[str, Any]:
    """The config as written to ``experiment.json`` and compared on resume. Settings added after a run was
    started are left out while they keep their defaults, so such runs still resume."""
    rec = to_dict(cfg)
    for key, default in (("seeds", None), ("seed_data", False)):
        if rec.get(key) == default:
            rec.pop(key, None)
    return rec


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
    inverse_table: pd.DataFrame | None = None


def _done(path: Path) -> bool:
    return (path / ".complete").exists()


def _mark_done(path: Path, info: dict[str, Any] | None = None) -> None:
    atomic_write_json(path / ".complete", info or {})


def _stage_data(cfg: ExperimentConfig, out: Path) -> dict[str, Path]:
    """Build every dataset the runs need; returns ``{data key: directory}`` (``ExperimentConfig.data_key``)."""
    from probekit.data.store import build_dataset

    paths = {}
    for run in cfg.runs():
        key = cfg.data_key(run)
        if key in paths:
            continue
        d = cfg.dataset(run.model.data)
        seed = run.seed if key != d.name else d.seed
        p = out / "data" / key
        if not (p / "manifest.json").exists():
            log.info(f"[data] {key}: {d.n_people} people, {d.augmentation}, seed {seed}")
            build_dataset(p, n_people=d.n_people, augmentation=d.augmentation, seed=seed,
                          pool_limits=d.pool_limits or None, overwrite=True, name=d.name)  # fmt: skip
        paths[key] = p
    return paths


def _train_one(tc_dict: dict[str, Any], resume: bool, progress: bool, threads: int | None,
               command: list[str] | None = None) -> None:  # fmt: skip
    """Train one model (a top-level function so a worker process can run it; ``command``: the parent's command
    line, recorded in the run's provenance instead of the worker's own)."""
    import torch

    from probekit.provenance import set_command_line
    from probekit.train import TrainConfig, train

    if command is not None:
        set_command_line(command)
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
    """Train every run (model x seed) not yet complete; ``jobs`` > 1 trains that many at once, one torch thread
    each. Returns ``{run key: run directory}``."""
    runs = {r.key: out / "models" / r.key for r in cfg.runs()}
    todo = []
    for r in cfg.runs():
        run = runs[r.key]
        if _done(run):
            continue
        tc = {**r.train, "data": str(Path(data[cfg.data_key(r)]).resolve()), "out": str(run.resolve())}
        resume = (run / "checkpoints").exists()
        log.info(f"[train] {r.key} ({tc.get('objective', 'ntp')} on {cfg.data_key(r)}, seed {r.train_seed})"
                 f"{' resuming' if resume else ''}")  # fmt: skip
        todo.append((r.key, tc, resume))
    if jobs > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
            from probekit.provenance import command_line

            cmd = command_line()
            futures = {name: pool.submit(_train_one, tc, resume, False, 1, cmd) for name, tc, resume in todo}
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
    for r in cfg.runs():
        m, dest, dkey = r.model, out / "probes" / r.key, cfg.data_key(r)
        if not _done(dest):
            ds = load_dataset(data[dkey])
            target = load_probe_model(runs[r.key], name=m.name)
            check_compatible(target, ds)
            models = [target] + ([random_init_like(target)] if cfg.control_random else [])
            log.info(f"[probe] {r.key}: {', '.join(k.upper() for k in spec.kinds)}-probes on {dkey}")
            df = run_spec(spec, ds, models, progress=progress)
            df["seed"] = r.train_seed  # also for tables of checkpoints that do not record their seed
            from probekit import provenance as prov

            rec = prov.record(inputs={"model": prov.weights_file(runs[r.key]), "data": data[dkey]},
                              seeds={"probe": spec.seed, "train": r.train_seed})  # fmt: skip
            write_results(df, dest, provenance=rec)
            _mark_done(dest)
        table = read_results(dest / "results.parquet")
        table["seed"] = table["seed"].fillna(r.train_seed)  # tables written before the seed column existed
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _stage_eval(cfg: ExperimentConfig, out: Path, data: dict[str, Path], runs: dict[str, Path], progress: bool,
                kind: str, png: bool = True) -> pd.DataFrame | None:  # fmt: skip
    """QA extraction (``kind="qa"``) or inverse search (``"inverse"``) for every run the stage names: finetune
    on P_train items, answer P_test (and P_train) items; returns the tables with a ``seed`` column."""
    ev = cfg.qa if kind == "qa" else cfg.inverse
    if ev is None:
        return None
    from probekit.evaluate.inverse import run_inverse
    from probekit.evaluate.qa import FinetuneConfig, run_qa

    fcfg = from_dict(FinetuneConfig, ev.finetune)
    tables = []
    for r in cfg.runs():
        m = r.model
        if ev.models and m.name not in ev.models:
            continue
        dest = out / kind / r.key
        if not _done(dest):
            what = "QAs" if kind == "qa" else "inverse prompts (attributes -> name)"
            log.info(f"[{kind}] {r.key}: finetune ({fcfg.method}) on P_train {what}, answer P_test")
            args = (runs[r.key], data[cfg.data_key(r)], dest, fcfg)
            kw: dict[str, Any] = {"model_name": m.name, "eval_train": True, "progress": progress, "overwrite": True,
                                  "png": png}  # fmt: skip
            if kind == "qa":
                run_qa(*args, **kw)
            else:
                attrs = tuple(ev.attributes) if isinstance(ev, InverseSpec) and ev.attributes else None
                run_inverse(*args, **({"attrs": attrs} if attrs else {}), **kw)
            _mark_done(dest)
        table = pd.read_csv(dest / "results.csv")
        table["seed"] = r.train_seed
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else None


def _cell(values: list[float], lows: list[float], highs: list[float]) -> str:
    """One summary cell in %: ``acc [low, high]`` (bootstrap interval over test people) for one seed, ``mean ± sd
    (n seeds)`` over several."""
    vals = [v for v in values if pd.notna(v)]
    if not vals:
        return "-"
    if len(vals) > 1:
        return f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals, ddof=1):.1f} (n={len(vals)})"
    lo, hi = lows[0], highs[0]
    return f"{100 * vals[0]:.1f}" + (f" [{100 * lo:.1f}, {100 * hi:.1f}]" if pd.notna(lo) and pd.notna(hi) else "")


def _best_per_seed(g: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    """Each seed's row of highest ``column`` (the best layer of that seed)."""
    if g.empty:
        return g
    seeds = g["seed"].fillna(-1)
    return g.loc[g.groupby(seeds)[column].idxmax()]


def summarize(probe: pd.DataFrame, qa: pd.DataFrame | None, inverse: pd.DataFrame | None = None) -> str:
    """The headline numbers: per model, P-probe accuracy at each attribute's own position and at the birth-date
    position (the token before the birth date: right after the name in ``single`` order, anywhere under
    ``permute``), Q-probe accuracy at the name (and its selectivity against the control task, when run), each at
    its best layer on test people with the person-bootstrap interval, beside the majority baseline; the
    random-init control appears as its own model. With several training seeds a cell is the mean ± standard
    deviation over seeds of each seed's best layer."""
    from probekit.results import normalise, reading_labels

    probe = reading_labels(normalise(probe))
    ok = probe[(probe["status"] == "ok") & (probe["hook"] == "resid")]
    lines = []
    for target in ("first_token", "value"):
        sub = ok[ok["target_kind"] == target]
        if sub.empty:
            continue
        rows = []
        for (model, attr), g in sub.groupby(["model", "attribute"], sort=False):
            p, q = g[g["probe_kind"] == "p"], g[g["probe_kind"] == "q"]
            rec: dict[str, Any] = {"model": model, "attribute": attr}
            for col, part in (("P own pos", p[p["position"] == attr]), ("P @birth_date", p[p["position"] == "birth_date"]),
                              ("Q name", q)):  # fmt: skip
                best = _best_per_seed(part)
                rec[col] = _cell(best["accuracy"].tolist(), best["ci_low"].tolist(), best["ci_high"].tolist())
                if col == "Q name" and len(best) and best["selectivity"].notna().any():
                    rec["Q selectivity"] = _cell(best["selectivity"].tolist(), best["selectivity_ci_low"].tolist(),
                                                 best["selectivity_ci_high"].tolist())  # fmt: skip
            rec["baseline"] = f"{100 * g['baseline'].max():.1f}"
            rec["n_train"], rec["classes"] = int(g["n_train"].max()), int(g["n_classes"].max())
            rows.append(rec)
        lines.append(f"Probe accuracy % on P_test people, best layer [95% person-bootstrap interval], "
                     f"target = {target}:")  # fmt: skip
        lines.append(pd.DataFrame(rows).fillna("-").to_string(index=False))
        lines.append("")
    for table, title in ((qa, "QA extraction"), (inverse, "Inverse search (attributes -> full name)")):
        if table is not None and not table.empty:
            lines += _eval_summary(table, title)
    return "\n".join(lines)


def _eval_summary(table: pd.DataFrame, title: str) -> list[str]:
    """Exact match on P_test per model and task, with intervals (one seed) or mean ± sd (several)."""
    view = table[(table["split"] == "test") & (table["metric"] == "exact_match")]
    for c in ("ci_low", "ci_high"):
        if c not in view.columns:
            view = view.assign(**{c: float("nan")})
    cells: dict[str, dict[str, str]] = {}
    for (model, task), g in view.groupby(["model", "task"], sort=False):
        cells.setdefault(str(model), {})[str(task)] = _cell(g["value"].tolist(), g["ci_low"].tolist(),
                                                             g["ci_high"].tolist())  # fmt: skip
    return [f"{title} on P_test (exact match % [95% person-bootstrap interval], after finetuning on P_train):",
            pd.DataFrame(cells).T.fillna("-").to_string(), ""]


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
        raise UserError(f"--jobs must be a whole number >= 1 (models trained at once), got {jobs!r}")
    out = Path(out).expanduser().resolve()  # absolute: runs record paths that work from any directory
    cfg_file = out / "experiment.json"
    _check_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_file, config_record(cfg))
    seeds = {**{f"data.{d.name}": d.seed for d in cfg.datasets},
             **{f"train.{r.key}": r.train_seed for r in cfg.runs()},
             "probe": cfg.probe.get("seed", 0)}  # fmt: skip
    prov.append_session(out, prov.record(seeds=seeds, jobs=jobs))
    data = _stage_data(cfg, out)
    runs = _stage_train(cfg, out, data, progress, jobs)
    probe = _stage_probe(cfg, out, data, runs, progress)
    qa = _stage_eval(cfg, out, data, runs, progress, "qa", png)
    inverse = _stage_eval(cfg, out, data, runs, progress, "inverse", png)
    inputs = {**{f"data/{k}": v for k, v in data.items()},
              **{f"probes/{r.key}": out / "probes" / r.key / "results.parquet" for r in cfg.runs()}}  # fmt: skip
    rec = prov.record(inputs=inputs, seeds=seeds)
    write_results(probe, out, provenance=rec)
    fig_rec = {**rec, "tables": {"results.parquet": prov.sha256_file(out / "results.parquet")}}
    report = render_figures(probe, out / "figures", layer=cfg.figures_layer, png=png, provenance=fig_rec)
    if report.png_error:
        log.warning(report.png_error)
    summary = summarize(probe, qa, inverse)
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
    return ExperimentResult(out, probe, qa, files, summary, seconds, inverse)


_STAGE_DIRS = ("data", "models", "probes", "qa", "figures")


def _check_out(cfg: ExperimentConfig, out: Path) -> None:
    """Refuse an unrelated non-empty directory, or one holding another experiment's finished stages."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserFileExistsError(f"--out {out} is a file; give a directory for the experiment")
    cfg_file = out / "experiment.json"
    if not cfg_file.exists():
        if any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise UserFileExistsError(f"--out {out} is not empty and holds no probekit experiment "
                                      "(no experiment.json); choose a new or empty directory")  # fmt: skip
        return
    try:
        old = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    new = config_record(cfg)
    if json.loads(json.dumps(new)) == old:
        return
    started = [d for d in _STAGE_DIRS if (out / d).is_dir() and any((out / d).iterdir())]
    if not started:
        return  # nothing was produced with the old config: the corrected one replaces it
    changed = sorted(k for k in set(new) | set(old or {}) if json.loads(json.dumps(new.get(k))) != (old or {}).get(k))
    raise UserError(f"{out} holds the outputs ({', '.join(started)}) of a different experiment config (changed: "
                    f"{', '.join(changed) or 'unreadable experiment.json'}); choose another --out, or delete {out} "
                    "to start again")  # fmt: skip


__all__ = ["DatasetSpec", "ModelSpec", "QASpec", "InverseSpec", "Run", "ExperimentConfig", "load_experiment",
           "demo_config", "run_experiment", "summarize"]  # fmt: skip
