"""The one interface between objectives and the model: a ``ModelBatch``, plus the pieces every objective shares.

An objective (NTP, ABI, BICO) turns token sequences into a ``ModelBatch``; the model consumes its inputs and the
loss consumes its labels. Labels are already aligned with outputs: ``labels[b, t]`` is the token the output at
position ``t`` must predict (-100 = no loss), so NTP, ABI and BICO share one
cross-entropy (``probekit.model.transformer.compute_loss``).

Shared pieces (used by objectives, probing and scoring alike, so none of them imports a training objective):
``SPECIAL_IDS``/``check_special_ids``, ``pad_right``, ``lengths_mask``, ``maskable``, ``check_sequences`` and
``AttnMode`` (the model's attention modes) is defined here, once; ``probekit.model.transformer`` imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

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


@dataclass
class TrainItem:
    """One training sequence. ``loss_mask[i]`` True = token i is a prediction target (None: every token)."""

    ids: list[int]
    loss_mask: list[bool] | None = None

    def __post_init__(self) -> None:
        if len(self.ids) == 0:
            raise ValueError(f"empty training sequence; every sequence starts with EOS_ID={EOS_ID}")
        if self.loss_mask is not None and len(self.loss_mask) != len(self.ids):
            raise ValueError(f"loss_mask has {len(self.loss_mask)} entries for {len(self.ids)} tokens")


ItemLike = TrainItem | Sequence[int] | tuple[Sequence[int], Sequence[bool] | None]


def as_item(x: ItemLike) -> TrainItem:
    """A ``TrainItem`` from a TrainItem, a token list, or an ``(ids, loss_mask)`` pair."""
    if isinstance(x, TrainItem):
        return x
    if isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], int):
        ids, mask = x
        return TrainItem([int(t) for t in ids], None if mask is None else [bool(m) for m in mask])
    return TrainItem([int(t) for t in x])


def answer_item(prompt_ids: Sequence[int], answer_ids: Sequence[int], loss_on_eos: bool = True) -> TrainItem:
    """A QA item ``[EOS_ID] + prompt + answer + [EOS_ID]`` whose loss covers only the answer (and, with
    ``loss_on_eos``, the closing EOS_ID, so greedy decoding learns to stop after the answer). ``prompt_ids`` must
    not include the leading EOS_ID. For ABI models use ``loss_on_eos=False``: the answer becomes the blank span,
    ended by [END]."""
    ids = [EOS_ID, *prompt_ids, *answer_ids, EOS_ID]
    n_p, n_a = 1 + len(prompt_ids), len(answer_ids)
    mask = [False] * n_p + [True] * n_a + [loss_on_eos]
    return TrainItem(ids, mask)


def apply_loss_mask(batch: ModelBatch, items: Sequence[TrainItem]) -> ModelBatch:
    """Restrict the loss of a causal/BICO batch to the tokens each item marks as targets.

    In those batches ``labels[b, t]`` is (a copy of) token ``t + 1`` of the sequence, so the label is kept only
    where ``loss_mask[t + 1]`` is True. (ABI batches are built from masks directly: ``ABIObjective.answer_batch``.)
    """
    if all(it.loss_mask is None for it in items):
        return batch
    if batch.attn_mode == "abi":
        raise ValueError("apply_loss_mask: ABI batches are built with ABIObjective.answer_batch")
    B, T = batch.labels.shape
    keep = torch.zeros(B, T, dtype=torch.bool)
    for b, it in enumerate(items):
        m = it.loss_mask if it.loss_mask is not None else [True] * len(it.ids)
        n = min(len(m) - 1, T)
        keep[b, :n] = torch.tensor(m[1 : n + 1], dtype=torch.bool)
    batch.labels = torch.where(keep, batch.labels, IGNORE_INDEX)
    return batch
