"""The training stage's settings, in a module without torch, so that configs (and ``probekit train --help``,
``probekit eval --help``) can be read without importing the trainer.

``TrainConfig``: everything a pretraining run depends on (``probekit.training.trainer.train``).
``FinetuneConfig``: how a model is finetuned before evaluation (``probekit.training.finetune``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from probekit.errors import UserError, check_seed
from probekit.model.config import ModelConfig
from probekit.serde import Section, from_dict, init_sections, section

TRAIN_CONFIG_FILE = "train_config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# fields that may change when resuming (they do not affect the weights)
RESUMABLE_CHANGES = frozenset({"out", "log_every", "eval_every", "save_every", "keep_checkpoints"})
PATH_FIELDS = frozenset({"data", "init_from"})  # compared as resolved paths when resuming
PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run depends on (YAML/JSON via ``probekit.serde``).

    Budget: set exactly one of ``max_steps``, ``epochs`` (passes over the packed windows / items) or ``tokens``.
    ``model`` holds ModelConfig fields (``vocab_size`` comes from the tokenizer; ``n_ctx`` defaults to the longest
    input the objective makes from ``seq_len`` tokens, or from the source's longest item if that is longer;
    ``seed`` to this config's seed); with ``init_from`` the model comes from that checkpoint and ``model`` may only
    repeat its values.
    """

    data: str = ""  # dataset directory (probekit data bios); may be empty when the caller passes a source
    out: str = ""  # run directory: train_config.json, metrics.jsonl, summary.json, checkpoints/
    objective: str = "ntp"  # a name in probekit.objectives.REGISTRY: ntp | abi | bico
    objective_settings: dict[str, Any] = field(default_factory=dict)  # e.g. {mask_ratio: 0.15}
    # ModelConfig fields, e.g. {d_model: 128, n_layers: 4}; those left out: ModelConfig's defaults, vocab_size
    # from the tokenizer, n_ctx from seq_len, seed from this config (with init_from: the checkpoint's)
    model: Section[ModelConfig] = section(ModelConfig)
    init_from: str | None = None  # checkpoint (or run) directory to start from, for finetuning
    seq_len: int = 256  # packed window length (tokens)
    batch_size: int = 32  # global batch (windows or items per optimiser step)
    max_steps: int | None = None  # budget: optimiser steps (set exactly one of max_steps, epochs, tokens)
    epochs: float | None = None  # budget: passes over the packed windows (or items)
    tokens: int | None = None  # budget: training tokens
    lr: float = 1e-3  # peak learning rate (after the linear warmup; cosine decay to min_lr)
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # steps of linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW weight decay of the linear layers (not embeddings or norms)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    grad_clip: float = 1.0  # gradient-norm clipping (0 = no clipping)
    qa_mix: float = 0.0  # mixed training: share of each epoch's tokens that are P_train QA sequences
    eval_every: int = 0  # steps between evaluations (0: only at the end)
    eval_windows: int = 16  # size of the fixed evaluation set (windows or items); 0 = no evaluation
    eval_holdout: bool = False  # withhold the eval windows' entries from training (default: memorisation loss)
    save_every: int = 0  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept (0 = all)
    log_every: int = 10  # steps between metrics rows
    seed: int = 0  # seed of the model's initialisation, the data order and the objective's sampling
    precision: str = "no"  # accelerate mixed precision: no | bf16 | fp16

    def __post_init__(self) -> None:
        init_sections(self)  # a plain mapping given for `model` becomes a checked Section[ModelConfig]
        # YAML reads "1e-3" (no dot) as a string: accept numbers written that way
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, str) and f.type in ("float", "float | None", "int | None", "int"):
                try:
                    num = float(v)
                except ValueError:
                    raise UserError(f"TrainConfig.{f.name} must be a number, got {v!r}") from None
                setattr(self, f.name, int(num) if "int" in f.type and num.is_integer() else num)

    def validate(self) -> None:
        """Raise ``ValueError`` naming every problem with the settings (cheap checks, no files read)."""
        errs: list[str] = []
        budgets = [n for n in ("max_steps", "epochs", "tokens") if getattr(self, n) is not None]
        if len(budgets) != 1:
            errs.append(f"set exactly one budget of max_steps, epochs, tokens (got {budgets or 'none'})")
        for name in budgets:
            if not getattr(self, name) > 0:
                errs.append(f"{name} must be positive, got {getattr(self, name)}")
        if not self.out:
            errs.append("out (the run directory) is empty")
        try:
            check_seed(self.seed)
        except UserError as e:
            errs.append(str(e))
        for name in ("seq_len", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errs.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.seq_len < 2:
            errs.append(f"seq_len must be >= 2, got {self.seq_len}")
        if not self.lr > 0:
            errs.append(f"lr must be positive, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            errs.append(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        for name in ("warmup_steps", "eval_every", "eval_windows", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                errs.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps > 0 and self.warmup_steps > self.max_steps:
            errs.append(f"warmup_steps {self.warmup_steps} exceeds max_steps {self.max_steps} (the learning rate "
                        f"would never reach lr); set warmup_steps to at most {self.max_steps}")  # fmt: skip
        if self.log_every < 1:
            errs.append(f"log_every must be >= 1, got {self.log_every}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            errs.append("weight_decay and grad_clip must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errs.append(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.qa_mix < 1:
            errs.append(f"qa_mix must be in [0, 1), got {self.qa_mix}")
        if self.precision not in PRECISIONS:
            errs.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        bad = sorted(set(self.model) - {f.name for f in fields(ModelConfig)})
        if bad:
            valid = sorted(f.name for f in fields(ModelConfig))
            errs.append(f"model: unknown ModelConfig field(s) {bad}; valid: {valid}")
        elif self.model:  # the shape checks (heads dividing d_model, ...) before any data is read or written
            try:
                from_dict(ModelConfig, {"vocab_size": 8, "n_ctx": 8, **self.model})
            except (ValueError, TypeError) as e:
                errs.append(f"model: {e}")
        if errs:
            raise UserError("invalid training config: " + "; ".join(errs))


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Fields whose values differ (ignoring ``RESUMABLE_CHANGES``), as ``name: old -> new``."""
    out = []
    for k in sorted(set(old) | set(new)):
        if k in RESUMABLE_CHANGES:
            continue
        a, b = old.get(k), new.get(k)
        if (
            k in PATH_FIELDS
            and a
            and b
            and isinstance(a, str)
            and isinstance(b, str)
            and Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
        ):
            continue  # the same directory written relative and absolute
        if json.loads(json.dumps(a)) != json.loads(json.dumps(b)):  # tuples vs lists compare equal
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """A copy of ``cfg`` with ``data``, ``out`` and ``init_from`` made absolute, so the run's recorded config (and
    a resume) means the same directories from any working directory."""
    changes: dict[str, Any] = {k: str(Path(v).expanduser().resolve()) for k in ("data", "out", "init_from")
               if isinstance(v := getattr(cfg, k), str) and v}  # fmt: skip
    return dataclasses.replace(cfg, **changes) if changes else cfg


FINETUNE_METHODS: tuple[str, ...] = ("full", "lora", "none")


@dataclass
class FinetuneConfig:
    """How to finetune before evaluating (defaults: 20 epochs over the P_train items)."""

    method: str = "full"  # full: every weight; lora: peft adapters on lora_targets; none: evaluate as is
    lora_rank: int = 8  # LoRA: rank of the adapters
    lora_alpha: float = 16.0  # LoRA: scaling alpha of the adapters
    lora_dropout: float = 0.0  # LoRA: dropout on the adapters' input
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # LoRA: the linear layers that get adapters
    embed_rank: int = 0  # LoRA rank of the input-embedding update (paper: 128); 0 = embedding frozen
    objective: str | None = None  # finetuning objective (a registry name); None = the checkpoint's own
    epochs: float | None = 20.0  # passes over the P_train items
    max_steps: int | None = None  # optimiser steps; overrides epochs when set
    batch_size: int = 32  # items per optimiser step
    lr: float | None = None  # learning rate; None: 3e-4 for full, 1e-3 for LoRA
    warmup_steps: int = 10  # steps of linear learning-rate warmup
    weight_decay: float = 0.0  # AdamW weight decay
    merge: bool = True  # LoRA: merge the adapter into the weights (the checkpoint is then a plain model)
    save_adapter: bool = False  # LoRA: also write the adapter (peft format) to <out>/adapter
    seed: int = 0  # seed of the finetuning (LoRA initialisation, item order)

    def __post_init__(self) -> None:
        if self.method not in FINETUNE_METHODS:
            raise UserError(f"finetune method {self.method!r}: choose one of {FINETUNE_METHODS}")
        if self.objective is not None:
            from probekit.objectives import REGISTRY, objective_names  # torch: only when an objective is named

            if self.objective not in REGISTRY:
                raise UserError(f"finetune objective {self.objective!r}: choose one of {objective_names()}")
        if self.lora_rank < 1 or self.embed_rank < 0:
            raise UserError("lora_rank must be >= 1 and embed_rank >= 0")
        if self.epochs is None and self.max_steps is None:
            raise UserError("set epochs or max_steps for finetuning")
        if not self.lora_targets:
            raise UserError("lora_targets is empty; e.g. ('q_proj', 'v_proj')")
        check_seed(self.seed, "finetune seed")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 3e-4)
