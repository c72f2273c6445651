"""Greedy decoding: causal continuation and GLM-style (ABI) span infilling, batched.

Both functions take prompts as token-id lists (the caller builds them, e.g. ``[EOS_ID] + ids(question)``) and
return only the generated tokens, without the stop token, so exact match is ``out == ids(answer)``.

How batching stays exact:

- ``greedy_generate`` right-pads. Under causal attention a token never sees later positions, so the pads
  after a shorter prompt cannot change its logits, and every row keeps positions ``0..len-1`` exactly as when
  run alone. Each row reads the logits at its own last token and writes its next token at its own length.
  Prompts are sorted by length and processed in chunks of ``batch_size`` so rows of a chunk are similar in
  length (little padding).
- ``abi_generate`` pads Part A (the prompt plus a trailing ``[MASK]``) on its right to a common length, hides
  the pads from attention with the key mask, and passes explicit positions (Part A tokens ``0..len-1``, Part B
  tokens their [MASK]'s position), so every row sees exactly what it would see alone; Part B then starts at the
  same column in every row and grows one column per step.

``generate(model, objective, ...)`` picks the objective's own decoding (``Objective.generate``: causal for NTP and
BICO, span infilling for ABI).

Neither keeps a KV cache: every step re-runs the sequence, which is cheap for the short prompts and answers
of bioS QA (tens of tokens) and keeps the model code free of decoding state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probekit.data.tokenizer import END_ID, EOS_ID, PAD_ID
from probekit.errors import UserError
from probekit.objectives import ABIObjective, NTPObjective, Objective, abi_generation_inputs, as_objective


def generate(
    model: torch.nn.Module,
    objective: Objective | str,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
    suffix: Sequence[int] = (),
) -> list[list[int]]:
    """Greedy answers to ``prompts`` (each ``[EOS] + ids``) the way ``objective`` (or its name) answers; ``suffix``:
    the tokens that followed the answer in training (an infilling objective keeps them after the blank)."""
    return as_objective(objective).generate(model, prompts, max_new_tokens, batch_size=batch_size, suffix=suffix)


def _check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, n_ctx: int | None, extra: int) -> None:
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; start every prompt with EOS_ID ({EOS_ID})")
        if n_ctx is not None and len(p) + extra + max_new_tokens > n_ctx:
            raise UserError(
                f"prompt {i} has {len(p)} tokens; with {max_new_tokens} new tokens it needs "
                f"{len(p) + extra + max_new_tokens} positions but the model's context is n_ctx={n_ctx}: "
                "shorten the prompt or lower max_new_tokens"
            )


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _chunks(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_id: int | None = EOS_ID,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy causal continuation of every prompt; returns the new tokens of each (the stop token excluded).

    Generation of a row ends at ``stop_id`` (None: never) or after ``max_new_tokens`` tokens. The result is the
    same as generating each prompt alone (right padding under causal attention is exact; see module doc).
    """
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    _check_prompts(prompts, max_new_tokens, n_ctx, extra=NTPObjective().inference_extra_tokens())
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        for chunk in _chunks(prompts, batch_size):
            outs = _greedy_chunk(model, [prompts[i] for i in chunk], max_new_tokens, stop_id, device)
            for i, out in zip(chunk, outs):
                results[i] = out
    finally:
        model.train(was_training)
    return results


def _greedy_chunk(
    model: torch.nn.Module, prompts: list[Sequence[int]], max_new: int, stop_id: int | None, device: torch.device
) -> list[list[int]]:
    B = len(prompts)
    plens = torch.tensor([len(p) for p in prompts], device=device)  # [B]
    buf = torch.full((B, int(plens.max()) + max_new), PAD_ID, dtype=torch.long, device=device)  # [B, L]
    for b, p in enumerate(prompts):
        buf[b, : len(p)] = torch.tensor(list(p), dtype=torch.long)
    lens = plens.clone()  # [B] current length of each row
    done = torch.zeros(B, dtype=torch.bool, device=device)  # [B]
    rows = torch.arange(B, device=device)
    for _ in range(max_new):
        T = int(lens.max())
        logits = model(buf[:, :T])  # [B, T, V]
        nxt = logits[rows, lens - 1].argmax(-1)  # [B]
        stop = torch.zeros_like(done) if stop_id is None else nxt == stop_id
        grow = ~done & ~stop  # [B] rows that take the token
        done |= stop
        buf[rows[grow], lens[grow]] = nxt[grow]
        lens = lens + grow.long()
        if bool(done.all()):
            break
    return [buf[b, plens[b] : lens[b]].tolist() for b in range(B)]


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
    from ``probekit.objectives.abi_generation_inputs`` (the layout ABI training uses); batched rows equal
    one-by-one generation (Part A pads are masked keys; explicit positions)."""
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    extra = ABIObjective().inference_extra_tokens(len(suffix))  # [MASK], suffix and [START]
    _check_prompts(prompts, max_new_tokens, n_ctx, extra=extra)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    device = _device(model)
    try:
        for chunk in _chunks(prompts, batch_size):
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
