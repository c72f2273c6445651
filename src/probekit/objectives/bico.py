"""BICO: bidirectional causal optimisation (Lv et al., arXiv 2311.07468).

With probability ``bico_prob`` a whole batch is a BICO batch, otherwise an ordinary NTP batch; the coin is
drawn from the generator, so a seeded run makes the same choices. A BICO batch:

* replaces ``mask_ratio`` of each sequence's maskable tokens (never position 0, never a special token) by the
  placeholder ``UNK_ID`` (an existing vocabulary token: no new embedding);
* labels: the output at position i predicts the original token at i+1 when input i+1 was replaced, else -100;
* ``key_mask`` is False at placeholders (and pads): they are never attended to, though they still act as queries;
* ``attn_mode="bico"``: bidirectional attention with sin-flipped rotary above the diagonal (see
``probekit.model.transformer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from probekit.data.tokenizer import PAD_ID, UNK_ID
from probekit.errors import UserError
from probekit.model.batch import IGNORE_INDEX, ModelBatch, check_sequences, lengths_mask, maskable, pad_right
from probekit.objectives.base import Objective
from probekit.objectives.ntp import ntp_batch

PLACEHOLDER_ID = UNK_ID


@dataclass
class BICOObjective(Objective):
    """Trains bidirectionally but answers causally: generation and scoring are the base class's (causal)."""

    bico_prob: float = 0.5  # probability that a batch is a BICO batch (else NTP)
    mask_ratio: float = 0.15  # share of maskable tokens replaced by the placeholder
    name: ClassVar[str] = "bico"

    def __post_init__(self) -> None:
        if not 0.0 <= self.bico_prob <= 1.0:
            raise UserError(f"bico_prob must be in [0, 1], got {self.bico_prob}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise UserError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")

    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        check_sequences(sequences)
        if float(torch.rand((), generator=generator)) >= self.bico_prob:
            return ntp_batch(sequences)
        return self.build_bico(sequences, generator)

    def build_bico(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        """Always a BICO batch (no coin)."""
        check_sequences(sequences)
        original = pad_right(sequences, PAD_ID)  # [B, T]
        B, T = original.shape
        real = lengths_mask([len(s) for s in sequences], T)  # [B, T]
        candidates = maskable(original) & real
        masked = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            idx = candidates[b].nonzero().squeeze(1)  # [n]
            k = round(self.mask_ratio * len(idx))
            if k > 0:
                chosen = idx[torch.randperm(len(idx), generator=generator)[:k]]
                masked[b, chosen] = True
        ids = torch.where(masked, PLACEHOLDER_ID, original)  # [B, T]
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[:, :-1] = torch.where(masked[:, 1:], original[:, 1:], IGNORE_INDEX)
        key_mask = real & ~masked
        return ModelBatch(input_ids=ids, labels=labels, attn_mode="bico", key_mask=key_mask)
