"""Next-token prediction, plus the pieces every objective shares (padding, special ids, the loss).

Sequences are token-id lists that begin with ``EOS_ID`` (the start marker). A batch is padded on the right to
its longest sequence with ``PAD_ID``; pads get label -100 and ``key_mask`` False.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

import torch
from torch import Tensor

from probekit.batch import IGNORE_INDEX, ModelBatch
from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, PAD_ID, START_ID, UNK_ID
from probekit.model import HookedLM, logits_cross_entropy

SPECIAL_IDS: tuple[int, ...] = (PAD_ID, EOS_ID, UNK_ID, MASK_ID, START_ID, END_ID)
N_SPECIAL = len(SPECIAL_IDS)  # special ids are exactly 0..N_SPECIAL-1


class Objective(Protocol):
    name: str

    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch: ...

    def max_input_len(self, seq_len: int) -> int: ...


def check_sequences(sequences: Sequence[Sequence[int]]) -> None:
    if len(sequences) == 0:
        raise ValueError("build() needs at least one sequence")
    for i, s in enumerate(sequences):
        if len(s) == 0:
            raise ValueError(f"sequence {i} is empty; every sequence starts with EOS_ID={EOS_ID}")


def pad_right(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> Tensor:
    """[B, length] long tensor of ``rows`` padded on the right with ``value``."""
    length = max(len(r) for r in rows) if length is None else length
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    return out


def maskable(ids: Tensor) -> Tensor:
    """Bool mask of tokens an objective may corrupt: not position 0 and not a special token. ids [..., T]."""
    ok = ids >= N_SPECIAL
    ok[..., 0] = False
    return ok


def ntp_batch(sequences: Sequence[Sequence[int]]) -> ModelBatch:
    """Causal next-token batch: labels[t] = ids[t+1]; pads -100 and (if any) key_mask False."""
    check_sequences(sequences)
    ids = pad_right(sequences, PAD_ID)  # [B, T]
    lengths = torch.tensor([len(s) for s in sequences])
    real = torch.arange(ids.shape[1])[None] < lengths[:, None]  # [B, T]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(real[:, 1:], ids[:, 1:], IGNORE_INDEX)
    # Right padding never affects real positions under causal attention; a mask is only passed when there
    # are pads, so unpadded batches take SDPA's is_causal fast path.
    key_mask = None if bool(real.all()) else real
    return ModelBatch(input_ids=ids, labels=labels, attn_mode="causal", key_mask=key_mask)


@dataclass
class NTPObjective:
    """Next-token prediction with causal attention (no settings)."""

    name: str = "ntp"

    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        return ntp_batch(sequences)

    def max_input_len(self, seq_len: int) -> int:
        """Longest model input that ``build`` makes from sequences of at most ``seq_len`` tokens."""
        return seq_len

    def compute_loss(self, model: torch.nn.Module, batch: ModelBatch) -> Tensor:
        return compute_loss(model, batch)


def compute_loss(model: torch.nn.Module, batch: ModelBatch) -> Tensor:
    """Mean cross-entropy over labels != -100 (0.0, still differentiable, when a batch has none).

    A ``HookedLM`` (also inside DDP / peft wrappers) computes the loss in its own forward (``labels=``), which
    with ``ModelConfig.fast_path`` fuses the unembedding with the cross-entropy; other models return logits.
    """
    if isinstance(_base_model(model), HookedLM):
        return model(**batch.model_kwargs(), labels=batch.labels)
    return logits_cross_entropy(model(**batch.model_kwargs()), batch.labels)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP (``.module``), ``torch.compile`` (``._orig_mod``) and peft (``get_base_model()``)."""
    for _ in range(8):
        if hasattr(model, "get_base_model"):
            # peft's get_base_model; torch types unknown nn.Module attributes as Tensor | Module
            model = cast(torch.nn.Module, model.get_base_model())  # type: ignore[operator]
            continue
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model
