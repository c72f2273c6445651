"""Shared fixtures: tiny datasets built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # tiny test models run fastest on one thread


@pytest.fixture(scope="session")
def tiny_single(tmp_path_factory: pytest.TempPathFactory):
    from probekit.data.store import build_dataset

    return build_dataset(tmp_path_factory.mktemp("data") / "single", n_people=40, augmentation="single", seed=0)


@pytest.fixture(scope="session")
def tiny_multi(tmp_path_factory: pytest.TempPathFactory):
    from probekit.data.store import build_dataset

    return build_dataset(tmp_path_factory.mktemp("data") / "multi", n_people=40, augmentation="multi3+permute", seed=0)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
