"""Shipped experiment configs shrunk to seconds (people, pools, model, steps, probe fits, resamples, finetuning):
every stage the config names still runs, so the tests check the pipeline, not the science."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from probekit.experiment.spec import ExperimentConfig, load_experiment
from probekit.serde import from_dict, to_dict

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64, "n_ctx": 160}
QUICK_FINETUNE = {"method": "full", "max_steps": 2, "batch_size": 8, "warmup_steps": 1}


def quick_record(name: str, n_people: int = 40) -> dict[str, Any]:
    """``experiments/<name>``'s config as a dict with its scale cut down; everything else as shipped."""
    rec = to_dict(load_experiment(ROOT / "experiments" / name))
    for d in rec["datasets"]:
        d["n_people"] = n_people
        d["pool_limits"] = dict.fromkeys(d["pool_limits"], 4)
    for m in rec["models"]:
        t = copy.deepcopy(m["train"])
        t.pop("tokens", None)
        t.update(model=TINY_MODEL, seq_len=64, batch_size=8, max_steps=6, warmup_steps=2, save_every=3, log_every=3)
        m["train"] = t
    rec["probe"].update(l2_grid=[0.01], max_iter=10, bootstrap=30)
    if rec.get("qa"):
        rec["qa"]["finetune"] = dict(QUICK_FINETUNE)
    if rec.get("patch"):  # an untrained model answers nothing right: patch every pair
        rec["patch"]["config"].update(n_pairs=4, n_boot=20, require_correct=False)
    return rec


def quick_config(name: str, n_people: int = 40) -> ExperimentConfig:
    return from_dict(ExperimentConfig, quick_record(name, n_people))
