"""The hooked transformer: a Llama-style decoder with three attention modes, readable top to bottom.

``HookedLM`` is a small Llama (RMSNorm, rotary position embeddings, SwiGLU MLP, no biases) built on
TransformerLens' ``HookedRootModule``, so ``run_with_cache`` and ``run_with_hooks`` work with TransformerLens
hook names. Module names follow Llama (``q_proj``, ``gate_proj``, ...) so Hugging Face export and peft targeting
are renamings (see ``probekit.model.hf``).

Attention modes (``forward(..., attn_mode=...)``):

* ``"causal"``: ordinary next-token attention; ``key_mask`` (False = padding) removes keys.
* ``"bico"`` (BICO, Lv et al.): bidirectional. The score between query ``m`` and key ``n`` uses the usual
  rotary when ``n <= m`` and rotary with every sin term negated when ``n > m`` (rotating q and k by the negated
  positions), so a key ``d`` tokens ahead scores exactly like the same key ``d`` tokens behind and the model never
  sees a positive relative distance. Keys with ``key_mask`` False (placeholders, pads) get zero attention.
* ``"abi"`` (GLM blank infilling, Du et al.): positions ``< prefix_len[b]`` (Part A) attend to all of Part A;
  Part B positions attend to Part A and to earlier-or-same Part B positions. ``positions`` carries GLM's first
  position coordinate (Part B tokens repeat their [MASK]'s Part A index) and, when ``cfg.span_positions``, a
  learned ``span_embed`` table indexed by ``span_positions`` (the second coordinate) is added to the embeddings.

The attention pattern is only materialised when ``hook_pattern`` or ``hook_attn_scores`` has a hook attached;
otherwise attention runs through ``torch.nn.functional.scaled_dot_product_attention`` (BICO on CPU: the fused
kernel of ``probekit.model.kernels``). All paths compute the same function (tested). ``ModelConfig.fast_path`` (on by
default) selects the fused CPU kernels of ``probekit.model.kernels`` for training; ``forward(..., labels=...)`` returns
the loss instead of the logits.

Hook points (shapes): ``hook_embed`` [B,T,d], ``hook_span_embed`` [B,T,d] (span table only),
``blocks.{l}.hook_resid_pre/hook_attn_out/hook_resid_mid/hook_mlp_out/hook_resid_post`` [B,T,d],
``blocks.{l}.attn.hook_q/hook_k/hook_v`` [B,T,H,dh] (before rotary, as in TransformerLens),
``blocks.{l}.attn.hook_attn_scores`` [B,H,T,T] (pre-softmax, masked entries -inf), ``blocks.{l}.attn.hook_pattern``
[B,H,T,T], ``blocks.{l}.ln1/ln2.hook_normalized`` and ``ln_final.hook_normalized`` [B,T,d] (normalised, before the
RMSNorm weight, as in TransformerLens).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from probekit.errors import UserError
from probekit.model import kernels
from probekit.model.batch import ATTN_MODES, IGNORE_INDEX, ModelBatch
from probekit.model.config import ModelConfig

# ----------------------------------------------------------------------------------------------------------------
# Building blocks


def use_fast_path(cfg: ModelConfig | None, x: Tensor) -> bool:
    """Whether ``cfg.fast_path`` applies to a computation on ``x``: float32 on CPU, no autocast."""
    return (
        cfg is not None
        and cfg.fast_path
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not _cpu_autocast()
    )


def _cpu_autocast() -> bool:
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # torch < 2.4: no device argument
        return bool(torch.is_autocast_cpu_enabled())


def is_hooked(hook: HookPoint) -> bool:
    """True if any forward or backward hook (TransformerLens or plain torch) is attached to ``hook``."""
    return bool(hook._forward_hooks or hook._forward_pre_hooks or hook._backward_hooks) or hook.has_hooks()


def _plain(*modules: nn.Module) -> bool:
    """All plain ``nn.Linear`` (a peft LoRA layer replaces the module, and then the fused path must not bypass it)."""
    return all(type(m) is nn.Linear for m in modules)


class RMSNorm(nn.Module):
    """Llama RMSNorm (computed in float32, like Hugging Face's ``LlamaRMSNorm``)."""

    def __init__(self, d: int, eps: float, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.cfg = cfg  # for cfg.fast_path only
        self.w = nn.Parameter(torch.ones(d))
        self.hook_normalized = HookPoint()  # [B, T, d], before the weight

    def forward(self, x: Tensor) -> Tensor:
        if use_fast_path(self.cfg, x) and not is_hooked(self.hook_normalized):
            return kernels.rms_norm(x, self.w, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.w * self.hook_normalized(x32.to(dtype))


def rotate_half(x: Tensor) -> Tensor:
    """Hugging Face Llama's convention: pair dimension i with i + d/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(positions: Tensor, d_head: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin [B, 1, T, d_head] for integer positions [B, T] (float32, as in Hugging Face Llama)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, d_head/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, d_head]
    return emb.cos()[:, None], emb.sin()[:, None]


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B, H, T, dh] by the angles behind cos/sin. Passing -sin rotates by the negated positions."""
    return x * cos + rotate_half(x) * sin


def rotate_both(x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """(x rotated by +positions, x rotated by -positions, i.e. with every sin term negated), sharing products."""
    xc, xs = x * cos, rotate_half(x) * sin
    return xc + xs, xc - xs


def build_attention_mask(
    attn_mode: str, T: int, key_mask: Tensor | None, prefix_len: Tensor | None, device: torch.device
) -> Tensor:
    """Boolean mask [B or 1, 1, T, T]: True where query m may attend to key n.

    A query row with no allowed key (e.g. every key masked out) is allowed its own position, so no row is empty
    and softmax never produces NaN.
    """
    m = torch.arange(T, device=device)[:, None]  # query index
    n = torch.arange(T, device=device)[None, :]  # key index
    if attn_mode == "causal":
        allowed = (n <= m)[None, None]  # [1, 1, T, T]
    elif attn_mode == "bico":
        allowed = torch.ones(1, 1, T, T, dtype=torch.bool, device=device)
    elif attn_mode == "abi":
        assert prefix_len is not None
        p = prefix_len.to(device)[:, None, None, None]  # [B, 1, 1, 1]
        allowed = (n < p) | (n <= m)  # Part A keys for everyone; Part B keys causally (Part A queries: n <= m < p)
    else:
        raise ValueError(f"unknown attn_mode {attn_mode!r}; use one of {ATTN_MODES}")
    if key_mask is not None:
        allowed = allowed & key_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    empty = ~allowed.any(dim=-1, keepdim=True)  # [B, 1, T, 1]
    return allowed | (empty & (n == m))


class Attention(nn.Module):
    # How BICO runs when the pattern is not hooked: "concat" = one SDPA call over duplicated keys
    # ([q_rot, q_flip] against [k_rot, 0] for n <= m and [0, k_flip] for n > m), "direct" = both score matrices
    # computed explicitly (2x the QK flops of causal attention instead of 4x). benchmarks/bench_model.py compares
    # them; "direct" was faster on CPU (4x128 model, 8 x 256 tokens: BICO step 1.31x NTP vs 1.43x for "concat").
    bico_impl: str = "direct"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.hook_q = HookPoint()  # [B, T, H, dh]
        self.hook_k = HookPoint()  # [B, T, H, dh]
        self.hook_v = HookPoint()  # [B, T, H, dh]
        self.hook_attn_scores = HookPoint()  # [B, H, T, T]
        self.hook_pattern = HookPoint()  # [B, H, T, T]

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, attn_mode: str, bias: Tensor | None = None
    ) -> Tensor:
        """``bias``: optional additive form of ``mask`` (``kernels.attention_bias``) for the fast BICO kernel."""
        B, T, _ = x.shape
        materialise = is_hooked(self.hook_pattern) or is_hooked(self.hook_attn_scores)
        q = self.hook_q(self.q_proj(x).view(B, T, self.n_heads, self.d_head)).transpose(1, 2)  # [B, H, T, dh]
        k = self.hook_k(self.k_proj(x).view(B, T, self.n_heads, self.d_head)).transpose(1, 2)  # [B, H, T, dh]
        v = self.hook_v(self.v_proj(x).view(B, T, self.n_heads, self.d_head)).transpose(1, 2)  # [B, H, T, dh]
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        scale = 1.0 / math.sqrt(self.d_head)

        if attn_mode == "bico":
            assert mask is not None
            (q_rot, q_flip), (k_rot, k_flip) = rotate_both(q, cos, sin), rotate_both(k, cos, sin)
            if not materialise and use_fast_path(self.cfg, x):
                bias = kernels.attention_bias(mask) if bias is None else bias
                z = kernels.bico_attention(q_rot, k_rot, q_flip, k_flip, v, bias, scale)
            elif materialise or self.bico_impl == "direct":
                scores = bico_scores(q_rot, k_rot, q_flip, k_flip, scale)  # [B, H, T, T]
                z = self._softmax_attend(scores, mask, v, materialise)
            else:
                z = bico_sdpa(q_rot, k_rot, q_flip, k_flip, v, mask, scale)
        else:
            q_rot, k_rot = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, H, T, dh]
            if materialise:
                scores = q_rot @ k_rot.transpose(-1, -2) * scale  # [B, H, T, T]
                z = self._softmax_attend(scores, mask if mask is not None else _causal(T, x.device), v, True)
            elif mask is None:  # plain causal attention without padding
                z = F.scaled_dot_product_attention(q_rot, k_rot, v, is_causal=True, scale=scale)
            else:
                z = F.scaled_dot_product_attention(q_rot, k_rot, v, attn_mask=mask, scale=scale)
        z = z.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head)  # [B, T, d]
        return self.o_proj(z)

    def _softmax_attend(self, scores: Tensor, mask: Tensor, v: Tensor, hooked: bool) -> Tensor:
        scores = scores.masked_fill(~mask, float("-inf")) if hooked else scores.masked_fill_(~mask, float("-inf"))
        if hooked:
            scores = self.hook_attn_scores(scores)
        pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)  # [B, H, T, T]
        if hooked:
            pattern = self.hook_pattern(pattern)
        return pattern @ v  # [B, H, T, dh]


def _causal(T: int, device: torch.device) -> Tensor:
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()[None, None]


def bico_scores(q_rot: Tensor, k_rot: Tensor, q_flip: Tensor, k_flip: Tensor, scale: float = 1.0) -> Tensor:
    """BICO scores [B, H, T, T]: normal rotary on and below the diagonal, sin-flipped above it (times ``scale``)."""
    T = q_rot.shape[-2]
    lower = torch.ones(T, T, dtype=torch.bool, device=q_rot.device).tril()
    s_normal = (q_rot * scale) @ k_rot.transpose(-1, -2)
    s_flip = (q_flip * scale) @ k_flip.transpose(-1, -2)
    return torch.where(lower, s_normal, s_flip)


def bico_sdpa(
    q_rot: Tensor, k_rot: Tensor, q_flip: Tensor, k_flip: Tensor, v: Tensor, mask: Tensor, scale: float
) -> Tensor:
    """BICO attention in one exact SDPA call: keys duplicated, the two rotations in disjoint halves of the head dim.

    Query [q_rot, q_flip] against key copy 1 [k_rot, 0] gives the normal score, against copy 2 [0, k_flip] the
    flipped score; copy 1 is allowed for n <= m, copy 2 for n > m, so each (m, n) is counted exactly once.
    """
    T = q_rot.shape[-2]
    lower = torch.ones(T, T, dtype=torch.bool, device=q_rot.device).tril()
    zeros = torch.zeros_like(k_rot)
    q2 = torch.cat((q_rot, q_flip), dim=-1)  # [B, H, T, 2dh]
    k2 = torch.cat((torch.cat((k_rot, zeros), -1), torch.cat((zeros, k_flip), -1)), dim=-2)  # [B, H, 2T, 2dh]
    v2 = torch.cat((v, v), dim=-2)  # [B, H, 2T, dh]
    mask2 = torch.cat((mask & lower, mask & ~lower), dim=-1)  # [B, 1, T, 2T]
    return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, scale=scale)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp, bias=False)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln1 = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
        self.attn = Attention(cfg)
        self.ln2 = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
        self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [B, T, d]
        self.hook_attn_out = HookPoint()  # [B, T, d]
        self.hook_resid_mid = HookPoint()  # [B, T, d]
        self.hook_mlp_out = HookPoint()  # [B, T, d]
        self.hook_resid_post = HookPoint()  # [B, T, d]

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None, attn_mode: str, bias: Tensor | None = None
    ) -> Tensor:
        resid_pre = self.hook_resid_pre(x)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre), cos, sin, mask, attn_mode, bias))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


# ----------------------------------------------------------------------------------------------------------------
# The model


class HookedLM(HookedRootModule):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.span_embed = nn.Embedding(cfg.n_ctx, cfg.d_model) if cfg.span_positions else None
        self.hook_embed = HookPoint()  # [B, T, d]
        self.hook_span_embed = HookPoint()  # [B, T, d]
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_final = RMSNorm(cfg.d_model, cfg.norm_eps, cfg)
        self.unembed = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.unembed.weight = self.embed.weight
        self._init_weights()
        self.setup()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """Seeded init: normal(0, init_range); residual output projections scaled by 1/sqrt(2 n_layers)."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        std = self.cfg.init_range
        for name, p in self.named_parameters():
            if name.endswith(".w"):
                p.fill_(1.0)
                continue
            s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            p.copy_(torch.randn(p.shape, generator=g) * s)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def forward(
        self,
        input_ids: Tensor,
        attn_mode: str = "causal",
        positions: Tensor | None = None,
        span_positions: Tensor | None = None,
        key_mask: Tensor | None = None,
        prefix_len: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Logits [B, T, vocab] for ``input_ids`` [B, T] (see the module docstring for the modes).

        ``positions`` [B, T]: rotary positions (None = 0..T-1). ``span_positions`` [B, T]: ABI span positions
        (None = 0, i.e. every token is Part A); ignored when the model has no span table. ``key_mask`` [B, T]
        bool: False = never attended to. ``prefix_len`` [B]: ABI Part A lengths (required for ``"abi"``).
        ``labels`` [B, T] (aligned with the outputs, -100 = no loss): return the mean cross-entropy instead of
        the logits (with ``cfg.fast_path``, fused with the unembedding and over the labelled rows only).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        if self.cfg.n_ctx < T:
            raise UserError(
                f"sequence length {T} exceeds the model's context n_ctx={self.cfg.n_ctx}; "
                "use shorter sequences or a model with a larger n_ctx"
            )
        if attn_mode not in ATTN_MODES:
            raise ValueError(f"unknown attn_mode {attn_mode!r}; use one of {ATTN_MODES}")
        if attn_mode == "abi" and prefix_len is None:
            raise ValueError("attn_mode='abi' needs prefix_len (the Part A length of each row)")
        for name, t in (("positions", positions), ("span_positions", span_positions), ("key_mask", key_mask)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ValueError(f"{name} must have shape {(B, T)} like input_ids, got {tuple(t.shape)}")
        device = input_ids.device

        x = self.hook_embed(self.embed(input_ids))  # [B, T, d]
        if self.span_embed is not None:
            if span_positions is None:
                span_emb = self.span_embed.weight[0].expand(B, T, -1)
            else:
                if int(span_positions.max()) >= self.cfg.n_ctx:
                    raise ValueError(f"span_positions must be < n_ctx={self.cfg.n_ctx}")
                span_emb = self.span_embed(span_positions)
            x = x + self.hook_span_embed(span_emb)  # [B, T, d]

        if positions is None:
            positions = torch.arange(T, device=device)[None].expand(B, T)
        cos, sin = rotary_cos_sin(positions, self.cfg.d_head, self.cfg.rope_theta)  # [B, 1, T, dh]
        if attn_mode == "causal" and key_mask is None:
            mask = None  # SDPA's is_causal fast path
        else:
            mask = build_attention_mask(attn_mode, T, key_mask, prefix_len, device)  # [B|1, 1, T, T]

        # additive mask for the fast BICO attention kernel, built once for all layers
        bias = (
            kernels.attention_bias(mask)
            if attn_mode == "bico" and mask is not None and use_fast_path(self.cfg, x)
            else None
        )
        for block in self.blocks:
            x = block(x, cos, sin, mask, attn_mode, bias)
        if labels is None:
            return self.unembed(self.ln_final(x))  # [B, T, vocab]
        if tuple(labels.shape) != (B, T):
            raise ValueError(f"labels must have shape {(B, T)} like input_ids, got {tuple(labels.shape)}")
        h = self.ln_final(x)  # [B, T, d]
        labels = labels.to(device)
        if use_fast_path(self.cfg, h) and _plain(self.unembed):
            keep = labels != IGNORE_INDEX  # [B, T]
            if not bool(keep.any()):
                return h.sum() * 0.0 + self.unembed.weight.sum() * 0.0
            return kernels.linear_cross_entropy(h[keep], self.unembed.weight, labels[keep])
        return logits_cross_entropy(self.unembed(h), labels)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def logits_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of ``logits`` [B, T, V] over ``labels`` [B, T] != -100 (0.0, still differentiable,
    when there are none): the reference loss of every objective."""
    labels = labels.to(logits.device)
    keep = labels != IGNORE_INDEX  # [B, T]
    n_keep = int(keep.sum())
    if n_keep == 0:
        return logits.sum() * 0.0
    if 2 * n_keep > keep.numel():  # dense labels (NTP): skip the gather
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX)
    return F.cross_entropy(logits[keep].float(), labels[keep])  # sparse labels (ABI, BICO): only labelled rows


def compute_loss(model: torch.nn.Module, batch: ModelBatch) -> Tensor:
    """Mean cross-entropy over labels != -100 (0.0, still differentiable, when a batch has none).

    A ``HookedLM`` (also inside DDP / peft wrappers) computes the loss in its own forward (``labels=``), which
    with ``ModelConfig.fast_path`` fuses the unembedding with the cross-entropy; other models return logits.
    """
    if isinstance(_base_model(model), HookedLM):
        return model(**batch.model_kwargs(), labels=batch.labels)
    return logits_cross_entropy(model(**batch.model_kwargs()), batch.labels)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP (``.module``), ``torch.compile`` (``._orig_mod``) and peft (``get_base_model()``)."""
    for _ in range(8):
        if hasattr(model, "get_base_model"):
            # peft's get_base_model; torch types unknown nn.Module attributes as Tensor | Module
            model = cast(torch.nn.Module, model.get_base_model())  # type: ignore[operator]
            continue
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model
