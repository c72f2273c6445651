"""The stage runner behind ``probekit run`` and ``probekit demo``.

An experiment is a YAML file (``experiments/<name>/config.yaml``) naming datasets, models to train on them,
a probe spec, and optional QA extraction. ``run_experiment`` walks the stages in order::

    data  ->  train  ->  probe (+ random-init control)  ->  qa, inverse (optional)  ->  tables + figures + summary

Every stage writes into ``<out>/<stage>/<name>`` atomically and is skipped when its output is already
complete, and training resumes from its last checkpoint, so an interrupted experiment is re-run with the same
command and continues where it stopped. The same config and seeds give the same data, weights and numbers.
Where each stage's jobs run is the executor's (``probekit.experiment.executor``): this machine's process pool
(``--jobs``), or one Slurm job per model and stage (``--executor slurm``).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from probekit.errors import UserError, UserFileExistsError, UserFileNotFoundError, check_precision
from probekit.experiment.executor import EXECUTORS, Executor, make_executor
from probekit.experiment.spec import (
    DatasetSpec,
    ExperimentConfig,
    InverseSpec,
    ModelSpec,
    QASpec,
    Run,
    config_record,
    demo_config,
    load_experiment,
)
from probekit.experiment.stage import Context, Timing, shared_workers
from probekit.experiment.stages import BUILTIN, STAGES
from probekit.experiment.stages.probe import q_people_table
from probekit.io import atomic_path, atomic_write_json, atomic_write_text, output_lock
from probekit.reporting.report import SummaryPart, SummaryTable, summary_text
from probekit.serde import from_dict

log = logging.getLogger(__name__)


@dataclass
class ExperimentResult:
    out: Path
    probe_table: pd.DataFrame
    qa_table: pd.DataFrame | None
    figures: list[Path]
    summary: str
    seconds: float
    inverse_table: pd.DataFrame | None = None
    reversal_table: pd.DataFrame | None = None
    timings: pd.DataFrame | None = None  # wall and CPU seconds per stage and model (``timings.csv``)


def group_figure(table: pd.DataFrame) -> Any:
    """QA exact match on P_test per group of people (x) and model (bars), with 95% person-bootstrap intervals."""
    from probekit.reporting.evaluation import accuracy_figure
    from probekit.reporting.figures import Figure

    view = table[(table["task"] == "overall") & (table["split"] == "test")].assign(task=lambda d: d["group"])
    fig, data = accuracy_figure(view.drop(columns=["split"]), "exact_match",
                                title="QA extraction on P_test by group of people (exact match)")  # fmt: skip
    fig.update_xaxes(title_text="group of people")
    return Figure("qa_by_group", fig, data)


def group_summary(table: pd.DataFrame, title: str = "QA extraction") -> SummaryTable:
    """Overall exact match per model, group and split (the people each group has in that split)."""
    view = table[(table["metric"] == "exact_match") & (table["task"] == "overall")]
    rows = []
    for (model, group, split), g in view.groupby(["model", "group", "split"], sort=False):
        cell = _cell(g["value"].tolist(), g["ci_low"].tolist(), g["ci_high"].tolist())
        rows.append({"model": model, "group": group, "split": split, "questions": int(g["n"].iloc[0]),
                     "exact match": cell})  # fmt: skip
    return SummaryTable(f"{title} by group (overall exact match % [95% person-bootstrap interval]; split train = "
                        "the people finetuned on):", pd.DataFrame(rows), name="qa_by_group")  # fmt: skip


def reversal_figure(table: pd.DataFrame) -> Any:
    """Exact match per reversal task, one bar group per objective, with 95% person-bootstrap intervals (the
    evaluation figure of ``probekit eval compare``)."""
    from probekit.reporting.evaluation import accuracy_figure
    from probekit.reporting.figures import Figure

    if not (table["metric"] == "exact_match").any():
        return None
    fig, data = accuracy_figure(table, "exact_match", title="Reversal curse: exact match per task and objective")
    return Figure("reversal_exact_match", fig, data)


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


def summarize(probe: pd.DataFrame, qa: pd.DataFrame | None, inverse: pd.DataFrame | None = None,
              embed: pd.DataFrame | None = None, reversal: pd.DataFrame | None = None,
              recall: pd.DataFrame | None = None) -> str:  # fmt: skip
    """``summary_tables`` as text: the start of ``summary.txt``."""
    return summary_text(summary_tables(probe, qa, inverse, embed, reversal, recall))


def summary_tables(probe: pd.DataFrame, qa: pd.DataFrame | None, inverse: pd.DataFrame | None = None,
                   embed: pd.DataFrame | None = None, reversal: pd.DataFrame | None = None,
                   recall: pd.DataFrame | None = None) -> list[SummaryTable]:  # fmt: skip
    """The headline numbers: per model, P-probe accuracy at each attribute's own position and at the birth-date
    position (the token before the birth date: right after the name in ``single`` order, anywhere under
    ``permute``), Q-probe accuracy at the name (and its selectivity against the control task, when run), each at
    its best layer on test people with the person-bootstrap interval, beside the majority baseline; the
    random-init control appears as its own model. With several training seeds a cell is the mean ± standard
    deviation over seeds of each seed's best layer."""
    from probekit.reporting.results import normalise, reading_labels

    probe = reading_labels(normalise(probe))
    ok = probe[(probe["status"] == "ok") & (probe["hook"] == "resid")]
    tables = []
    for target in ("first_token", "value"):
        sub = ok[ok["target_kind"] == target]
        if sub.empty:
            continue
        rows = []
        for (model, attr), g in sub.groupby(["model", "attribute"], sort=False):
            p, q = g[g["probe_kind"] == "p"], g[g["probe_kind"] == "q"]
            rec: dict[str, Any] = {"model": model, "attribute": attr}
            for col, part in (
                ("P own pos", p[p["position"] == attr]),
                ("P @birth_date", p[p["position"] == "birth_date"]),
                ("Q name", q),
            ):
                best = _best_per_seed(part)
                rec[col] = _cell(best["accuracy"].tolist(), best["ci_low"].tolist(), best["ci_high"].tolist())
                if col == "Q name" and len(best) and best["selectivity"].notna().any():
                    rec["Q selectivity"] = _cell(best["selectivity"].tolist(), best["selectivity_ci_low"].tolist(),
                                                 best["selectivity_ci_high"].tolist())  # fmt: skip
            rec["baseline"] = f"{100 * g['baseline'].max():.1f}"
            rec["n_train"], rec["classes"] = int(g["n_train"].max()), int(g["n_classes"].max())
            rows.append(rec)
        title = f"Probe accuracy % on P_test people, best layer [95% person-bootstrap interval], target = {target}:"
        tables.append(SummaryTable(title, pd.DataFrame(rows).fillna("-"), name=f"probe_{target}"))
    if embed is not None and not embed.empty:
        tables += _embed_summary(embed)
    evals = ((qa, "QA extraction", "qa"), (inverse, "Inverse search (attributes -> full name)", "inverse"))
    for table, title, name in evals:
        if table is not None and not table.empty:
            tables.append(_eval_summary(table, title, name=name))
    if recall is not None and not recall.empty:
        tables.append(_eval_summary(
            recall.assign(split="test", metric="exact_match"),
            "Memorisation: values of the training biographies reproduced",
            "every person, first entry, before finetuning",
            name="memorisation",
        ))  # fmt: skip
    if reversal is not None and not reversal.empty:
        tables.append(_eval_summary(reversal.assign(split="test"), "Reversal curse (fictitious people)",
                                    "after training on the facts", name="reversal"))  # fmt: skip
    return tables


HEADLINE_COLUMNS = ("memorisation", "QA", "inverse search", "best Q attribute", "Q at name", "baseline")


def headline(tables: Sequence[SummaryPart]) -> SummaryTable | None:
    """The key numbers of a summary, one row per model, each cell as the summary's tables give it: overall exact
    match of memorisation, QA and inverse search, and the Q-probe at the name for the attribute it reads best above
    the majority baseline (first-token target where probed, best layer). None when the summary has none of them."""
    by_name = {t.name: t.table for t in tables if isinstance(t, SummaryTable)}
    rows: dict[str, dict[str, Any]] = {}
    probe = next((by_name[n] for n in ("probe_first_token", "probe_value") if n in by_name), None)
    if probe is not None and "Q name" in probe.columns:
        gain = probe["Q name"].map(_lead) - probe["baseline"].map(_lead)
        for model, g in gain.groupby(probe["model"], sort=False):
            if g.notna().any():
                r = probe.loc[g.idxmax()]
                cells = {"best Q attribute": r["attribute"], "Q at name": r["Q name"], "baseline": r["baseline"]}
                rows.setdefault(str(model), {}).update(cells)
    for name, column in (("memorisation", "memorisation"), ("qa", "QA"), ("inverse", "inverse search")):
        table = by_name.get(name)
        if table is not None and "overall" in table.columns:
            for model, cell in table["overall"].items():
                rows.setdefault(str(model), {})[column] = cell
    if not rows:
        return None
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("model")
    frame = frame[[c for c in HEADLINE_COLUMNS if c in frame.columns]].fillna("-")
    return SummaryTable("Per model, % [95% person-bootstrap interval]: memorisation (every person), QA and inverse "
                        "search (P_test, after finetuning), overall exact match; the Q-probe at the name (P_test, "
                        "best layer) for the attribute it reads best above the majority baseline:", frame, index=True,
                        name="headline")  # fmt: skip


def _lead(cell: Any) -> float:
    """The number a summary cell starts with (``97.9 [96.8, 98.8]``: 97.9; ``-``: NaN)."""
    try:
        return float(str(cell).split()[0])
    except (ValueError, IndexError):
        return float("nan")


def _embed_summary(embed: pd.DataFrame) -> list[SummaryTable]:
    """The paper's embedding-update probe (last layer): Q at the name and P at each attribute's own position."""
    from probekit.reporting.results import normalise

    ok = normalise(embed)
    ok = ok[ok["status"] == "ok"]
    tables = []
    for target, g0 in ok.groupby("target_kind", sort=False):
        rows = []
        for (model, attr), g in g0.groupby(["model", "attribute"], sort=False):
            p, q = g[(g["probe_kind"] == "p") & (g["position"] == attr)], g[g["probe_kind"] == "q"]
            rec: dict[str, Any] = {"model": model, "attribute": attr}
            for col, part in (("P own pos", p), ("Q name", q)):
                rec[col] = _cell(part["accuracy"].tolist(), part["ci_low"].tolist(), part["ci_high"].tolist())
            if len(q) and q["selectivity"].notna().any():
                rec["Q selectivity"] = _cell(q["selectivity"].tolist(), q["selectivity_ci_low"].tolist(),
                                             q["selectivity_ci_high"].tolist())  # fmt: skip
            rec["baseline"] = f"{100 * g['baseline'].max():.1f}"
            rows.append(rec)
        title = f"Embedding-update probe (the paper's; last layer), % on P_test [95% interval], target = {target}:"
        tables.append(SummaryTable(title, pd.DataFrame(rows).fillna("-"), name=f"embed_{target}"))
    return tables


def _eval_summary(table: pd.DataFrame, title: str, how: str | None = None, name: str = "") -> SummaryTable:
    """Exact match on P_test per model and task, with intervals (one seed) or mean ± sd (several). ``how`` says
    what the models went through before the test; left out, it comes from the table's ``finetune`` column (QA and
    inverse search): models that answer as trained (``none``: trained with P_train QAs) are named as such, and
    marked ``*`` when others were finetuned."""
    view = table[(table["split"] == "test") & (table["metric"] == "exact_match")]
    for c in ("ci_low", "ci_high"):
        if c not in view.columns:
            view = view.assign(**{c: float("nan")})
    where = ""
    if how is None:
        where = " on P_test"
        methods = set(view["finetune"].astype(str)) if "finetune" in view.columns else set()
        as_trained, untuned = methods == {"none"}, "as trained with P_train QAs, no finetuning"
        how = untuned if as_trained else "after finetuning on P_train"
        if "none" in methods and not as_trained:
            how += f"; * answers {untuned}"
            view = view.assign(model=[f"{m} *" if f == "none" else m for m, f in zip(view["model"], view["finetune"])])
    cells: dict[str, dict[str, str]] = {}
    for (model, task), g in view.groupby(["model", "task"], sort=False):
        cells.setdefault(str(model), {})[str(task)] = _cell(g["value"].tolist(), g["ci_low"].tolist(),
                                                             g["ci_high"].tolist())  # fmt: skip
    return SummaryTable(f"{title}{where} (exact match % [95% person-bootstrap interval], {how}):",
                        pd.DataFrame(cells).T.fillna("-"), index=True, name=name)  # fmt: skip


def render_experiment(cfg: ExperimentConfig, out: Path, probe: pd.DataFrame, embed: pd.DataFrame | None,
                      qa: pd.DataFrame | None, inverse: pd.DataFrame | None, layer: int | None = None,
                      png: bool = True, provenance: dict | None = None, control: bool = True,
                      figures_dir: Path | None = None, scale: bool = False,
                      tables_dir: Path | None = None) -> tuple[Any, pd.DataFrame | None, list[Any]]:  # fmt: skip
    """Every figure of an experiment from its tables: each model's probe figures (``probekit.reporting.plots``)
    and, with two or more trained models, the comparison across them (``probekit.reporting.compare``: P grids and
    Q profiles side by side, storage at the name against QA and inverse search with correlations, extraction per
    model). The comparison's tables go to ``tables_dir`` (default ``<out>/comparison/``: ``points.csv``,
    ``correlations.csv``). Returns the render report, the correlations (None without a comparison) and the
    figures. ``probekit plot --experiment`` calls this too, with ``figures_dir`` and ``tables_dir`` outside the
    run it reads. ``scale``: write ``scale.csv`` there (per model: Q at the name and QA against depth, width and
    people) even when these models share every axis value, as a part (``--models``) of an experiment whose whole
    config varies them does: ``probekit plot --scale`` joins such parts' tables (it is written anyway when the
    axes vary among these models)."""
    from probekit.reporting import compare
    from probekit.reporting.figures import write_figures
    from probekit.reporting.plots import build_figures, check_layer

    layer = cfg.figures_layer if layer is None else layer
    check_layer(probe, layer)
    figures = build_figures(probe, layer, control)
    corr = None
    both = pd.concat([probe, embed], ignore_index=True) if embed is not None else probe
    n_trained = len(compare.trained_models(both))
    if n_trained >= 2 or (scale and n_trained):  # a one-model part still gives its scale.csv row
        keys = [(r.key, r.model.name) for r in cfg.runs()]
        if cfg.seeds is not None and len(cfg.seeds) > 1:  # the comparison takes each model's first seed
            first = cfg.seeds[0]
            keys = [(r.key, r.model.name) for r in cfg.runs() if r.seed == first]
            both = both[both["seed"] == first]
        points = compare.storage_points(both, q_people_table(cfg, out, [k for k, _ in keys]),
                                        compare.load_eval_predictions(out, "qa", keys),
                                        compare.load_eval_predictions(out, "inverse", keys))  # fmt: skip
        corr = compare.correlations(points, seed=int(cfg.probe.get("seed", 0)))
        tables = tables_dir or out / "comparison"
        tables.mkdir(parents=True, exist_ok=True)
        for name, table in (("points", points.table), ("correlations", corr)):
            with atomic_path(tables / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
        if n_trained >= 2:
            figures += compare.comparison_figures(both, points, corr, qa, inverse, layer)
        from probekit.reporting.scaling import model_axes, scale_figure, scale_table, varying_axes

        axes = model_axes(cfg)
        axes = axes[axes["model"].isin(set(points.table["model"]))] if not points.table.empty else axes.iloc[:0]
        if varying_axes(axes) or (scale and len(axes)):  # several depths, widths or people counts
            table = scale_table(points, axes, seed=int(cfg.probe.get("seed", 0)))
            with atomic_path(tables / "scale.csv") as tmp:
                table.to_csv(tmp, index=False)
            fig = scale_figure(table)
            figures += [fig] if fig is not None else []
    if (out / "reversal.csv").exists():
        fig = reversal_figure(pd.read_csv(out / "reversal.csv"))
        figures += [fig] if fig is not None else []
    if (out / "qa_by_group.csv").exists():
        figures.append(group_figure(pd.read_csv(out / "qa_by_group.csv")))
    if (out / "patch.csv").exists():
        from probekit.patching.patch import route_figure, route_table

        fig = route_figure(route_table(pd.read_csv(out / "patch.csv")))
        figures += [fig] if fig is not None else []
    report = write_figures(figures, figures_dir or out / "figures", png, provenance)
    return report, corr, figures


def load_experiment_tables(out: Path) -> tuple[ExperimentConfig, pd.DataFrame, pd.DataFrame | None,
                                               pd.DataFrame | None, pd.DataFrame | None]:  # fmt: skip
    """An experiment's config and tables from its output directory (for re-rendering its figures)."""
    from probekit.reporting.results import read_results

    rec = out / "experiment.json"
    if not rec.exists() or not (out / "results.parquet").exists():
        raise UserFileNotFoundError(f"{out} holds no finished experiment (experiment.json and results.parquet); "
                                    "run `probekit run` into it first")  # fmt: skip
    cfg = from_dict(ExperimentConfig, json.loads(rec.read_text()))
    probe = read_results(out / "results.parquet")
    embed = read_results(out / "embed_update" / "results.parquet") if (out / "embed_update").exists() else None
    qa, inverse = (pd.read_csv(out / f"{n}.csv") if (out / f"{n}.csv").exists() else None for n in ("qa", "inverse"))
    return cfg, probe, embed, qa, inverse


def run_experiment(
    cfg: ExperimentConfig,
    out: str | Path,
    progress: bool = True,
    figures_out: str | Path | None = None,
    png: bool = True,
    jobs: int = 1,
    models: Sequence[str] | None = None,
    executor: str | Executor = "local",
) -> ExperimentResult:
    """Run (or continue) every stage of ``cfg`` into ``out``; returns the tables, figures and summary.

    ``jobs`` > 1 trains up to that many models at once in worker processes (one torch thread each): on a
    small-CPU machine two single-thread trainings finish sooner than two consecutive two-thread ones.
    ``executor``: where the jobs of each stage run (``probekit.experiment.executor``): ``"local"`` (the process
    pool), ``"slurm"`` (one Slurm job per model and stage, with ``cfg.resources``) or ``"submitit-local"``.
    ``models`` works on the named models only (their datasets, training and every stage; the tables, figures and
    summary then cover those models); ``experiment.json`` records the whole config, so a later run without
    ``models`` (or with the others) continues the same experiment and keeps what is finished.
    """
    t0 = time.perf_counter()
    _check_config(cfg)  # everything is checked before the first file is written
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs must be a whole number >= 1 (models trained at once), got {jobs!r}")
    ex = make_executor(executor)
    part, out = _check_part_and_out(cfg, models, out)
    if ex.name != "slurm":  # a Slurm job checks its own node's hardware when it trains
        _check_precisions(part)
    with output_lock(out):  # one writer per experiment directory
        return _run_locked(cfg, part, out, progress, figures_out, png, jobs, t0, ex)


def dry_run(
    cfg: ExperimentConfig,
    out: str | Path,
    models: Sequence[str] | None = None,
    executor: str = "local",
    gpu_tflops: float = 300.0,
) -> str:
    """``probekit run --dry-run``: check every setting as ``run_experiment`` does before its first file, and return
    the report of every job a run would submit, its resources and estimated compute
    (``probekit.experiment.plan``); nothing is written or submitted. An executor that cannot submit from this
    machine (no ``sbatch`` here) is a note in the report, not an error: the plan is for the cluster."""
    from probekit.experiment.plan import check_gpu_tflops, format_plan, plan, plan_table

    _check_config(cfg)
    check_gpu_tflops(gpu_tflops)
    warnings = []
    try:
        make_executor(executor)
    except UserError as e:
        if executor not in EXECUTORS:
            raise
        warnings.append(str(e))
    part, path = _check_part_and_out(cfg, models, out)
    table = plan_table(plan(part, path), gpu_tflops)
    return format_plan(part, path, executor, table, gpu_tflops, warnings)


def _check_config(cfg: ExperimentConfig) -> None:
    """Every setting of ``cfg``, its stages and its resources (one-line ``UserError``s)."""
    cfg.validate()
    check_stages(cfg)
    check_resources(cfg)


def _check_precisions(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, a model whose mixed precision this machine cannot run (bf16 without bfloat16 units,
    fp16 without CUDA): the earlier models would otherwise train before that one fails."""
    for r in cfg.runs():
        check_precision(r.train.get("precision"), f"model {r.key}: train.precision")


def _check_part_and_out(cfg: ExperimentConfig, models: Sequence[str] | None,
                        out: str | Path) -> tuple[ExperimentConfig, Path]:  # fmt: skip
    """The part of ``cfg`` that ``models`` names, and ``out`` made absolute (runs record paths that work from any
    directory), refused if it holds another experiment or other settings."""
    part = _part(cfg, models)
    path = Path(out).expanduser().resolve()
    _check_out(cfg, path)
    return part, path


def _run_locked(cfg: ExperimentConfig, part: ExperimentConfig, out: Path, progress: bool,
                figures_out: str | Path | None, png: bool, jobs: int, t0: float,
                ex: Executor) -> ExperimentResult:  # fmt: skip
    from probekit import provenance as prov
    from probekit.reporting.results import write_results

    cfg_file = out / "experiment.json"
    _check_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_file, config_record(cfg))
    full, cfg = cfg, part
    seeds = {**{f"data.{d.name}": d.seed for d in cfg.datasets},
             **{f"train.{r.key}": r.train_seed for r in cfg.runs()},
             "probe": cfg.probe.get("seed", 0)}  # fmt: skip
    ctx = Context(cfg, out, progress=progress, png=png, jobs=jobs)
    prov.append_session(out, prov.record(seeds=seeds, jobs=jobs, **ex.record(ctx)))
    times: list[tuple[str, Timing]] = []
    with shared_workers():  # one set of --jobs worker processes for every stage
        for stage in STAGES:  # each stage skips the shares already done; the executor runs the rest and waits
            if stage.enabled(cfg):
                times += [(stage.name, t) for t in ex.run(stage, ctx)]
                ctx.tables.update(stage.collect(ctx))
    data, t = ctx.data, ctx.tables
    probe, embed, qa, qa_groups = t["probe"], t.get("embed_update"), t.get("qa"), t.get("qa_by_group")
    inverse, reversal, recall, patch = t.get("inverse"), t.get("reversal"), t.get("recall"), t.get("patch")
    assert probe is not None
    inputs = {**{f"data/{k}": v for k, v in data.items()},
              **{f"probes/{r.key}": out / "probes" / r.key / "results.parquet" for r in cfg.runs()}}  # fmt: skip
    rec = prov.record(inputs=inputs, seeds=seeds)
    write_results(probe, out, provenance=rec)
    if embed is not None:
        write_results(embed, out / "embed_update", provenance=rec)
    for name, table in t.items():  # every stage table but the probe tables, which are written above
        if table is not None and name not in ("probe", "embed_update"):
            with atomic_path(out / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
    fig_rec = {**rec, "tables": {"results.parquet": prov.sha256_file(out / "results.parquet")}}
    from probekit.reporting.scaling import model_axes, varying_axes

    report, corr, figures = render_experiment(cfg, out, probe, embed, qa, inverse, png=png, provenance=fig_rec,
                                              scale=bool(varying_axes(model_axes(full))))  # fmt: skip
    if report.png_error:
        log.warning(report.png_error)
    # the summary's parts: tables and lines of text; a part with no lines still adds its line break ([""]),
    # as summary.txt always had
    parts: list[SummaryPart] = [*summary_tables(probe, qa, inverse, embed, reversal, recall)] or [""]
    if len(cfg.models) < len(full.models):
        left = [m.name for m in full.models if m not in cfg.models]
        parts.insert(0, f"this run covered models {', '.join(m.name for m in cfg.models)} (--models); not in these "
                        f"tables: {', '.join(left)}")  # fmt: skip
    if qa_groups is not None:
        parts.append(group_summary(qa_groups))
    if patch is not None:
        from probekit.patching.patch import route_summary, route_table

        parts += route_summary(route_table(patch)) or [""]
    for stage in STAGES:
        if stage.enabled(cfg):
            parts += stage.summary_parts(ctx)
    if corr is not None:
        from probekit.reporting.compare import correlation_summary

        parts += correlation_summary(corr) or [""]
    if (out / "comparison" / "scale.csv").exists() and corr is not None:
        from probekit.reporting.scaling import scale_summary

        parts += scale_summary(pd.read_csv(out / "comparison" / "scale.csv")) or [""]
    summary = summary_text(parts)
    seconds = time.perf_counter() - t0
    atomic_write_text(out / "summary.txt", summary + "\n")
    from probekit.reporting.report import write_report

    timings = record_timings(out, times)  # not in summary.txt, which stays the same for the same config and seeds
    write_report(out / "report.html", title=f"probekit experiment: {cfg.name}", question=cfg.notes,
                 config=config_record(full), provenance=fig_rec, figures=figures, headline=headline(parts),
                 summary=[*parts, "", *timing_tables(timings)])  # fmt: skip
    files = [*report.files, out / "report.html"]
    if figures_out is not None:
        dest = Path(figures_out)
        dest.mkdir(parents=True, exist_ok=True)
        for f in report.files:
            if f.suffix in (".png", ".csv"):
                shutil.copyfile(f, dest / f.name)
        shutil.copyfile(out / "figures" / prov.PROVENANCE_FILE, dest / prov.PROVENANCE_FILE)  # what made them
    return ExperimentResult(out, probe, qa, files, summary, seconds, inverse, reversal, timings)


TIMINGS_FILE = "timings.csv"


def record_timings(out: Path, times: list[tuple[str, Timing]]) -> pd.DataFrame:
    """Add this run's job times to ``<out>/timings.csv`` (one row per stage and job; a job run again replaces its
    row) and return the whole table: stage, job, wall_s, cpu_s."""
    rows = [{"stage": stage, "job": t.label, "wall_s": round(t.wall_s, 3), "cpu_s": round(t.cpu_s, 3)}
            for stage, t in times]  # fmt: skip
    new = pd.DataFrame(rows, columns=["stage", "job", "wall_s", "cpu_s"])
    f = out / TIMINGS_FILE
    if f.exists():
        try:
            old = pd.read_csv(f)
        except (OSError, ValueError):  # an unreadable table from an interrupted write: start it again
            old = new.iloc[:0]
        new = pd.concat([old[~old.set_index(["stage", "job"]).index.isin(new.set_index(["stage", "job"]).index)],
                         new], ignore_index=True)  # fmt: skip
    with atomic_path(f) as tmp:
        new.to_csv(tmp, index=False)
    return new


def timing_summary(timings: pd.DataFrame) -> list[str]:
    """``timing_tables`` as lines of text."""
    return [line for t in timing_tables(timings) for line in t.lines()]


def timing_tables(timings: pd.DataFrame) -> list[SummaryTable]:
    """Where the time went: wall and CPU minutes per stage (summed over its jobs) and the largest jobs."""
    if timings.empty:
        return []
    per = timings.groupby("stage", sort=False)[["wall_s", "cpu_s"]].sum() / 60
    per["jobs"] = timings.groupby("stage", sort=False).size()
    top = timings.sort_values("wall_s", ascending=False).head(5)
    return [SummaryTable("Time per stage (minutes, summed over its jobs; timings.csv has every job):", per.round(1),
                         index=True, name="time_per_stage"),
            SummaryTable("Longest jobs (minutes):", (top.set_index("job")[["wall_s", "cpu_s"]] / 60).round(1),
                         index=True, name="longest_jobs")]  # fmt: skip


def _stage_dirs() -> tuple[str, ...]:
    """Every stage's output directory, and the figures'."""
    return (*dict.fromkeys(s.directory for s in STAGES), "figures")


def _addable_sections() -> tuple[str, ...]:
    """Config sections whose appearance in a started experiment adds a stage's outputs, keeping the rest."""
    return (*(sec for s in STAGES for sec in s.sections), "stages")


def check_stages(cfg: ExperimentConfig) -> None:
    """Every name under ``stages`` is a registered plug-in stage, and every enabled stage accepts its settings."""
    known = [s.name for s in STAGES if s.name not in BUILTIN]
    unknown = sorted(set(cfg.stages) - set(known))
    if unknown:
        raise UserError(f"stages: unknown stage(s) {', '.join(unknown)}; registered plug-in stages: "
                        f"{', '.join(known) or 'none'} (built-in stages have sections of their own)")  # fmt: skip
    for stage in STAGES:
        if stage.enabled(cfg):
            stage.validate(cfg)


def check_resources(cfg: ExperimentConfig) -> None:
    """Every name under ``resources`` is ``default`` or a registered stage (the values are checked with the
    config)."""
    names = [s.name for s in STAGES]
    unknown = sorted(set(cfg.resources) - {"default", *names})
    if unknown:
        raise UserError(f"resources: unknown stage(s) {', '.join(unknown)}; give resources for default or a stage: "
                        f"{', '.join(names)}")  # fmt: skip


def _part(cfg: ExperimentConfig, models: Sequence[str] | None) -> ExperimentConfig:
    """``cfg`` with only the named models (a shallow copy, not validated again: the stages' settings may name the
    others), or ``cfg`` itself when ``models`` is None."""
    if models is None:
        return cfg
    names = [m.name for m in cfg.models]
    unknown = [m for m in models if m not in names]
    if unknown or not models:
        what = f"unknown model(s) {', '.join(unknown)}" if unknown else "no model named"
        raise UserError(f"--models {','.join(models)}: {what}; the experiment's models are {', '.join(names)}")
    part = copy.copy(cfg)
    part.models = [m for m in cfg.models if m.name in models]
    return part


def _without(section: Any, models: Sequence[str]) -> Any:
    """A config section's record without its per-model settings (``model_finetune``) of ``models``."""
    if not isinstance(section, dict) or not isinstance(section.get("model_finetune"), dict):
        return section
    per_model = {k: v for k, v in section["model_finetune"].items() if k not in models}
    rest = {k: v for k, v in section.items() if k != "model_finetune"}
    return {**rest, "model_finetune": per_model} if per_model else rest  # the record leaves an empty one out


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
    started = [d for d in _stage_dirs() if (out / d).is_dir() and any((out / d).iterdir())]
    if not started:
        return  # nothing was produced with the old config: the corrected one replaces it
    changed = sorted(k for k in set(new) | set(old or {}) if json.loads(json.dumps(new.get(k))) != (old or {}).get(k))
    if old is not None:
        # models or whole stages added to a started experiment: every stage writes outputs of its own, per model
        stages = [k for k in changed if k in _addable_sections() and old.get(k) is None]
        rest = [k for k in changed if k not in stages and k not in ("name", "notes")]  # labels produce nothing
        kept = json.loads(json.dumps(new["models"]))
        datasets = json.loads(json.dumps(new["datasets"]))  # datasets may be added with the models that use them
        added = [m["name"] for m in kept if m not in old["models"]]
        # a section that changed only by settings of the added models (qa.model_finetune: {<added>: ...}) is kept
        rest = [k for k in rest if _without(json.loads(json.dumps(new.get(k))), added) != old.get(k)]
        if (
            set(rest) <= {"models", "datasets"}
            and all(m in kept for m in old["models"])
            and all(d in datasets for d in old["datasets"])
        ):
            if added:
                log.info(f"{out}: adding model(s) {', '.join(added)}; the finished ones are kept")
            if stages:
                log.info(f"{out}: adding stage(s) {', '.join(stages)}; the finished ones are kept")
            return
    raise UserError(f"{out} holds the outputs ({', '.join(started)}) of a different experiment config (changed: "
                    f"{', '.join(changed) or 'unreadable experiment.json'}); choose another --out, or delete {out} "
                    "to start again")  # fmt: skip


__all__ = [
    "DatasetSpec",
    "ExperimentConfig",
    "InverseSpec",
    "ModelSpec",
    "QASpec",
    "Run",
    "demo_config",
    "load_experiment",
    "run_experiment",
    "summarize",
]  # fmt: skip
