"""``probekit train``: train a model on a dataset (NTP, ABI or BICO) from a YAML config, resumably."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import yaml

from probekit.errors import UserError

EXAMPLES = """examples:
  probekit train --config experiments/configs/ntp_small.yaml --data data/single --out runs/ntp_single
  probekit train --config experiments/configs/ntp_small.yaml --objective bico --steps 2000 --out runs/bico
  probekit train --out runs/ntp_single --resume            # continue from the last checkpoint
  probekit train --config cfg.yaml --set model.n_layers=2 --set lr=3e-4 --out runs/x --overwrite
  accelerate launch --num_processes 4 -m probekit.cli train --config cfg.yaml --out runs/x   # 4 GPUs, data-parallel
  torchrun --nproc_per_node 2 -m probekit.cli train --config cfg.yaml --out runs/x          # 2 CPU processes (gloo)
"""


def _set(d: dict[str, Any], dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise UserError(
            f"--set {dotted}={raw}: the value is not valid YAML; quote it, e.g. --set '{dotted}=\"...\"'"
        ) from None
    for k in keys[:-1]:
        sub = d.setdefault(k, {})
        if not isinstance(sub, dict):
            raise UserError(f"--set {dotted}: {k!r} is not a mapping")
        d = sub
    d[keys[-1]] = value


def build_config(args: argparse.Namespace) -> Any:
    """TrainConfig from --config (or, with --resume and no --config, the run's saved config) plus overrides."""
    from probekit.config import from_dict, load_mapping
    from probekit.train import TRAIN_CONFIG_FILE

    if args.config:
        data = load_mapping(args.config, "training config")
    elif args.resume and args.out and (Path(args.out) / TRAIN_CONFIG_FILE).exists():
        data = load_mapping(Path(args.out) / TRAIN_CONFIG_FILE, "the run's saved config")
    else:
        raise UserError("--config is required (except with --resume of an existing --out run)")
    if not isinstance(data, dict):
        raise UserError(f"config {args.config} must be a mapping of settings")
    for key, value in (("data", args.data), ("objective", args.objective), ("out", args.out), ("seed", args.seed),
                       ("batch_size", args.batch_size), ("lr", args.lr)):  # fmt: skip
        if value is not None:
            data[key] = value
    budgets = {"max_steps": args.steps, "epochs": args.epochs, "tokens": args.tokens}
    if any(v is not None for v in budgets.values()):
        for k, v in budgets.items():
            data[k] = v
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must look like KEY=VALUE (e.g. model.n_layers=2)")
        _set(data, key, raw)
    from probekit.train import TrainConfig

    cfg = from_dict(TrainConfig, data)
    cfg.validate()
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from probekit.train import Trainer

    cfg = build_config(args)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    start = trainer.step
    main_process = trainer.accelerator.is_main_process
    if start and main_process:
        print(f"resuming {cfg.out} at step {start} of {trainer.max_steps}")
    m = trainer.accelerator.unwrap_model(trainer.model)
    if main_process:
        print(f"training {cfg.objective} on {trainer.dataset_name}: {m.num_params() / 1e6:.2f}M parameters "
              f"({m.cfg.n_layers}x{m.cfg.d_model}), {trainer.max_steps} steps of {cfg.batch_size} x "
              f"{cfg.seq_len} tokens, {trainer.accelerator.num_processes} process(es) on "
              f"{trainer.accelerator.device.type}")  # fmt: skip
    res = trainer.run()
    if not main_process:
        return 0
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"done in {time.perf_counter() - t0:.1f}s ({res.elapsed_s:.1f}s training in total)")
    print(f"  steps       {res.steps} ({res.steps - start} this session), {res.epochs:.2f} epochs")
    print(f"  tokens      {res.tokens:,}")
    print(f"  final loss  train {fmt(res.train_loss)}, eval {fmt(res.eval_loss)}")
    print(f"  metrics     {res.metrics_path}")
    print(f"  checkpoint  {res.checkpoint}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (NTP, ABI or BICO) on a dataset",
        description=(
            "Train a HookedLM on a dataset directory with AdamW (warmup + cosine), writing metrics.jsonl and\n"
            "checkpoints (model.safetensors, config.json, tokenizer, train_config.json, trainer_state.pt) under\n"
            "--out/checkpoints/step_*. Settings come from a YAML TrainConfig "
            "(see experiments/configs/ntp_small.yaml);\n"
            "the options below override it. An interrupted run continues with --resume and reaches the same weights."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML/JSON TrainConfig (optional with --resume: the run's own config)")
    p.add_argument("--data", help="dataset directory (from `probekit data bios`)")
    p.add_argument("--objective", choices=("ntp", "abi", "bico"), help="training objective")
    p.add_argument("--out", help="run directory (checkpoints, metrics)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="budget: optimiser steps (replaces the config's budget)")
    budget.add_argument("--epochs", type=float, help="budget: passes over the packed data")
    budget.add_argument("--tokens", type=int, help="budget: training tokens")
    p.add_argument("--seed", type=int, help="seed for model init, data order and objective sampling")
    p.add_argument("--batch-size", type=int, dest="batch_size", help="global batch size (sequences per step)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, dotted for nested ones (model.n_layers=2); repeatable")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
