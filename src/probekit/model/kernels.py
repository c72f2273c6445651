"""Fused CPU training kernels for ``HookedLM`` (``ModelConfig.fast_path``), each a ``torch.autograd.Function``.

Every function here computes the same mathematical function as the plain PyTorch code it replaces in
``probekit.model.transformer`` / ``probekit.objectives`` (the "reference path"); only the order of float32 operations
differs,
so results agree to float32 rounding (tests: ``tests/test_fast_path.py``, tolerance stated there and in the README).
What they save is memory traffic and allocations, which dominate the non-matmul time of a small model on a CPU:

* ``linear_cross_entropy``: unembedding + mean cross-entropy in row chunks whose logits stay in cache; the
  gradients with respect to the hidden states and the unembedding are computed in the forward pass (the loss is
  the graph's output, so they are needed anyway), the full ``[N, vocab]`` logits and their log-softmax are never
  stored, and only labelled rows are unembedded at all (ABI and BICO label ~15% of the positions).
* ``rms_norm``: RMSNorm with a hand-written backward (no saved intermediate beyond ``1/rms``).
* ``bico_attention``: BICO's two-score-matrix attention (normal rotary on and below the diagonal, sin-flipped
  above it) in blocks of (batch x head) slices whose score matrices stay in cache, the mask as an additive bias
  folded into the score products, one saved pattern, and the softmax backward's row correction computed from
  the output (``rowsum(dO * O)``) instead of the pattern.

Tried and dropped (slower or no faster on this CPU, ``benchmarks/bench_train.py`` and micro-benchmarks): a
materialised-score path for causal attention with 32-wide heads (1.1-1.6x slower than the flash kernel of
``scaled_dot_product_attention``, also in cache-sized blocks), fused q/k/v and gate/up projections (the matrix
products of this model already run at the large-``mm`` rate, and the split views made the elementwise work 5x
slower), and hand-written SwiGLU and rotary functions (no faster than PyTorch's own kernels).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# rows of logits per chunk in linear_cross_entropy: 1,048 rows (8 MiB of float32 logits) at a 2,000-word
# vocabulary; larger chunks keep the three matrix products efficient (measured: 131 rows 15% slower)
CE_CHUNK_ELEMENTS = 1 << 21


# ---------------------------------------------------------------------------------------------------------------
# unembedding + cross-entropy


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, labels: Tensor, chunk: int, need_grad: bool) -> Tensor:
        n = h.shape[0]
        total = torch.zeros((), dtype=torch.float64)
        gh = torch.empty_like(h) if need_grad else None
        gw = torch.zeros_like(w) if need_grad else None
        wt = w.t()
        for s in range(0, n, chunk):
            hc, yc = h[s : s + chunk], labels[s : s + chunk]
            z = hc @ wt  # [c, V] logits
            zmax = z.amax(-1)  # [c]
            zy = z.gather(1, yc[:, None]).squeeze(1)  # [c]
            p = torch.softmax(z, -1)  # [c, V]
            # log-sum-exp from the softmax: p at the argmax is exp(zmax - lse) >= 1/V, so its log is exact enough
            lse = zmax - p.amax(-1).log()
            total += (lse - zy).sum(dtype=torch.float64)
            if need_grad:
                p[torch.arange(len(yc), device=p.device), yc] -= 1.0  # dloss_row / dz = softmax - onehot
                torch.mm(p, w, out=gh[s : s + chunk])  # type: ignore[index]
                gw.addmm_(p.t(), hc)  # type: ignore[union-attr]
        if need_grad:
            ctx.save_for_backward(gh, gw)
        ctx.n = n
        return (total / max(n, 1)).to(torch.float32)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gh, gw = ctx.saved_tensors
        scale = grad / ctx.n
        return gh * scale.to(gh.dtype), gw * scale.to(gw.dtype), None, None, None


def linear_cross_entropy(h: Tensor, weight: Tensor, labels: Tensor, chunk: int | None = None) -> Tensor:
    """Mean over rows of ``cross_entropy(h @ weight.T, labels)``; h [N, d], weight [V, d], labels [N] (all valid).

    Equal to ``F.cross_entropy((h @ weight.T).float(), labels)`` for float32 inputs up to rounding (the sum over
    rows is accumulated in float64). Gradients flow to ``h`` and ``weight``.
    """
    if h.dim() != 2 or weight.dim() != 2 or labels.shape != h.shape[:1]:
        raise ValueError("linear_cross_entropy expects h [N, d], weight [V, d], labels [N]")
    chunk = chunk or max(16, CE_CHUNK_ELEMENTS // weight.shape[0])
    need_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    return _LinearCrossEntropy.apply(h, weight, labels, chunk, need_grad)


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, eps: float) -> Tensor:
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True).add_(eps))  # [.., 1]
        ctx.save_for_backward(x, w, r)
        return x * r * w

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, w, r = ctx.saved_tensors
        xhat = x * r
        gw = (g * xhat).flatten(0, -2).sum(0) if ctx.needs_input_grad[1] else None
        gxh = g * w  # d loss / d xhat
        # d xhat / d x = r (I - xhat xhat^T / d)
        dot = (gxh * xhat).mean(-1, keepdim=True)
        gx = gxh.sub_(xhat.mul_(dot)).mul_(r)
        return gx, gw, None


def rms_norm(x: Tensor, w: Tensor, eps: float) -> Tensor:
    """``w * x / sqrt(mean(x^2) + eps)`` over the last dimension (float32 input)."""
    return _RMSNorm.apply(x, w, eps)


# ---------------------------------------------------------------------------------------------------------------
# BICO attention

# (batch x head) slices per block of BICO attention: ~1 MiB of float32 scores per block, so a block's score,
# pattern and gradient matrices stay in cache between the operations that touch them
ATTN_BLOCK_ELEMENTS = 1 << 18


class _BicoAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q_rot: Tensor, k_rot: Tensor, q_flip: Tensor, k_flip: Tensor, v: Tensor, bias: Tensor,
                scale: float) -> Tensor:  # fmt: skip
        B, H, T, dh = q_rot.shape
        nb = max(1, ATTN_BLOCK_ELEMENTS // (H * T * T))  # batch rows per block
        G = nb * H  # (batch x head) slices per block
        qr, qf = (q_rot * scale).reshape(B * H, T, dh), (q_flip * scale).reshape(B * H, T, dh)
        kr, kf, vv = k_rot.reshape(B * H, T, dh), k_flip.reshape(B * H, T, dh), v.reshape(B * H, T, dh)
        upper = torch.ones(T, T, dtype=torch.bool, device=q_rot.device).triu_(1)
        o = torch.empty_like(vv)
        patterns = []
        for s in range(0, B * H, G):
            e = min(s + G, B * H)
            b0, b1 = s // H, e // H
            # [1, T, T] broadcasts over the block; a per-row bias is repeated for the heads (block-sized copy)
            bb = bias[0] if bias.shape[0] == 1 else bias[b0:b1].expand(b1 - b0, H, T, T).reshape(e - s, T, T)
            sc = torch.baddbmm(bb, qr[s:e], kr[s:e].transpose(1, 2))  # [G, T, T]
            sf = torch.baddbmm(bb, qf[s:e], kf[s:e].transpose(1, 2))
            torch.where(upper, sf, sc, out=sc)
            del sf
            p = torch.softmax(sc, dim=-1)
            del sc
            torch.bmm(p, vv[s:e], out=o[s:e])
            patterns.append(p)
        ctx.save_for_backward(qr, kr, qf, kf, vv, o, upper, *patterns)
        ctx.G, ctx.scale, ctx.shape = G, scale, (B, H, T, dh)
        return o.view(B, H, T, dh)

    @staticmethod
    def backward(ctx: Any, do: Tensor) -> tuple[Tensor | None, ...]:
        qr, kr, qf, kf, vv, o, upper, *patterns = ctx.saved_tensors
        G = ctx.G
        do = do.reshape(o.shape)
        dsum = (do * o).sum(-1, keepdim=True)  # = rowsum(dP * P): the softmax backward's correction, per query
        grads = [torch.empty_like(t) for t in (qr, kr, qf, kf, vv)]
        dqr, dkr, dqf, dkf, dv = grads
        for i, s in enumerate(range(0, o.shape[0], G)):
            e = min(s + G, o.shape[0])
            p, dos = patterns[i], do[s:e]
            torch.bmm(p.transpose(1, 2), dos, out=dv[s:e])
            ds = torch.bmm(dos, vv[s:e].transpose(1, 2)).sub_(dsum[s:e]).mul_(p)  # dscores [G, T, T]
            ds_flip = ds.masked_fill(~upper, 0.0)
            ds.masked_fill_(upper, 0.0)
            torch.bmm(ds, kr[s:e], out=dqr[s:e])
            torch.bmm(ds.transpose(1, 2), qr[s:e], out=dkr[s:e])
            torch.bmm(ds_flip, kf[s:e], out=dqf[s:e])
            torch.bmm(ds_flip.transpose(1, 2), qf[s:e], out=dkf[s:e])
        dqr.mul_(ctx.scale)
        dqf.mul_(ctx.scale)
        shape = ctx.shape
        return dqr.view(shape), dkr.view(shape), dqf.view(shape), dkf.view(shape), dv.view(shape), None, None


def attention_bias(mask: Tensor) -> Tensor:
    """Additive float32 bias (0 where ``mask`` allows, -inf elsewhere) of a boolean attention mask."""
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(~mask, float("-inf"))


def bico_attention(q_rot: Tensor, k_rot: Tensor, q_flip: Tensor, k_flip: Tensor, v: Tensor, bias: Tensor,
                   scale: float) -> Tensor:  # fmt: skip
    """softmax(BICO scores * scale + bias) @ v for q/k/v [B, H, T, dh]: scores from (q_rot, k_rot) on and below
    the diagonal, (q_flip, k_flip) above it; ``bias`` [B|1, 1, T, T] from ``attention_bias(mask)`` (every row
    must allow some key)."""
    if bias.dim() != 4 or bias.shape[1] != 1 or bias.shape[0] not in (1, q_rot.shape[0]):
        raise ValueError(f"bias must be [B or 1, 1, T, T], got {tuple(bias.shape)}")
    return _BicoAttention.apply(q_rot, k_rot, q_flip, k_flip, v, bias, scale)
