"""The one interface between objectives and the model: a ``ModelBatch``.

An objective (NTP, ABI, BICO) turns token sequences into a ``ModelBatch``; the model consumes its inputs and the
loss consumes its labels. Labels are already aligned with outputs: ``labels[b, t]`` is the token the output at
position ``t`` must predict (-100 = no loss), so NTP, ABI and BICO share one cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor

AttnMode = Literal["causal", "bico", "abi"]
IGNORE_INDEX = -100


@dataclass
class ModelBatch:
    input_ids: Tensor  # [B, T] long
    labels: Tensor  # [B, T] long; IGNORE_INDEX where no loss
    attn_mode: AttnMode = "causal"
    positions: Tensor | None = None  # [B, T] long: text position (rotary); None = arange(T)
    span_positions: Tensor | None = None  # [B, T] long: ABI position inside a span (0 in Part A); None = no table
    key_mask: Tensor | None = None  # [B, T] bool: True = may be attended to (False: padding, BICO placeholders)
    prefix_len: Tensor | None = None  # [B] long: ABI Part A length (Part A = positions < prefix_len)

    def to(self, device: torch.device | str) -> ModelBatch:
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v.to(device) if isinstance(v, Tensor) else v
        return ModelBatch(**kw)

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``model(**batch.model_kwargs())``."""
        return {
            "input_ids": self.input_ids,
            "attn_mode": self.attn_mode,
            "positions": self.positions,
            "span_positions": self.span_positions,
            "key_mask": self.key_mask,
            "prefix_len": self.prefix_len,
        }

    @property
    def n_loss_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())
