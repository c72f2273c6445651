"""``FinetuneConfig``: how a model is finetuned before evaluation, in a module without torch, so that configs (and
the CLI's ``eval --help``) can be read without importing the trainer. ``probekit.finetune`` re-exports it."""

from __future__ import annotations

from dataclasses import dataclass

from probekit.errors import UserError

METHODS: tuple[str, ...] = ("full", "lora", "none")


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
        if self.method not in METHODS:
            raise UserError(f"finetune method {self.method!r}: choose one of {METHODS}")
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

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (1e-3 if self.method == "lora" else 3e-4)
