"""ModelConfig.fast_path (probekit.model.kernels) against the reference path: same losses, logits and gradients.

Tolerance (also in the README): losses within 1e-5 relative, logits within 1e-5 absolute, and every parameter's
gradient within 1e-4 of that gradient's largest entry (max |fast - reference| <= 1e-4 * max |reference|); the
measured differences are float32 rounding, about 1e-7 for losses and 1e-6 for gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from probekit.model import kernels
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM, build_attention_mask, compute_loss, rotary_cos_sin, rotate_both
from probekit.objectives import get_objective

V = 60
LOSS_RTOL, LOGIT_ATOL, GRAD_RTOL = 1e-5, 1e-5, 1e-4


def make_model(**kw: object) -> HookedLM:
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=80, init_range=0.2, seed=0,
               span_positions=True)  # fmt: skip
    cfg.update(kw)
    return HookedLM(ModelConfig(**cfg))  # type: ignore[arg-type]


def sequences(n: int = 4, length: int = 40, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(6, V, (length - 1 - 5 * i,), generator=g).tolist() for i in range(n)]  # ragged


def loss_logits_grads(model: HookedLM, batch, fast: bool):  # type: ignore[no-untyped-def]
    model.cfg.fast_path = fast
    model.zero_grad(set_to_none=True)
    loss = compute_loss(model, batch)
    loss.backward()
    with torch.no_grad():
        logits = model(**batch.model_kwargs())
        eval_loss = compute_loss(model, batch)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), eval_loss, logits, grads


def assert_same(ref, fast) -> None:  # type: ignore[no-untyped-def]
    (l0, e0, z0, g0), (l1, e1, z1, g1) = ref, fast
    assert abs(float(l1) - float(l0)) <= LOSS_RTOL * abs(float(l0))
    assert abs(float(e1) - float(e0)) <= LOSS_RTOL * abs(float(e0))
    assert torch.allclose(z1, z0, rtol=0, atol=LOGIT_ATOL)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert (g1[name] - g0[name]).abs().max() <= GRAD_RTOL * g0[name].abs().max(), name


@pytest.mark.parametrize("objective", ["ntp", "abi", "bico"])
def test_fast_path_matches_reference_per_objective(objective: str) -> None:
    model = make_model()
    settings = {"bico_prob": 1.0} if objective == "bico" else {}
    batch = get_objective(objective, **settings).build(sequences(), torch.Generator().manual_seed(1))
    assert batch.key_mask is not None  # ragged rows: padding masks in every mode
    ref = loss_logits_grads(model, batch, fast=False)
    fast = loss_logits_grads(model, batch, fast=True)
    assert_same(ref, fast)


def test_fast_path_with_tied_embeddings_and_unpadded_ntp() -> None:
    model = make_model(tie_embeddings=True)
    batch = get_objective("ntp").build(sequences(3, 30)[:1] * 3, torch.Generator())
    assert batch.key_mask is None  # SDPA's is_causal path
    assert_same(loss_logits_grads(model, batch, False), loss_logits_grads(model, batch, True))


def test_fast_path_is_the_default_and_a_batch_without_labels_is_zero() -> None:
    model = make_model()
    assert model.cfg.fast_path
    batch = get_objective("ntp").build(sequences(2, 10), torch.Generator())
    batch.labels.fill_(-100)
    loss = compute_loss(model, batch)
    loss.backward()
    assert float(loss.detach()) == 0.0 and model.unembed.weight.grad is not None


def test_linear_cross_entropy_equals_cross_entropy_across_chunks_and_large_logits() -> None:
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(37, 16, generator=g) * 8).requires_grad_()  # large logits: softmax far from uniform
    w = torch.randn(50, 16, generator=g).requires_grad_()
    y = torch.randint(0, 50, (37,), generator=g)
    ref = F.cross_entropy(h @ w.t(), y)
    gh, gw = torch.autograd.grad(ref * 3.0, (h, w))
    for chunk in (5, 16, 37, 64):  # ragged last chunk, one chunk, chunk larger than N
        out = kernels.linear_cross_entropy(h, w, y, chunk=chunk)
        assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5)
        fh, fw = torch.autograd.grad(out * 3.0, (h, w))  # upstream gradient scales the stored gradients
        assert torch.allclose(fh, gh, atol=1e-5) and torch.allclose(fw, gw, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(kernels.linear_cross_entropy(h, w, y), ref, rtol=1e-6, atol=1e-5)


def test_rms_norm_kernel_matches_reference() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 16, generator=g).requires_grad_()
    w = (torch.rand(16, generator=g) + 0.5).requires_grad_()
    ref = w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    up = torch.randn(3, 5, 16, generator=g)
    gx, gw = torch.autograd.grad(ref, (x, w), up)
    out = kernels.rms_norm(x, w, 1e-5)
    fx, fw = torch.autograd.grad(out, (x, w), up)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(fx, gx, atol=1e-5) and torch.allclose(fw, gw, atol=1e-5)


def brute_force_bico(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     allowed: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:  # fmt: skip
    """BICO attention written per (query m, key n) from the definition: the score uses the key's rotary at the
    distance |m - n| *behind* the query, i.e. q rotated by 0 and k rotated by -(|m - n|) steps of position."""
    B, H, T, dh = q.shape
    out = torch.zeros_like(v)
    for b in range(B):
        for m in range(T):
            scores = torch.full((H, T), float("-inf"))
            for n in range(T):
                if not allowed[b, m, n]:
                    continue
                pm, pn = positions[b, m], positions[b, n]
                d = pm - pn if n <= m else pn - pm  # BICO: a key ahead scores like one equally far behind
                cos, sin = rotary_cos_sin(torch.tensor([[0, int(d)]]), dh, theta)
                qm = q[b, :, m] * cos[0, 0, 1] + kernels_rotate_half(q[b, :, m]) * sin[0, 0, 1]  # q at "d"
                scores[:, n] = (qm * k[b, :, n]).sum(-1) / math.sqrt(dh)  # k at 0: relative distance d
            out[b, :, m] = (torch.softmax(scores, -1)[:, None, :] @ v[b]).squeeze(1)  # [H, dh]
    return out


def kernels_rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def test_bico_kernel_equals_definition_with_masks_and_positions() -> None:
    g = torch.Generator().manual_seed(4)
    B, H, T, dh = 2, 2, 9, 8
    q, k, v = (torch.randn(B, H, T, dh, generator=g) for _ in range(3))
    positions = torch.stack([torch.arange(T), torch.arange(T) * 2 + 1])  # non-default positions in row 1
    key_mask = torch.rand(B, T, generator=g) > 0.3
    key_mask[1] = False  # a row with no visible key: every query attends to itself only
    mask = build_attention_mask("bico", T, key_mask, None, q.device)  # [B, 1, T, T]
    cos, sin = rotary_cos_sin(positions, dh, 10000.0)
    (q_rot, q_flip), (k_rot, k_flip) = rotate_both(q, cos, sin), rotate_both(k, cos, sin)
    fast = kernels.bico_attention(q_rot, k_rot, q_flip, k_flip, v, kernels.attention_bias(mask), 1 / math.sqrt(dh))
    want = brute_force_bico(q, k, v, positions, mask[:, 0])
    assert torch.allclose(fast, want, atol=1e-5)
    # the test has teeth: normal rotary above the diagonal (no flip), or the mask ignored, give other outputs
    wrong_flip = kernels.bico_attention(q_rot, k_rot, q_rot, k_rot, v, kernels.attention_bias(mask), 1 / math.sqrt(dh))
    assert not torch.allclose(wrong_flip, want, atol=1e-3)
    no_mask = kernels.bico_attention(q_rot, k_rot, q_flip, k_flip, v, torch.zeros(1, 1, T, T), 1 / math.sqrt(dh))
    assert not torch.allclose(no_mask, want, atol=1e-3)


def test_bico_kernel_blocks_cover_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Several (batch x head) blocks, the last one partial, with a per-row mask: same as one block."""
    g = torch.Generator().manual_seed(5)
    B, H, T, dh = 5, 2, 6, 4
    ts = [torch.randn(B, H, T, dh, generator=g, requires_grad=True) for _ in range(5)]
    key_mask = torch.rand(B, T, generator=g) > 0.3
    bias = kernels.attention_bias(build_attention_mask("bico", T, key_mask, None, torch.device("cpu")))
    up = torch.randn(B, H, T, dh, generator=g)
    one = kernels.bico_attention(*ts, bias, 0.5)
    g_one = torch.autograd.grad(one, ts, up)
    monkeypatch.setattr(kernels, "ATTN_BLOCK_ELEMENTS", 2 * H * T * T)  # blocks of 2 batch rows: 2 + 2 + 1
    many = kernels.bico_attention(*ts, bias, 0.5)
    g_many = torch.autograd.grad(many, ts, up)
    assert torch.allclose(one, many, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_one, g_many))


def test_fast_path_masks_placeholders_and_keeps_hooks() -> None:
    """Fast BICO: a placeholder key's token never changes other positions; hooks force the reference path."""
    model = make_model().eval()
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(6, V, (2, 12), generator=g)
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[:, [3, 7]] = False
    out = model(ids, attn_mode="bico", key_mask=key_mask)
    changed = ids.clone()
    changed[:, [3, 7]] = torch.tensor([10, 11])
    out2 = model(changed, attn_mode="bico", key_mask=key_mask)
    others = [t for t in range(12) if t not in (3, 7)]
    assert torch.allclose(out[:, others], out2[:, others], atol=1e-6)
    assert not torch.allclose(out[:, 3], out2[:, 3], atol=1e-4)  # the placeholder's own query does change
    logits, cache = model.run_with_cache(ids, attn_mode="bico", key_mask=key_mask)
    assert torch.allclose(logits, out, atol=1e-5)
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.equal(pattern[..., [3, 7]], torch.zeros_like(pattern[..., [3, 7]]))
    assert cache["ln_final.hook_normalized"].shape == (2, 12, 32)


def test_fast_path_trains_like_reference() -> None:
    """Three AdamW steps of BICO on both paths end at the same weights (within the gradient tolerance)."""
    models = {fast: make_model(fast_path=fast) for fast in (False, True)}
    obj = get_objective("bico", bico_prob=1.0)
    losses: dict[bool, list[float]] = {True: [], False: []}
    for fast, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for step in range(3):
            batch = obj.build(sequences(seed=step), torch.Generator().manual_seed(step))
            loss = compute_loss(model, batch)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[fast].append(float(loss.detach()))
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    for (n, a), (_, b) in zip(models[False].named_parameters(), models[True].named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), n
