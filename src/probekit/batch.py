"""The one interface between objectives and the model: a ``ModelBatch``, plus the pieces every objective shares.

An objective (NTP, ABI, BICO) turns token sequences into a ``ModelBatch``; the model consumes its inputs and the
loss consumes its labels. Labels are already aligned with outputs: ``labels[b, t]`` is the token the output at
position ``t`` must predict (-100 = no loss), so NTP, ABI and BICO share one cross-entropy (``compute_loss``).

Shared pieces (used by objectives, probing and scoring alike, so none of them imports a training objective):
``SPECIAL_IDS``/``check_special_ids``, ``pad_right``, ``lengths_mask``, ``maskable``, ``check_sequences`` and
``compute_loss``. ``AttnMode`` (the model's attention modes) is defined here, once; ``probekit.model`` imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, cast

import torch
from torch import Tensor

from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, PAD_ID, START_ID, UNK_ID
from probekit.errors import UserError

AttnMode = Literal["causal", "bico", "abi"]
ATTN_MODES: tuple[str, ...] = ("causal", "bico", "abi")
IGNORE_INDEX = -100
SPECIAL_IDS: tuple[int, ...] = (PAD_ID, EOS_ID, UNK_ID, MASK_ID, START_ID, END_ID)
N_SPECIAL = len(SPECIAL_IDS)  # special ids are exactly 0..N_SPECIAL-1
_SPECIAL_NAMES = ("<pad>", "<|endoftext|>", "<unk>", "[MASK]", "[START]", "[END]")

__all__ = [
    "ATTN_MODES",
    "IGNORE_INDEX",
    "N_SPECIAL",
    "SPECIAL_IDS",
    "AttnMode",
    "ModelBatch",
    "check_sequences",
    "check_special_ids",
    "compute_loss",
    "lengths_mask",
    "maskable",
    "pad_right",
]


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


# ---------------------------------------------------------------------------------------------------------------
# Shared by every objective


def check_special_ids(tokenizer: Any) -> None:
    """Raise ``ValueError`` if the tokenizer's special tokens are not at probekit's fixed ids."""
    for expected, tok in zip(SPECIAL_IDS, _SPECIAL_NAMES):
        got = tokenizer.get(tok) if isinstance(tokenizer, Mapping) else tokenizer.convert_tokens_to_ids(tok)
        if got != expected:
            raise UserError(
                f"tokenizer has {tok!r} at id {got}, but the objectives need it at {expected}; "
                "build the tokenizer with probekit.data.tokenizer.build_tokenizer"
            )


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


def lengths_mask(lengths: Sequence[int] | Tensor, length: int) -> Tensor:
    """[B, length] bool: True at the first ``lengths[b]`` positions of row b (the real, unpadded tokens)."""
    return torch.arange(length)[None] < torch.as_tensor(lengths)[:, None]


def maskable(ids: Tensor) -> Tensor:
    """Bool mask of tokens an objective may corrupt: not position 0 and not a special token. ids [..., T]."""
    ok = ids >= N_SPECIAL
    ok[..., 0] = False
    return ok


def compute_loss(model: torch.nn.Module, batch: ModelBatch) -> Tensor:
    """Mean cross-entropy over labels != -100 (0.0, still differentiable, when a batch has none).

    A ``HookedLM`` (also inside DDP / peft wrappers) computes the loss in its own forward (``labels=``), which
    with ``ModelConfig.fast_path`` fuses the unembedding with the cross-entropy; other models return logits.
    """
    from probekit.model import HookedLM, logits_cross_entropy  # the model imports this module

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
