"""The paper's probe: a frozen model plus a trainable low-rank update of its input embedding, read at the last layer.

The frozen-feature engine (``probekit.probes.engine``) fits a linear map on cached activations. Allen-Zhu & Li's
probes do more (Allen-Zhu & Li, Physics of LMs 3.1): the model's weights stay frozen, but the probe trains

* a rank-r update of the input embedding, ``E + A B`` (A ``[vocab, r]``, B ``[r, d]``; the paper's r is 2 for
  P-probing and 16 for Q-probing), so the input can be nudged, and
* per read position a LayerNorm and one linear head per label set on the last layer's residual stream
  (``blocks.{L-1}.hook_resid_post``),

with gradients flowing through the whole frozen model. One update and one set of heads serve every position,
attribute and target of a task set at once (one forward and backward pass per batch; the paper's per-task
variant costs positions x attributes x targets times more). B starts at zero, so training starts from the
unchanged model. AdamW (weight decay 0.3, the paper's) on the people of P_train outside the validation subset.
Which epoch a head is read at is chosen on the validation people only (``select``): ``per_head`` (the default)
reads every head at its own best validation epoch, so the heads that share the update do not trade accuracy with
each other; ``mean`` reads all heads at the epoch of the best mean validation accuracy. Training stops after
``patience`` epochs without an improvement. Test people never choose anything: their accuracy is recorded at the
epochs validation picks. The model is read causally (as every probekit probe; see ``probekit.probes.activations``) and
its parameters' ``requires_grad`` flags are restored afterwards.

What it costs, and what is not recomputed: every step is a forward and backward pass through the frozen model,
since the update sits at its input, so nothing downstream of it can be cached. On a ``HookedLM`` a pass
(``_update_states``) computes only what reaches the read positions: it stops after the last one read (the
causal reading), runs the first block's norm and q/k/v projections once per distinct token (its input depends on
the token alone) and the last block at the read positions only. Rows go through the model in groups of similar
length (few padded tokens). Only the validation people are scored every epoch: the probe's parameters are kept
at each epoch some head is read at, and the test and training people are scored once per distinct chosen epoch
at the end, up to the last position read at that epoch (the same rule, far fewer passes). Other models (a
``TransformerBridge``) go through the hooks (``probe_states``). Side by side with the probe as it was before:
``benchmarks/bench_embed_probe.py``.

Rows carry ``hook = "embed_update"`` and ``layer = L`` in the results table, so figures and comparisons keep them
apart from the frozen-feature probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probekit.data.tokenizer import PAD_ID
from probekit.errors import UserError
from probekit.model.batch import pad_right
from probekit.model.transformer import Block, HookedLM, apply_rotary, rotary_cos_sin
from probekit.probes.activations import _is_hooked_lm, _Stop, hook_points, model_dims, padded_batch, run_causal
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.engine import ProbeFit, _base_fit, _map_labels
from probekit.probes.tasks import ProbeTaskSet

HOOK_NAME = "embed_update"
PAPER_RANK = {"p": 2, "q": 16}  # the paper's ranks per probe kind
# tokens per pass through a HookedLM (rows of similar length, padded to the longest): small enough that a pass's
# activations stay in cache, large enough for efficient matrix products. 4 x 128 model, P-probe rows of ~60
# tokens: 16 rows per training pass and 32 per scoring pass were the fastest (by about 1.1x over 8 to 128)
TRAIN_TOKENS, SCORE_TOKENS = 1024, 2048


class LowRankEmbedding(nn.Module):
    """``delta(ids) = A[ids] @ B``: the rank-r update ``A B`` of a ``[vocab, d]`` embedding, looked up per token."""

    def __init__(self, vocab: int, d: int, rank: int) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.randn(vocab, rank) / math.sqrt(rank))  # [V, r]
        self.B = nn.Parameter(torch.zeros(rank, d))  # [r, d]: zero, so the probe starts from the unchanged model

    def forward(self, ids: Tensor) -> Tensor:
        return self.A[ids] @ self.B  # [B, T] -> [B, T, d]


class Heads(nn.Module):
    """Per read position: a LayerNorm and one linear map onto every label set's classes (concatenated)."""

    def __init__(self, d: int, n_positions: int, sizes: list[int]) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_positions))
        self.linears = nn.ModuleList(nn.Linear(d, sum(sizes)) for _ in range(n_positions))
        self.bounds = np.concatenate([[0], np.cumsum(sizes)]).tolist()  # label set k: logits[bounds[k]:bounds[k+1]]

    def forward(self, h: Tensor, cols: Sequence[int] | None = None) -> Tensor:
        """h [B, P', d] at the positions ``cols`` (default: all P) -> logits [B, P', sum(sizes)]."""
        cols = range(len(self.norms)) if cols is None else cols
        return torch.stack([self.linears[p](self.norms[p](h[:, i])) for i, p in enumerate(cols)], 1)


def _batches(rows: np.ndarray, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """``rows`` in batches of ``size``, shuffled by ``rng`` (kept in order without one)."""
    order = rng.permutation(rows) if rng is not None else rows
    return [order[s : s + size] for s in range(0, len(order), size)]


def _length_groups(lengths: np.ndarray, budget: int) -> list[list[int]]:
    """Indices into ``lengths`` [B] (tokens each row needs) in groups of similar length, shortest first, each as
    many rows as fit ``budget`` tokens when padded to its longest (at least one row)."""
    groups: list[list[int]] = []
    for i in np.argsort(lengths, kind="stable").tolist():
        if groups and (len(groups[-1]) + 1) * lengths[i] <= budget:
            groups[-1].append(i)  # sorted: row i is the group's longest
        else:
            groups.append([i])
    return groups


def probe_states(model: Any, delta: LowRankEmbedding, task: ProbeTaskSet, rows: np.ndarray, read: str) -> Tensor:
    """Hidden states [B, P, d] at hook ``read`` of the rows' sequences at their read positions, with ``delta``
    added to the input embedding (causal reading, right padding; differentiable in ``delta``). Any hooked model;
    ``_update_states`` computes the last layer's states of a ``HookedLM`` with less work."""
    device = next(model.parameters()).device
    ids, key_mask = padded_batch(task.sequences, rows, device)  # [B, T] each
    pos = torch.as_tensor(task.positions[rows], device=device)  # [B, P]
    got: dict[str, Tensor] = {}

    def add_delta(act: Tensor, hook: Any) -> Tensor:
        return act + delta(ids)  # [B, T, d]

    def gather(act: Tensor, hook: Any) -> None:
        got["h"] = act[torch.arange(len(rows), device=device)[:, None], pos]  # [B, P, d]
        if _is_hooked_lm(model):
            raise _Stop  # nothing after the read point is needed

    run_causal(model, ids, key_mask, [("hook_embed", add_delta), (read, gather)])
    return got["h"]


def _update_states(
    model: HookedLM, delta: LowRankEmbedding, task: ProbeTaskSet, rows: np.ndarray, cols: Sequence[int]
) -> Tensor:
    """``probe_states`` at the last layer's output of a ``HookedLM`` (causal reading) at the read positions
    ``cols`` only ([B, P', d]), computing only what reaches them:

    * the sequences are cut after the batch's last such position (a causal state never sees a later token);
    * no key mask: right padding sits after every real token, so causal attention keeps it from every read
      position (and SDPA's causal kernel skips the masked blocks);
    * the first block's input (embedding + update) depends on the token alone, so its norm and q/k/v projections
      run once per distinct token of the batch (``_first_block``);
    * the last block runs its queries, MLP and residual stream at the read positions only (``_last_block_at``).

    Equal to ``probe_states`` up to float32 rounding (tested)."""
    device = model.device
    pos = torch.as_tensor(task.positions[rows][:, cols], device=device)  # [B, P']
    T = int(pos.max()) + 1
    ids = pad_right([task.sequences[r][:T] for r in rows], PAD_ID).to(device)  # [B, T]
    tokens, inverse = torch.unique(ids, return_inverse=True)  # [U] distinct tokens; [B, T] index of each
    x = model.embed(tokens) + delta(tokens)  # [U, d]: what hook_embed passes on, update added
    if model.span_embed is not None:  # an ABI model read causally: every token Part A (span position 0)
        x = x + model.span_embed.weight[0]
    cfg = model.cfg
    cos, sin = rotary_cos_sin(torch.arange(T, device=device)[None], cfg.d_head, cfg.rope_theta)  # [1, 1, T, dh]
    *body, last = (cast(Block, b) for b in model.blocks)
    if body:
        x = _first_block(body[0], x, inverse, cos, sin)  # [B, T, d]
        for block in body[1:]:
            x = block(x, cos, sin, None, "causal")  # [B, T, d]
    else:  # a one-block model: its block is the last
        x = x[inverse]  # [B, T, d]
    return _last_block_at(last, x, cos, sin, pos)


def _first_block(block: Block, x: Tensor, inverse: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The first block's output [B, T, d] (causal attention, as ``Block.forward``) for its input given per distinct
    token, x [U, d], and ``inverse`` [B, T] (each position's row of x): the norm and the q/k/v projections run once
    per distinct token (a batch of P-probe rows has about a third as many distinct tokens as positions)."""
    attn = block.attn
    (B, T), H, dh = inverse.shape, attn.n_heads, attn.d_head
    h = block.ln1(x)  # [U, d]
    q, k, v = (proj(h)[inverse].view(B, T, H, dh).transpose(1, 2)
               for proj in (attn.q_proj, attn.k_proj, attn.v_proj))  # fmt: skip  # [B, H, T, dh] each
    q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    z = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True, scale=1.0 / math.sqrt(dh))  # [B, H, T, dh]
    resid_mid = x[inverse] + attn.o_proj(z.transpose(1, 2).reshape(B, T, H * dh))  # [B, T, d]
    return resid_mid + block.mlp(block.ln2(resid_mid))  # [B, T, d]


def _last_block_at(block: Block, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor) -> Tensor:
    """``block``'s output [B, P, d] at the positions ``pos`` [B, P] only, for its input x [B, T, d] (causal
    attention, as ``Block.forward``; ``cos``, ``sin`` [1, 1, T, dh]): keys and values from every token, queries,
    attention output, MLP and residual stream at ``pos``."""
    attn = block.attn
    B, T, _ = x.shape
    P, H, dh = pos.shape[1], attn.n_heads, attn.d_head
    at = (torch.arange(B, device=x.device)[:, None], pos)  # indexes [B, T, ...] -> [B, P, ...]
    h = block.ln1(x)  # [B, T, d]
    q = attn.q_proj(h[at]).view(B, P, H, dh).transpose(1, 2)  # [B, H, P, dh]
    k = attn.k_proj(h).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
    v = attn.v_proj(h).view(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
    q_rot = apply_rotary(q, cos[0, 0][pos][:, None], sin[0, 0][pos][:, None])  # angles [B, 1, P, dh]
    k_rot = apply_rotary(k, cos, sin)  # [B, H, T, dh]
    causal = (torch.arange(T, device=x.device) <= pos[..., None])[:, None]  # [B, 1, P, T]: keys up to each query
    z = F.scaled_dot_product_attention(q_rot, k_rot, v, attn_mask=causal, scale=1.0 / math.sqrt(dh))  # [B, H, P, dh]
    resid_mid = x[at] + attn.o_proj(z.transpose(1, 2).reshape(B, P, H * dh))  # [B, P, d]
    return resid_mid + block.mlp(block.ln2(resid_mid))  # [B, P, d]


def train_embed_probe(
    model: Any,
    task: ProbeTaskSet,
    cfg: EmbedProbeConfig | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[list[ProbeFit], dict[str, Any]]:
    """Train the embedding-update probe on ``task`` (all its positions x label sets at once).

    Returns one ``ProbeFit`` per (position, label set), in that order (``group`` = position index), and a log:
    the rank used, the chosen epoch and per-epoch losses and validation accuracies. ``progress(1)`` after every
    epoch."""
    cfg = cfg or EmbedProbeConfig()
    if "hook_embed" not in model.hook_dict:
        raise UserError("the embedding-update probe needs a model with a 'hook_embed' hook (a probekit HookedLM)")
    dims = model_dims(model)
    rank = cfg.rank or PAPER_RANK[task.kind]
    read = hook_points(dims.n_layers, ["resid"], [dims.n_layers])[0].name  # the last layer's output
    split = task.split
    labs = [_map_labels(task.labels[k], split.train) for k in range(len(task.label_keys))]
    P, K = len(task.position_names), len(labs)
    fits = [_base_fit(p, k, labs[k], split) for p in range(P) for k in range(K)]
    live = [k for k in range(K) if fits[k].status == "ok"]
    log: dict[str, Any] = {"rank": rank, "select": cfg.select, "epochs": [], "chosen_epochs": []}
    if not live:
        return fits, log
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        delta = LowRankEmbedding(dims.vocab_size, dims.d_model, rank).to(device)
        heads = Heads(dims.d_model, P, [len(labs[k].classes) for k in live]).to(device)
    Y = torch.as_tensor(np.stack([labs[k].y for k in live]), device=device)  # [K', N]; -1: unseen in training
    params = list(delta.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    model.requires_grad_(False)

    fast = _is_hooked_lm(model)  # the cut-down pass (_update_states); other models go through the hooks
    every = list(range(P))

    def forward(rows: np.ndarray, budget: int, cols: list[int] = every) -> Tensor:
        """Logits [B, P', sum C] of the rows' sequences at the read positions ``cols``. A ``HookedLM`` runs on
        groups of rows of similar length (``budget`` tokens per pass), so that few padded tokens are computed."""
        if not fast:
            return heads(probe_states(model, delta, task, rows, read)[:, cols], cols)  # states [B, P', d]
        groups = _length_groups(task.positions[rows][:, cols].max(1) + 1, budget)  # tokens each row needs
        h = torch.cat([_update_states(model, delta, task, rows[g], cols) for g in groups])  # [B, P', d] grouped
        back = np.argsort(np.concatenate(groups))  # each row's place in the grouped order
        return heads(h[torch.as_tensor(back, device=device)], cols)

    def losses(logits: Tensor, rows: np.ndarray) -> Tensor:
        """Mean cross-entropy over positions x label sets (rows whose class is unseen in training are ignored)."""
        y = Y[:, torch.as_tensor(rows, device=device)]  # [K', B]
        out = []
        for j in range(len(live)):
            lo, hi = heads.bounds[j], heads.bounds[j + 1]
            target = y[j][:, None].expand(-1, P)  # [B, P]
            out.append(nn.functional.cross_entropy(logits[..., lo:hi].transpose(1, 2), target, ignore_index=-1))
        return torch.stack(out).mean()

    @torch.no_grad()
    def correctness(rows: np.ndarray, cols: list[int] = every) -> np.ndarray:
        """[P, K', len(rows)] bool: each head at the positions ``cols`` right on each row (unseen classes count as
        errors; other positions' heads are not scored: False)."""
        out = np.zeros((P, len(live), len(rows)), dtype=bool)
        order = np.argsort(task.positions[rows][:, cols].max(1), kind="stable")  # similar lengths together
        for idx in _batches(order, 4 * cfg.batch_size, None):
            logits = forward(rows[idx], SCORE_TOKENS, cols)  # [B, P', sum C]
            y = Y[:, torch.as_tensor(rows[idx], device=device)]  # [K', B]
            ok = [(logits[..., heads.bounds[j] : heads.bounds[j + 1]].argmax(-1) == y[j][:, None]).T  # [P', B]
                  for j in range(len(live))]  # fmt: skip
            out[np.ix_(np.asarray(cols), np.arange(len(live)), idx)] = torch.stack(ok, 1).cpu().numpy()  # [P', K', B]
        return out

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    fit_rows, val_rows = split.fit, split.val
    per_head = cfg.select == "per_head" and len(val_rows) > 0
    shape = (P, len(live))
    best = np.full(shape, -np.inf)  # per_head: each head's best validation accuracy so far
    chosen = np.zeros(shape, dtype=np.int64)  # epoch each head is read at
    # the probe's parameters and validation correctness [P, K', n_val] at the epochs some head is read at
    states: dict[int, list[Tensor]] = {}
    val_ok_at: dict[int, np.ndarray] = {}
    best_score, since = -math.inf, 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            delta.train(), heads.train()
            total = 0.0
            for b in _batches(fit_rows, cfg.batch_size, rng):
                loss = losses(forward(b, TRAIN_TOKENS), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            delta.eval(), heads.eval()
            val_ok = correctness(val_rows) if len(val_rows) else None  # [P, K', n_val]
            val = val_ok.mean(-1) if val_ok is not None else None  # [P, K']
            score = float(val.mean()) if val is not None else -total  # without validation people: training loss
            log["epochs"].append({"epoch": epoch, "train_loss": total / len(fit_rows),
                                  "val_accuracy": score if val is not None else math.nan,
                                  "val_accuracy_heads": val.tolist() if val is not None else None})  # fmt: skip
            if progress:
                progress(1)
            if per_head and val is not None:  # every head at its own best validation epoch (test rows never choose)
                better = val > best
                best[better], chosen[better] = val[better], epoch
                improved = bool(better.any())
            else:  # one epoch for all heads: the best mean validation accuracy (training loss without validation)
                improved = score > best_score
                if improved:
                    best_score, chosen[:] = score, epoch
            if improved:  # keep this epoch's probe to score test and training people at the end
                states[epoch] = [p.detach().clone() for p in params]
                if val_ok is not None:
                    val_ok_at[epoch] = val_ok
                kept = set(chosen.flat)  # an epoch no head is read at any more is dropped
                states = {e: v for e, v in states.items() if e in kept}
                val_ok_at = {e: v for e, v in val_ok_at.items() if e in kept}
            since = 0 if improved else since + 1
            if since >= cfg.patience:
                break
        # test and training people scored once per distinct chosen epoch, with the probe as it was then
        test, train, val_acc = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        test_ok = np.zeros((*shape, len(split.test)), dtype=bool)  # [P, K', n_test] at each head's chosen epoch
        for epoch in np.unique(chosen).tolist():
            if epoch in states:  # (absent only if no epoch ever improved, e.g. a NaN loss: the last one)
                with torch.no_grad():
                    for p, v in zip(params, states[epoch]):
                        p.copy_(v)
            at = chosen == epoch  # [P, K'] heads read at this epoch
            cols = np.flatnonzero(at.any(1)).tolist()  # their positions: a causal pass stops after the last one
            te_ok = correctness(split.test, cols)  # [P, K', n_test]
            v_ok = val_ok_at[epoch] if epoch in val_ok_at else correctness(val_rows)  # [P, K', n_val]
            tr_ok = np.concatenate([correctness(fit_rows, cols), v_ok], -1)  # [P, K', n_train]: fit + validation
            test_ok[at], test[at], train[at] = te_ok[at], te_ok.mean(-1)[at], tr_ok.mean(-1)[at]
            if len(val_rows):
                val_acc[at] = v_ok.mean(-1)[at]
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    log["chosen_epochs"] = chosen.tolist()  # [position][live label set]
    for pos in range(P):
        for j, k in enumerate(live):
            f = fits[pos * K + k]
            f.accuracy, f.train_accuracy, f.val_accuracy = (float(test[pos, j]), float(train[pos, j]),
                                                            float(val_acc[pos, j]))  # fmt: skip
            f.test_correct = test_ok[pos, j]
    return fits, log
