"""Greedy decoding shared by the objectives: causal continuation here, GLM-style (ABI) span infilling in ``abi``.

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

``probekit.objectives.generate(model, objective, ...)`` picks the objective's own decoding (``Objective.generate``:
``greedy_generate`` for NTP and BICO, ``probekit.objectives.abi.abi_generate`` for ABI, which uses the helpers here).

Neither keeps a KV cache: every step re-runs the sequence, which is cheap for the short prompts and answers
of bioS QA (tens of tokens) and keeps the model code free of decoding state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from probekit.data.tokenizer import EOS_ID, PAD_ID
from probekit.errors import UserError


def check_prompts(prompts: Sequence[Sequence[int]], max_new_tokens: int, n_ctx: int | None, extra: int) -> None:
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


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def length_chunks(prompts: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
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
    extra_tokens: int = 0,
) -> list[list[int]]:
    """Greedy causal continuation of every prompt; returns the new tokens of each (the stop token excluded).

    Generation of a row ends at ``stop_id`` (None: never) or after ``max_new_tokens`` tokens. The result is the
    same as generating each prompt alone (right padding under causal attention is exact; see module doc).
    ``extra_tokens``: positions the objective needs beyond prompt and answer (``Objective.inference_extra_tokens``).
    """
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    check_prompts(prompts, max_new_tokens, n_ctx, extra=extra_tokens)
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    device = device_of(model)
    try:
        for chunk in length_chunks(prompts, batch_size):
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
