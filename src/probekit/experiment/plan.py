"""``probekit run --dry-run``: every job a run would submit, its resources and an estimate of its compute.

Nothing is written and nothing is submitted. The config is checked as ``probekit run`` checks it before its first
file (every section, the stages, the resources, ``--models``, and, where ``--out`` holds a started run, that the
settings are the same), then every stage lists its jobs from the config alone (``Stage.planned``), each marked
done where ``--out`` already holds its finished share.

The estimate covers training, the cost that grows with scale: a decoder's training step costs about 6 FLOPs per
parameter per token plus 6 x layers x context x width for attention (Kaplan et al. 2020, "Scaling laws", table 1:
forward 2N + 2 n_layer n_ctx d_model, backward twice that). N counts the non-embedding weights of probekit's
transformer (per layer 4 d^2 for attention and 3 d d_mlp for the SwiGLU MLP) plus the unembedding (d x vocab);
the vocabulary is read from the dataset where ``--out`` has built it, else taken as 4,000 (probekit's word
tokenizer on bioS: about 2,300-3,900 types). GPU-hours are those FLOPs at ``gpu_tflops`` effective TFLOP/s per GPU
(an assumption, stated in the output: an H100's dense bf16 peak is about 990, and 30-40% of it is a good
utilisation for models of this size). The other stages' cost is given as what they request: GPUs x time limit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from probekit.errors import UserError
from probekit.experiment.spec import ExperimentConfig, ResourceSpec
from probekit.experiment.stage import done
from probekit.experiment.stages import STAGES

DEFAULT_VOCAB = 4000  # vocabulary assumed for the unembedding before the dataset exists


@dataclass(frozen=True)
class PlannedJob:
    """One job of the plan: its stage and label, the resources it asks for, its training FLOPs (None for a job
    that trains nothing, or whose token budget is in epochs of data not built yet) and whether it is done."""

    stage: str
    label: str
    resources: ResourceSpec
    flops: float | None
    done: bool


def train_tokens(train: dict[str, Any], windows: int | None = None) -> int | None:
    """The tokens a train section consumes: ``tokens``, or ``max_steps`` x batch x window, or ``epochs`` x the
    dataset's windows (``windows``, None where the data is not built yet)."""
    from probekit.serde import from_dict
    from probekit.training.config import TrainConfig

    tc = from_dict(TrainConfig, {k: v for k, v in train.items() if k not in ("data", "out")})
    if tc.tokens is not None:
        return int(tc.tokens)
    if tc.max_steps is not None:
        return int(tc.max_steps) * tc.batch_size * tc.seq_len
    if tc.epochs is not None and windows is not None:
        return int(tc.epochs * windows * tc.seq_len)
    return None


def train_flops(train: dict[str, Any], vocab: int = DEFAULT_VOCAB, windows: int | None = None) -> float | None:
    """Training FLOPs of one model (see the module docstring): 6 (N + n_layers x seq_len x d_model) per token."""
    from probekit.model.config import ModelConfig
    from probekit.serde import from_dict
    from probekit.training.config import TrainConfig

    tokens = train_tokens(train, windows)
    if tokens is None:
        return None
    mc = from_dict(ModelConfig, {"vocab_size": vocab, **dict(train.get("model") or {})})
    seq_len = int(train.get("seq_len", TrainConfig.seq_len))
    n = mc.n_layers * (4 * mc.d_model**2 + 3 * mc.d_model * mc.d_mlp) + mc.d_model * mc.vocab_size
    return 6.0 * (n + mc.n_layers * seq_len * mc.d_model) * tokens


def dataset_vocab(data: Path) -> int:
    """The vocabulary of a built dataset (its ``tokenizer.json``), else ``DEFAULT_VOCAB``."""
    try:
        tok = json.loads((data / "tokenizer.json").read_text(encoding="utf-8"))
        ids = [*tok["model"]["vocab"].values(), *(t["id"] for t in tok.get("added_tokens") or [])]
        return int(max(ids)) + 1
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return DEFAULT_VOCAB


def plan(cfg: ExperimentConfig, out: Path) -> list[PlannedJob]:
    """Every job of every enabled stage, in the order a run submits them (``cfg`` is already checked)."""
    jobs: list[PlannedJob] = []
    for stage in STAGES:
        if not stage.enabled(cfg):
            continue
        res = cfg.resources_for(stage.name)
        for p in stage.planned(cfg):
            flops = None
            if p.train is not None:
                flops = train_flops(p.train, dataset_vocab(out / p.data) if p.data else DEFAULT_VOCAB)
            jobs.append(PlannedJob(stage.name, p.label, res, flops, done(out / p.dest)))
    return jobs


def plan_table(jobs: list[PlannedJob], gpu_tflops: float) -> pd.DataFrame:
    """One row per job: resources, training PFLOPs and estimated GPU-hours (training jobs on GPUs), requested
    GPU-hours (GPUs x time limit) and whether it is done."""
    rows = []
    for j in jobs:
        r = j.resources
        est = j.flops / (gpu_tflops * 1e12 * 3600) if j.flops is not None and r.gpus > 0 else None
        rows.append({"stage": j.stage, "job": j.label, "cpus": r.cpus, "gpus": r.gpus, "mem": r.mem or "default",
                     "time_min": r.time, "partition": r.partition or "default",
                     "train_pflops": None if j.flops is None else round(j.flops / 1e15, 1),
                     "est_gpu_h": None if est is None else round(est, 2),
                     "requested_gpu_h": round(r.gpus * r.time / 60, 1), "done": j.done})  # fmt: skip
    return pd.DataFrame(rows)


def format_plan(cfg: ExperimentConfig, out: Path, executor: str, table: pd.DataFrame, gpu_tflops: float,
                warnings: list[str]) -> str:  # fmt: skip
    """The dry run's report: the jobs, the totals and the assumption behind the estimate."""
    left = table[~table["done"]]
    lines = [f"probekit run {cfg.name} --executor {executor} --dry-run: nothing written, nothing submitted",
             f"settings: checked (config, stages, resources, output directory {out})",
             f"{len(table)} jobs in {table['stage'].nunique()} stages, {len(left)} left to run:", ""]  # fmt: skip
    shown = table.astype(object).where(table.notna(), "-")
    lines += [shown.to_string(index=False), ""]
    trained = left[left["est_gpu_h"].notna()]
    if len(trained):
        lines.append(f"training left: {trained['train_pflops'].sum():,.1f} PFLOPs, about "
                     f"{trained['est_gpu_h'].sum():,.1f} GPU-hours at {gpu_tflops:g} effective TFLOP/s per GPU "
                     f"(an assumption: --gpu-tflops), {(trained['est_gpu_h'] / trained['gpus']).max():,.1f} hours of "
                     "wall time for the longest")  # fmt: skip
        over = trained[trained["est_gpu_h"] / trained["gpus"] * 60 > trained["time_min"] * 4]
        if len(over):
            lines.append(
                f"note: {', '.join(over['job'])} need more than 4 time limits of wall time each; each "
                "limit reached requeues the job (submitit does so 3 times), so raise resources.train.time"
            )
    cpu_trained = left[left["train_pflops"].notna() & (left["gpus"] == 0)]
    if len(cpu_trained):
        lines.append(f"training left on CPUs: {cpu_trained['train_pflops'].sum():,.3f} PFLOPs")
    lines.append(f"requested at most: {left['requested_gpu_h'].sum():,.1f} GPU-hours (GPUs x time limit of every job "
                 "left)")  # fmt: skip
    lines += [f"note: {w}" for w in warnings]
    return "\n".join(lines)


def check_gpu_tflops(gpu_tflops: float) -> None:
    if not gpu_tflops > 0:
        raise UserError(f"--gpu-tflops must be a positive number (effective TFLOP/s per GPU), got {gpu_tflops}")
