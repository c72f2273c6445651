"""GLM autoregressive blank infilling (Du et al., GLM).

Per sequence: span lengths are drawn from Poisson(``span_lambda``) (a draw of 0 counts as 1) until
``mask_ratio`` of the maskable tokens (never position 0, never a special token) are covered; the last length is
cut so the total is exactly ``round(mask_ratio * n_maskable)``. Spans are placed uniformly at random, never
overlapping or touching (at least one kept token between two spans, so every blank is its own [MASK]); a span
with no room left is shortened.

Model input = Part A + Part B:

* Part A: the text with each span replaced by one ``MASK_ID``; no loss.
* Part B: the spans in shuffled order, each fed as ``START_ID`` + span tokens and trained to predict span tokens
  + ``END_ID``.
* ``positions``: Part A tokens their index in Part A; Part B tokens their [MASK]'s Part A index.
* ``span_positions``: 0 in Part A; 1 (START), 2, ..., len+1 inside a Part B span.
* ``prefix_len`` = len(Part A); ``attn_mode="abi"`` (Part A bidirectional, Part B causal over A + earlier B).

An input is longer than its sequence by two tokens per span: ``max_input_len(n)`` bounds it.

At inference (finetuning, generation, scoring) the answer is the blank: Part A = ``[EOS] + prompt + [MASK] +
suffix``, Part B = ``[START] + answer`` trained to end with ``[END]`` (``answer_batch``, ``abi_generation_inputs``,
``generate``, ``score_completion``), two positions more than the causal layout plus the suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, cast

import torch

from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, PAD_ID, START_ID
from probekit.errors import UserError
from probekit.model.batch import IGNORE_INDEX, ModelBatch, TrainItem, check_sequences, lengths_mask, maskable, pad_right
from probekit.objectives.base import Objective, summed_logprobs
from probekit.objectives.generate import check_prompts, device_of, length_chunks


@dataclass
class ABIObjective(Objective):
    mask_ratio: float = 0.15  # share of maskable tokens covered by spans
    span_lambda: float = 3.0  # Poisson mean of span lengths
    name: ClassVar[str] = "abi"
    answer_loss_on_eos: ClassVar[bool] = False  # the answer span is trained to end with [END] instead
    infilling: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 0.5:
            raise UserError(
                f"mask_ratio must be in (0, 0.5) so spans fit with gaps between them, got {self.mask_ratio}"
            )
        if self.span_lambda <= 0:
            raise UserError(f"span_lambda must be positive, got {self.span_lambda}")

    def max_input_len(self, seq_len: int) -> int:
        """Longest model input ``build`` makes from sequences of at most ``seq_len`` tokens (2 extra per span)."""
        return seq_len + 2 * round(self.mask_ratio * max(seq_len - 1, 0))

    def sample_spans(self, ids: Sequence[int], generator: torch.Generator) -> list[tuple[int, int]]:
        """Non-overlapping, non-adjacent spans ``[start, end)`` of maskable tokens, sorted by start."""
        ok = maskable(torch.as_tensor(list(ids), dtype=torch.long))  # [T]
        target = round(self.mask_ratio * int(ok.sum()))
        if target == 0:
            return []
        draws = torch.poisson(torch.full((target,), self.span_lambda), generator=generator).long().clamp(min=1)
        lengths: list[int] = []
        total = 0
        for d in draws.tolist():
            lengths.append(min(d, target - total))
            total += lengths[-1]
            if total >= target:
                break
        free = ok.clone()
        spans: list[tuple[int, int]] = []
        for length in lengths:
            while length > 0:
                c = torch.cat((torch.zeros(1, dtype=torch.long), free.long().cumsum(0)))  # [T+1]
                starts = ((c[length:] - c[:-length]) == length).nonzero().squeeze(1)  # all-free windows
                if len(starts):
                    s = int(starts[torch.randint(len(starts), (), generator=generator)])
                    spans.append((s, s + length))
                    free[max(s - 1, 0) : s + length + 1] = False  # keep a gap to the next span
                    break
                length -= 1
        return sorted(spans)

    def build(self, sequences: Sequence[Sequence[int]], generator: torch.Generator) -> ModelBatch:
        check_sequences(sequences)
        rows = [self._build_row(list(s), generator) for s in sequences]
        ids = pad_right([r[0] for r in rows], PAD_ID)  # [B, T]
        labels = pad_right([r[1] for r in rows], IGNORE_INDEX)  # [B, T]
        positions = pad_right([r[2] for r in rows], 0)  # [B, T]
        span_positions = pad_right([r[3] for r in rows], 0)  # [B, T]
        prefix_len = torch.tensor([r[4] for r in rows], dtype=torch.long)  # [B]
        key_mask = lengths_mask([len(r[0]) for r in rows], ids.shape[1])  # [B, T]
        return ModelBatch(
            input_ids=ids,
            labels=labels,
            attn_mode="abi",
            positions=positions,
            span_positions=span_positions,
            key_mask=key_mask,
            prefix_len=prefix_len,
        )

    def _build_row(
        self, ids: list[int], generator: torch.Generator
    ) -> tuple[list[int], list[int], list[int], list[int], int]:
        spans = self.sample_spans(ids, generator)
        part_a: list[int] = []
        mask_at: list[int] = []  # Part A index of each span's [MASK]
        prev = 0
        for s, e in spans:
            part_a += ids[prev:s]
            mask_at.append(len(part_a))
            part_a.append(MASK_ID)
            prev = e
        part_a += ids[prev:]
        inputs, labels = list(part_a), [IGNORE_INDEX] * len(part_a)
        positions, span_pos = list(range(len(part_a))), [0] * len(part_a)
        for j in torch.randperm(len(spans), generator=generator).tolist():
            s, e = spans[j]
            toks = ids[s:e]
            inputs += [START_ID] + toks
            labels += toks + [END_ID]
            positions += [mask_at[j]] * (len(toks) + 1)
            span_pos += list(range(1, len(toks) + 2))
        return inputs, labels, positions, span_pos, len(part_a)

    # ---------------------------------------------------------------------------------------------- answers

    def inference_extra_tokens(self, suffix_len: int = 0) -> int:
        """[MASK], the suffix and [START] (Part B's [END] is a generated token, like a causal model's EOS)."""
        return 2 + suffix_len

    def answer_batch(self, items: Sequence[TrainItem], generator: torch.Generator) -> ModelBatch:
        """ABI batch in which each item's loss-masked tokens (one contiguous run) form the single blank.

        Part A = the tokens before the run + [MASK] + the tokens after it; Part B = [START] + run, trained to
        predict run + [END] (exactly what ``generate`` decodes at inference). No random choices: ``generator`` is
        unused.
        """
        rows: list[tuple[list[int], list[int], list[int], list[int], int]] = []
        for i, it in enumerate(items):
            m = it.loss_mask
            where = [t for t, v in enumerate(m or []) if v]
            if m is None or not where or where != list(range(where[0], where[-1] + 1)) or where[0] == 0:
                raise ValueError(
                    f"item {i}: ABI training needs a loss mask marking one contiguous run of tokens (the answer) "
                    "after the first token; build QA items with answer_item(..., loss_on_eos=False)"
                )
            s, e = where[0], where[-1] + 1
            part_a = it.ids[:s] + [MASK_ID] + it.ids[e:]
            span = it.ids[s:e]
            ids = part_a + [START_ID] + span
            labels = [IGNORE_INDEX] * len(part_a) + span + [END_ID]
            pos = list(range(len(part_a))) + [s] * (len(span) + 1)
            span_pos = [0] * len(part_a) + list(range(1, len(span) + 2))
            rows.append((ids, labels, pos, span_pos, len(part_a)))
        ids_t = pad_right([r[0] for r in rows], PAD_ID)  # [B, T]
        return ModelBatch(
            input_ids=ids_t,
            labels=pad_right([r[1] for r in rows], IGNORE_INDEX),
            attn_mode="abi",
            positions=pad_right([r[2] for r in rows], 0),
            span_positions=pad_right([r[3] for r in rows], 0),
            key_mask=lengths_mask([len(r[0]) for r in rows], ids_t.shape[1]),
            prefix_len=torch.tensor([r[4] for r in rows], dtype=torch.long),
        )

    @torch.no_grad()
    def generate(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        batch_size: int = 64,
        suffix: Sequence[int] = (),
    ) -> list[list[int]]:
        """The answer to each prompt as the Part B span of a [MASK] after it (Part A = prompt + [MASK] + suffix)."""
        return abi_generate(model, prompts, max_new_tokens, batch_size=batch_size, suffix=suffix)

    @torch.no_grad()
    def score_completion(
        self,
        model: torch.nn.Module,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        batch_size: int = 64,
        suffix: Sequence[int] = (),
    ) -> list[float]:
        """Log-probability of each completion as the Part B span after Part A = ``[EOS] + prompt + [MASK] +
        suffix`` (the layout of ``generate``). Rows of one batch need equal completion lengths: grouped by length."""
        device = next(model.parameters()).device
        out = [0.0] * len(prompts)
        groups: dict[int, list[int]] = {}
        for k, c in enumerate(completions):
            groups.setdefault(len(c), []).append(k)
        for idx in (g[i : i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)):
            n, span = len(completions[idx[0]]), [list(map(int, completions[k])) for k in idx]
            part_a = [[EOS_ID, *map(int, prompts[k])] for k in idx]
            batch = abi_generation_inputs(part_a, span, suffix).to(device)
            logits = model(**batch.model_kwargs())[:, -n - 1 : -1].float()  # [B, n, V]: [START] + span[:-1]
            targets = torch.tensor(span, device=device)  # [B, n]
            for k, v in zip(idx, summed_logprobs(logits, targets, torch.ones_like(targets, dtype=torch.bool))):
                out[k] = v
        return out


def reconstruct(batch: ModelBatch, row: int) -> list[int]:
    """The original sequence of ``row`` of an ABI batch: each [MASK] filled with its Part B span."""
    assert batch.positions is not None and batch.prefix_len is not None and batch.span_positions is not None
    n_real = int(batch.key_mask[row].sum()) if batch.key_mask is not None else batch.input_ids.shape[1]
    ids = batch.input_ids[row, :n_real].tolist()
    pos = batch.positions[row, :n_real].tolist()
    span_pos = batch.span_positions[row, :n_real].tolist()
    a = int(batch.prefix_len[row])
    fill: dict[int, list[int]] = {}
    for t in range(a, n_real):
        if span_pos[t] >= 2:  # a span token (span position 1 is START)
            fill.setdefault(pos[t], []).append(ids[t])
    out: list[int] = []
    for i, tok in enumerate(ids[:a]):
        out += fill.pop(i) if tok == MASK_ID and i in fill else [tok]
    return out


def abi_generation_inputs(
    prompts: Sequence[int] | Sequence[Sequence[int]],
    generated: Sequence[Sequence[int]] | None = None,
    suffix: Sequence[int] = (),
) -> ModelBatch:
    """ABI model inputs for generating an answer as a Part B span after ``prompts``.

    Part A = prompt + [MASK] + ``suffix`` (e.g. ``[EOS_ID]`` if training sequences ended with EOS after the
    answer), padded to the longest Part A in the batch (pads are masked keys, so rows of different lengths batch
    together); Part B = [START] + the tokens generated so far (``generated[b]``, all of equal length). Part B
    carries the [MASK]'s position and span positions 1, 2, .... Read the next token from ``logits[:, -1]``; stop
    at ``END_ID``. ``prompts`` is one prompt (list of ids) or a list of prompts; labels are all -100.
    """
    if len(prompts) > 0 and isinstance(prompts[0], int):
        rows = [list(cast(Sequence[int], prompts))]
    else:
        rows = [list(p) for p in cast(Sequence[Sequence[int]], prompts)]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("abi_generation_inputs needs non-empty prompts (each starting with EOS_ID)")
    gen = [list(g) for g in generated] if generated is not None else [[] for _ in rows]
    if len(gen) != len(rows) or len({len(g) for g in gen}) > 1:
        raise ValueError("generated must hold one list per prompt, all of the same length")
    mask_at = [len(r) for r in rows]
    part_a = [r + [MASK_ID] + list(suffix) for r in rows]
    a = max(len(p) for p in part_a)
    n_b = 1 + len(gen[0])
    ids = torch.cat((pad_right(part_a, PAD_ID, a), torch.tensor([[START_ID] + g for g in gen])), dim=1)  # [B, T]
    B, T = ids.shape
    positions = torch.cat(
        (torch.arange(a).expand(B, a), torch.tensor(mask_at)[:, None].expand(B, n_b)), dim=1
    )  # [B, T]
    span_positions = torch.cat((torch.zeros(B, a, dtype=torch.long), torch.arange(1, n_b + 1).expand(B, n_b)), 1)
    key_mask = torch.ones(B, T, dtype=torch.bool)
    for b, p in enumerate(part_a):
        key_mask[b, len(p) : a] = False
    return ModelBatch(
        input_ids=ids,
        labels=torch.full_like(ids, IGNORE_INDEX),
        attn_mode="abi",
        positions=positions.contiguous(),
        span_positions=span_positions,
        key_mask=key_mask,
        prefix_len=torch.full((B,), a, dtype=torch.long),
    )


@torch.no_grad()
def abi_generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_id: int | None = END_ID,
    batch_size: int = 64,
    suffix: Sequence[int] = (),
) -> list[list[int]]:
    """GLM-style greedy infilling: each prompt is Part A with a trailing [MASK] (then ``suffix``, e.g. ``[EOS_ID]``
    when training items ended with EOS after the blank); the answer is generated as its Part B span after [START],
    until ``stop_id`` ([END]) or ``max_new_tokens``. Returns the span tokens (without [START]/[END]). Inputs come
    from ``abi_generation_inputs`` (the layout ABI training uses); batched rows equal
    one-by-one generation (Part A pads are masked keys; explicit positions)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    extra = ABIObjective().inference_extra_tokens(len(suffix))  # [MASK], suffix and [START]
    check_prompts(prompts, max_new_tokens, n_ctx, extra=extra)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    device = device_of(model)
    try:
        for chunk in length_chunks(prompts, batch_size):
            sub = [prompts[i] for i in chunk]
            gen: list[list[int]] = [[] for _ in chunk]
            done = torch.zeros(len(chunk), dtype=torch.bool)
            for _ in range(max_new_tokens):
                batch = abi_generation_inputs(sub, gen, suffix).to(device)
                logits = model(**batch.model_kwargs())  # [B, T, V]
                nxt = logits[:, -1].argmax(-1).cpu()  # [B]
                done |= (nxt == stop_id) if stop_id is not None else torch.zeros_like(done)
                for b in range(len(chunk)):
                    gen[b].append(int(nxt[b]))
                if bool(done.all()):
                    break
            for i, g in zip(chunk, gen):
                results[i] = g[: g.index(stop_id)] if stop_id is not None and stop_id in g else g
    finally:
        model.train(was_training)
    return results
