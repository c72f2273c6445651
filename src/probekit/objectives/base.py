"""The ``Objective`` base class: everything a training objective decides, in one object.

An objective says how to

* ``build`` a training batch from token sequences (and ``max_input_len``: how long those inputs get);
* ``answer_batch``: build a finetuning batch from items whose loss covers only the answer (``answer_item``);
* ``generate`` greedy answers to prompts (``[EOS] + prompt`` ids), returning the answer ids without the stop token;
* ``score_completion``: the summed log-probability of each completion given its prompt, the way it generates;
* ``inference_extra_tokens``: how many positions it needs beyond ``[EOS] + prompt + answer`` at inference.

The defaults here are the causal ones (NTP, and BICO, which answers causally): a subclass overrides what differs
(ABI: answer batches with the answer as the blank's span, span generation and scoring, two extra positions).
Training, generation and evaluation take an ``Objective``; names map to classes in
``probekit.objectives.REGISTRY``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from probekit.data.tokenizer import EOS_ID, PAD_ID
from probekit.model.batch import ModelBatch, TrainItem, answer_item, apply_loss_mask
from probekit.model.transformer import compute_loss
from probekit.objectives.generate import greedy_generate


class Objective(ABC):
    """Base class of training objectives (subclasses are dataclasses whose fields are the objective's settings)."""

    name: ClassVar[str]  # the registry name, e.g. "ntp"; also the objective recorded in configs and results
    answer_loss_on_eos: ClassVar[bool] = True  # finetuning items also train the EOS after the answer (the stop)
    infilling: ClassVar[bool] = False  # answers as a blank's span after the prompt, not as its continuation

    @abstractmethod
    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        """The training batch for ``sequences`` (token-id lists starting with ``EOS_ID``)."""

    def max_input_len(self, seq_len: int) -> int:
        """Longest model input that ``build`` makes from sequences of at most ``seq_len`` tokens."""
        return seq_len

    def compute_loss(self, model: torch.nn.Module, batch: ModelBatch) -> Tensor:
        return compute_loss(model, batch)

    # ---------------------------------------------------------------------------------------------- answers

    def inference_extra_tokens(self, suffix_len: int = 0) -> int:
        """Positions needed at inference beyond ``[EOS] + prompt + answer``: none for a causal objective.

        ``suffix_len``: tokens that followed the answer in the finetuning items (an infilling objective keeps them
        after the blank; a causal one never sees them at inference).
        """
        return 0

    def answer_input_len(self, seq_len: int) -> int:
        """Longest model input made from sequences (``build``) or answer items (``answer_batch``) of ``seq_len``."""
        return max(self.max_input_len(seq_len), seq_len + self.inference_extra_tokens(0))

    def answer_item(self, prompt: Sequence[int], answer: Sequence[int]) -> TrainItem:
        """A finetuning item ``[EOS] + prompt + answer + [EOS]`` with the loss on the answer (and its stop)."""
        return answer_item(prompt, answer, loss_on_eos=self.answer_loss_on_eos)

    def answer_batch(self, items: Sequence[TrainItem], generator: torch.Generator) -> ModelBatch:
        """A training batch of items whose ``loss_mask`` marks the target tokens (the loss covers only those)."""
        return apply_loss_mask(self.build([it.ids for it in items], generator), items)

    @torch.no_grad()
    def generate(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int = 64,
        suffix: Sequence[int] = (),
    ) -> list[list[int]]:
        """Greedy answers to ``prompts`` (each ``[EOS] + ids``), without the stop token; ``suffix`` is unused."""
        return greedy_generate(model, prompts, max_new_tokens, batch_size=batch_size,
                               extra_tokens=self.inference_extra_tokens())  # fmt: skip

    @torch.no_grad()
    def score_completion(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        batch_size: int = 64,
        suffix: Sequence[int] = (),
    ) -> list[float]:
        """Summed log-probability of each completion after ``[EOS] + prompt`` (ids without specials), causally.

        Inputs are checked by ``probekit.evaluate.scoring.completion_logprobs``, which also puts the model in
        eval mode; ``suffix`` is unused.
        """
        device = next(model.parameters()).device
        out = [0.0] * len(prompts)
        for i in range(0, len(prompts), batch_size):
            idx = list(range(i, min(i + batch_size, len(prompts))))
            kwargs, targets, mask = causal_inputs([prompts[k] for k in idx], [completions[k] for k in idx])
            logits = model(**{k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}).float()
            for k, v in zip(idx, summed_logprobs(logits, targets.to(device), mask.to(device))):
                out[k] = v
        return out


def summed_logprobs(logits: Tensor, targets: Tensor, mask: Tensor) -> list[float]:
    """Per row, the summed log-probability of ``targets`` [B, T] under ``logits`` [B, T, V] where ``mask``."""
    lp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]  # [B, T]
    return (lp * mask).sum(1).tolist()


def _pad(rows: list[list[int]], value: int) -> Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (T - len(r)) for r in rows], dtype=torch.long)  # [B, T]


def causal_inputs(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
) -> tuple[dict, Tensor, Tensor]:
    """Forward kwargs, target ids [B, T] and target mask [B, T] for causal scoring.

    Row b is ``[EOS] + prompt + completion`` right-padded; target[b, t] is the token the output at t predicts, and
    the mask is True exactly on the outputs that predict completion tokens.
    """
    rows, targets, masks = [], [], []
    for p, c in zip(prompts, completions):
        seq = [EOS_ID, *map(int, p), *map(int, c)]
        rows.append(seq)
        targets.append(seq[1:] + [PAD_ID])
        start = len(p)  # output index predicting the first completion token
        masks.append([start <= t < start + len(c) for t in range(len(seq))])
    T = max(len(r) for r in rows)
    mask = torch.tensor([m + [False] * (T - len(m)) for m in masks])  # [B, T] bool
    return {"input_ids": _pad(rows, PAD_ID), "attn_mode": "causal"}, _pad(targets, PAD_ID), mask
