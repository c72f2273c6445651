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

Rows carry ``hook = "embed_update"`` and ``layer = L`` in the results table, so figures and comparisons keep them
apart from the frozen-feature probes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probekit.errors import UserError
from probekit.probes.activations import _is_hooked_lm, _Stop, hook_points, model_dims, padded_batch, run_causal
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.engine import ProbeFit, _base_fit, _map_labels
from probekit.probes.tasks import ProbeTaskSet

HOOK_NAME = "embed_update"
PAPER_RANK = {"p": 2, "q": 16}  # the paper's ranks per probe kind


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

    def forward(self, h: Tensor) -> Tensor:
        """h [B, P, d] -> logits [B, P, sum(sizes)]."""
        return torch.stack([lin(norm(h[:, p])) for p, (norm, lin) in enumerate(zip(self.norms, self.linears))], 1)


def _batches(rows: np.ndarray, size: int, rng: np.random.Generator | None) -> list[np.ndarray]:
    """``rows`` in batches of ``size``, shuffled by ``rng`` (kept in order without one)."""
    order = rng.permutation(rows) if rng is not None else rows
    return [order[s : s + size] for s in range(0, len(order), size)]


def probe_states(model: Any, delta: LowRankEmbedding, task: ProbeTaskSet, rows: np.ndarray, read: str) -> Tensor:
    """Hidden states [B, P, d] at hook ``read`` of the rows' sequences at their read positions, with ``delta``
    added to the input embedding (causal reading, right padding; differentiable in ``delta``)."""
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

    def forward(rows: np.ndarray) -> Tensor:
        """Logits [B, P, sum C] of the rows' sequences."""
        return heads(probe_states(model, delta, task, rows, read))

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
    def correctness(rows: np.ndarray) -> np.ndarray:
        """[P, K', len(rows)] bool: each head right on each row (unseen classes count as errors)."""
        out = np.zeros((P, len(live), len(rows)), dtype=bool)
        start = 0
        for b in _batches(rows, 4 * cfg.batch_size, None):
            logits = forward(b)
            y = Y[:, torch.as_tensor(b, device=device)]  # [K', B]
            for j in range(len(live)):
                pred = logits[..., heads.bounds[j] : heads.bounds[j + 1]].argmax(-1)  # [B, P]
                out[:, j, start : start + len(b)] = (pred == y[j][:, None]).T.cpu().numpy()
            start += len(b)
        return out

    def accuracies(rows: np.ndarray) -> np.ndarray:
        """[P, K'] accuracy on ``rows``."""
        return correctness(rows).mean(-1) if len(rows) else np.full((P, len(live)), np.nan)

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    fit_rows, val_rows = split.fit, split.val
    per_head = cfg.select == "per_head" and len(val_rows) > 0
    shape = (P, len(live))
    best = np.full(shape, -np.inf)  # per_head: each head's best validation accuracy so far
    chosen = np.zeros(shape, dtype=np.int64)  # epoch each head is read at
    test, train, val_acc = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    test_ok = np.zeros((*shape, len(split.test)), dtype=bool)  # [P, K', n_test] at each head's chosen epoch
    best_score, best_state, since = -math.inf, None, 0
    try:
        for epoch in range(1, cfg.epochs + 1):
            delta.train(), heads.train()
            total = 0.0
            for b in _batches(fit_rows, cfg.batch_size, rng):
                loss = losses(forward(b), b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
            delta.eval(), heads.eval()
            val = accuracies(val_rows) if len(val_rows) else None  # [P, K']
            score = float(val.mean()) if val is not None else -total  # without validation people: training loss
            log["epochs"].append({"epoch": epoch, "train_loss": total / len(fit_rows),
                                  "val_accuracy": score if val is not None else math.nan,
                                  "val_accuracy_heads": val.tolist() if val is not None else None})  # fmt: skip
            if progress:
                progress(1)
            if per_head:  # every head is read at its own best validation epoch (test rows never choose)
                better = val > best
                if better.any():
                    te_ok, tr = correctness(split.test), accuracies(split.train)
                    te = te_ok.mean(-1)
                    best[better], chosen[better] = val[better], epoch
                    test[better], train[better], val_acc[better] = te[better], tr[better], val[better]
                    test_ok[better] = te_ok[better]
                improved = bool(better.any())
            else:  # one epoch for all heads: the best mean validation accuracy
                improved = score > best_score
                if improved:
                    best_score, chosen[:] = score, epoch
                    best_state = [p.detach().clone() for p in params]
            since = 0 if improved else since + 1
            if since >= cfg.patience:
                break
        if not per_head:
            with torch.no_grad():
                for p, v in zip(params, best_state or []):
                    p.copy_(v)
            test_ok = correctness(split.test)
            test, train = test_ok.mean(-1), accuracies(split.train)
            if len(val_rows):
                val_acc = accuracies(val_rows)
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    log["chosen_epochs"] = chosen.tolist()  # [position][live label set]
    for p in range(P):
        for j, k in enumerate(live):
            f = fits[p * K + k]
            f.accuracy, f.train_accuracy, f.val_accuracy = float(test[p, j]), float(train[p, j]), float(val_acc[p, j])
            f.test_correct = test_ok[p, j]
    return fits, log
