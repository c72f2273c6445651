"""A tiny world shared by the reliability tests: a 20-person dataset, a 1-layer x 32 run trained for 2 steps, a
probe spec and a probe results table, all built once per session."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every reliability test drives whole commands (user-facing behaviour, not a core mechanism): it runs with the
    full suite and is left out of the fast core subset, ``pytest -m "not slow"``."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slow)


TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_mlp": 64}
TINY_TRAIN = {"objective": "ntp", "model": TINY_MODEL, "seq_len": 32, "batch_size": 4, "max_steps": 2,
              "warmup_steps": 1, "eval_windows": 0, "log_every": 1, "seed": 0}  # fmt: skip
TINY_SPEC = {"kinds": ["q"], "targets": ["first_token"], "l2_grid": [0.01], "max_iter": 5, "bootstrap": 0}


@dataclass
class Tiny:
    root: Path
    data: Path
    run: Path
    spec: Path
    train_yaml: Path
    table: Path  # a probe results.parquet


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    from probekit.data.store import build_dataset
    from probekit.reporting.results import write_results
    from probekit.training.config import TrainConfig
    from probekit.training.trainer import train
    from tests.test_plots import table

    root = tmp_path_factory.mktemp("tiny")
    data = build_dataset(root / "data", n_people=20, augmentation="single", seed=0).root
    run = root / "run"
    train(TrainConfig(data=str(data), out=str(run), **TINY_TRAIN), progress=False)
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC), encoding="utf-8")
    train_yaml = root / "train.yaml"
    train_yaml.write_text(yaml.safe_dump(TINY_TRAIN), encoding="utf-8")
    write_results(table(models=("a",), layers=2), root / "table")
    return Tiny(root, Path(data), run, spec, train_yaml, root / "table" / "results.parquet")


def tree_digest(path: Path) -> dict[str, str]:
    """Every file under ``path`` (hidden ones included) -> its SHA-256: equal before and after means untouched."""
    out = {}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def probekit(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
             cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``probekit ARGS`` as a real subprocess (one torch thread)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "probekit", "--threads", "1", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, cwd=cwd)  # fmt: skip
