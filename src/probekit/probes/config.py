"""The probe engines' settings, in a module without torch, so that probe specs (and the CLI's ``probe --help``) can
be read without importing the engines: ``EngineConfig`` (the batched logistic-regression engine,
``probekit.probes.engine``) and ``EmbedProbeConfig`` (the embedding-update probe, ``probekit.probes.embed_probe``).
Both modules re-export them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from probekit.errors import UserError

Backend = Literal["torch", "torch-fast", "torch-classic", "sklearn"]
# torch-fast / torch-classic: the torch backend with that solver (EngineConfig normalises them to backend torch)
BACKENDS: tuple[str, ...] = ("torch", "torch-fast", "torch-classic", "sklearn")
SOLVERS: tuple[str, ...] = ("fast", "classic")
L2_RULES: tuple[str, ...] = ("one_se", "best")


@dataclass
class EngineConfig:
    """Settings shared by both backends (the sklearn backend ignores the torch-only memory settings)."""

    backend: Backend = "torch"
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    l2_rule: str = "one_se"  # one_se: strongest L2 within one standard error of the best; best: the best
    max_iter: int = 100  # L-BFGS iterations (scikit-learn's default)
    tol: float = 1e-4  # stop when max |gradient| of the mean loss falls below this (scikit-learn's gtol)
    history: int = 3  # L-BFGS memory: with the preconditioner 3 pairs do as well as 10 (fewer vector passes)
    memory_budget_mb: float = 1024.0  # torch: working memory for one chunk of groups
    # torch: "fast" (the default; see ``probekit.probes.engine``: loose validation-path fits, a per-class curvature
    # preconditioner, no weaker strengths after a perfect validation score) or "classic" (the solver before
    # issue 11: every fit at ``tol``; it made the tables committed before the switch)
    solver: str = "fast"
    path_tol: float = 1e-3  # fast: max |gradient| at which the validation-path fits stop (the refit uses ``tol``)
    curvature_every: int = 5  # fast: iterations between refreshes of the curvature preconditioner
    # fast: leave the path once a strength scores below the best so far on validation (exact when validation
    # accuracy is unimodal along the path: the weaker strengths then score below that best and are never chosen)
    path_stop: bool = True
    # torch: label sets share a bucket (one batch of tasks, classes padded to the bucket's largest count) only while
    # padding wastes at most this factor of matrix-multiply work; on a CPU every task pays for its own padded
    # products and a bucket's size buys nothing, so the default keeps buckets tight (it was 1.5: on the benchmark's
    # P sweep, 30% of the largest bucket's work was padding)
    bucket_waste: float = 1.05
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise UserError(f"unknown probe engine {self.backend!r}; valid engines are {list(BACKENDS)}")
        if self.backend in ("torch-fast", "torch-classic"):
            self.backend, self.solver = "torch", self.backend.removeprefix("torch-")
        self.l2_grid = tuple(float(v) for v in self.l2_grid)
        if not self.l2_grid or any(v <= 0 for v in self.l2_grid):
            raise UserError(f"l2_grid must be a non-empty list of positive numbers, got {list(self.l2_grid)}")
        if self.max_iter < 1:
            raise UserError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.l2_rule not in L2_RULES:
            raise UserError(f"unknown l2_rule {self.l2_rule!r}; valid rules are {list(L2_RULES)}")
        if self.solver not in SOLVERS:
            raise UserError(f"unknown probe solver {self.solver!r}; valid solvers are {list(SOLVERS)}")
        if not self.bucket_waste >= 1.0:
            raise UserError(f"bucket_waste must be >= 1 (1 = no padded classes), got {self.bucket_waste}")
        if not self.path_tol > 0 or self.curvature_every < 0:
            raise UserError(f"path_tol must be > 0 and curvature_every >= 0, got {self.path_tol}, "
                            f"{self.curvature_every}")  # fmt: skip


@dataclass
class EmbedProbeConfig:
    """Training settings of the embedding-update probe (``rank = 0``: the paper's rank for the probe kind)."""

    rank: int = 0  # rank of the embedding update (0: the paper's, 2 for P and 16 for Q probes)
    lr: float = 1e-3  # AdamW learning rate of the update and the heads
    weight_decay: float = 0.3  # AdamW weight decay
    epochs: int = 20  # most passes over the training people
    patience: int = 4  # stop after this many epochs in which no head (per_head) or the mean (mean) improved
    batch_size: int = 32  # sequences per optimiser step
    seed: int = 0  # seed of the initialisation and the batch order
    select: str = "per_head"  # per_head: each head at its own best validation epoch; mean: one epoch for all

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"embed probe {name} must be >= 1, got {getattr(self, name)}")
        if self.rank < 0:
            raise UserError(f"embed probe rank must be >= 0 (0 = the paper's), got {self.rank}")
        if self.select not in ("per_head", "mean"):
            raise UserError(f"embed probe select must be 'per_head' or 'mean', got {self.select!r}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise UserError(f"embed probe needs lr > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
