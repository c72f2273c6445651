"""Next-token prediction: causal attention, every token predicts the next.

Sequences are token-id lists that begin with ``EOS_ID`` (the start marker). A batch is padded on the right to
its longest sequence with ``PAD_ID``; pads get label -100 and ``key_mask`` False. The pieces every objective
shares (padding, masks, special ids, the loss) live in ``probekit.model.batch`` and are re-exported here for old
imports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from probekit.data.tokenizer import PAD_ID
from probekit.model.batch import (
    IGNORE_INDEX,
    ModelBatch,
    check_sequences,
    lengths_mask,
    pad_right,
)
from probekit.objectives.base import Objective


def ntp_batch(sequences: Sequence[Sequence[int]]) -> ModelBatch:
    """Causal next-token batch: labels[t] = ids[t+1]; pads -100 and (if any) key_mask False."""
    check_sequences(sequences)
    ids = pad_right(sequences, PAD_ID)  # [B, T]
    real = lengths_mask([len(s) for s in sequences], ids.shape[1])  # [B, T]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(real[:, 1:], ids[:, 1:], IGNORE_INDEX)
    # Right padding never affects real positions under causal attention; a mask is only passed when there
    # are pads, so unpadded batches take SDPA's is_causal fast path.
    key_mask = None if bool(real.all()) else real
    return ModelBatch(input_ids=ids, labels=labels, attn_mode="causal", key_mask=key_mask)


@dataclass
class NTPObjective(Objective):
    """Next-token prediction with causal attention (no settings)."""

    name: ClassVar[str] = "ntp"

    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        return ntp_batch(sequences)
