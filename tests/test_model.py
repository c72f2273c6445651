"""HookedLM: attention modes (causal, BICO, ABI), rotary, hooks, SDPA vs materialised attention, validation."""

from __future__ import annotations

import pytest
import torch

from probekit.model.config import ModelConfig
from probekit.model.transformer import Attention, HookedLM, apply_rotary, rotary_cos_sin

V = 40


def make_model(**kw: object) -> HookedLM:
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64, init_range=0.2, seed=0)
    cfg.update(kw)
    return HookedLM(ModelConfig(**cfg)).eval()  # type: ignore[arg-type]


def materialised(model: HookedLM, ids: torch.Tensor, **kw: object) -> torch.Tensor:
    """Forward with a no-op hook on every hook_pattern, which forces the explicit-pattern path."""
    return model.run_with_hooks(
        ids, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: None)], **kw
    )


def scores_of(model: HookedLM, ids: torch.Tensor, layer: int = 0, **kw: object) -> torch.Tensor:
    _, cache = model.run_with_cache(ids, names_filter=f"blocks.{layer}.attn.hook_attn_scores", **kw)
    return cache[f"blocks.{layer}.attn.hook_attn_scores"]


# ---------------------------------------------------------------------------------------------------- validation


def test_config_validation_messages() -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        ModelConfig(vocab_size=10, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="odd"):
        ModelConfig(vocab_size=10, d_model=12, n_heads=4)  # head size 3
    with pytest.raises(ValueError, match="positive"):
        ModelConfig(vocab_size=0)


def test_sequence_longer_than_context_raises() -> None:
    model = make_model(n_ctx=8)
    with pytest.raises(ValueError, match="exceeds the model's context n_ctx=8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_abi_without_prefix_len_raises() -> None:
    with pytest.raises(ValueError, match="prefix_len"):
        make_model()(torch.zeros(1, 4, dtype=torch.long), attn_mode="abi")


def test_init_is_seeded() -> None:
    a, b, c = make_model(seed=1), make_model(seed=1), make_model(seed=2)
    assert torch.equal(a.blocks[0].attn.q_proj.weight, b.blocks[0].attn.q_proj.weight)
    assert not torch.equal(a.blocks[0].attn.q_proj.weight, c.blocks[0].attn.q_proj.weight)


# ---------------------------------------------------------------------------------------------------- causal


@pytest.mark.parametrize("force_pattern", [False, True])
def test_causal_later_tokens_never_change_earlier_logits(force_pattern: bool) -> None:
    model = make_model()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, V, (2, 16), generator=g)
    run = (lambda x: materialised(model, x)) if force_pattern else model
    base = run(ids)
    changed = ids.clone()
    changed[:, 10:] = torch.randint(6, V, (2, 6), generator=g)
    out = run(changed)
    assert torch.allclose(out[:, :10], base[:, :10], atol=1e-6)
    assert not torch.allclose(out[:, 10:], base[:, 10:], atol=1e-3)


def test_rotary_is_relative_and_positions_default_to_arange() -> None:
    model = make_model()
    ids = torch.randint(6, V, (2, 12), generator=torch.Generator().manual_seed(1))
    base = model(ids)
    assert torch.allclose(model(ids, positions=torch.arange(12).expand(2, 12)), base, atol=1e-6)
    assert torch.allclose(model(ids, positions=torch.arange(12).expand(2, 12) + 7), base, atol=1e-4)
    assert not torch.allclose(model(ids, positions=torch.arange(12).flip(0).expand(2, 12)), base, atol=1e-3)


@pytest.mark.parametrize("mode", ["causal", "bico"])
def test_masked_key_is_invisible_to_other_positions(mode: str) -> None:
    model = make_model()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(6, V, (1, 12), generator=g)
    key_mask = torch.ones(1, 12, dtype=torch.bool)
    key_mask[0, 4] = False
    changed = ids.clone()
    changed[0, 4] = (ids[0, 4] + 1 - 6) % (V - 6) + 6
    a = model(ids, attn_mode=mode, key_mask=key_mask)
    b = model(changed, attn_mode=mode, key_mask=key_mask)
    others = [t for t in range(12) if t != 4]
    assert torch.allclose(a[:, others], b[:, others], atol=1e-6)
    c = model(changed, attn_mode=mode)  # without the key mask the change is visible
    assert not torch.allclose(a[:, others], c[:, others], atol=1e-3)


# ---------------------------------------------------------------------------------------------------- ABI


def test_abi_part_a_never_sees_part_b_and_part_b_sees_part_a() -> None:
    model = make_model(span_positions=True)
    g = torch.Generator().manual_seed(3)
    T, a = 14, 8
    ids = torch.randint(6, V, (2, T), generator=g)
    kw = dict(
        attn_mode="abi",
        prefix_len=torch.tensor([a, a - 2]),
        positions=torch.cat((torch.arange(a), torch.full((T - a,), 3))).expand(2, T),
        span_positions=torch.cat((torch.zeros(a, dtype=torch.long), torch.arange(1, T - a + 1))).expand(2, T),
    )
    base = model(ids, **kw)
    b_changed = ids.clone()
    b_changed[:, a + 2 :] = torch.randint(6, V, (2, T - a - 2), generator=g)
    out = model(b_changed, **kw)
    assert torch.allclose(out[0, :a], base[0, :a], atol=1e-6)  # Part A blind to Part B
    assert torch.allclose(out[:, : a + 2], base[:, : a + 2], atol=1e-6)  # Part B causal within Part B
    assert not torch.allclose(out[:, a + 2 :], base[:, a + 2 :], atol=1e-3)
    a_changed = ids.clone()
    a_changed[:, a - 3] = (ids[:, a - 3] + 1 - 6) % (V - 6) + 6  # last Part A tokens of row 1 too
    out = model(a_changed, **kw)
    assert not torch.allclose(out[:, a:], base[:, a:], atol=1e-3)  # Part B sees Part A
    assert not torch.allclose(out[:, 0], base[:, 0], atol=1e-3)  # Part A is bidirectional


def test_span_table_default_is_part_a() -> None:
    model = make_model(span_positions=True)
    ids = torch.randint(6, V, (2, 9), generator=torch.Generator().manual_seed(4))
    zeros = torch.zeros(2, 9, dtype=torch.long)
    assert torch.allclose(model(ids), model(ids, span_positions=zeros), atol=1e-6)
    assert not torch.allclose(model(ids), model(ids, span_positions=zeros + 1), atol=1e-3)


# ---------------------------------------------------------------------------------------------------- BICO


def test_bico_key_ahead_scores_like_key_behind() -> None:
    """Identical tokens everywhere: at layer 0 a score then depends only on the relative rotation."""
    model = make_model()
    T = 12
    ids = torch.full((1, T), 9)
    s = scores_of(model, ids, attn_mode="bico")[0]  # [H, T, T]
    s_causal = scores_of(model, ids, attn_mode="causal")[0]
    lower = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.allclose(s[:, lower], s_causal[:, lower], atol=1e-6)  # normal rotary on and below the diagonal
    for m in range(T):
        for d in range(1, T):
            if m + d < T and m - d >= 0:
                assert torch.allclose(s[:, m, m + d], s[:, m, m - d], atol=1e-5)
    # The same check fails for rotary without the sin flip (normal rotary above the diagonal):
    cos, sin = rotary_cos_sin(torch.arange(T)[None], model.cfg.d_head, model.cfg.rope_theta)
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n in ("blocks.0.attn.hook_q", "blocks.0.attn.hook_k"))
    q = cache["blocks.0.attn.hook_q"].transpose(1, 2)
    k = cache["blocks.0.attn.hook_k"].transpose(1, 2)
    normal = apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-1, -2) / model.cfg.d_head**0.5
    assert torch.allclose(normal[0][:, lower], s_causal[:, lower], atol=1e-5)
    assert not torch.allclose(normal[0, :, 3, 5], normal[0, :, 3, 1], atol=1e-4)  # d=2 ahead vs behind differ


def test_bico_placeholder_keys_get_exactly_zero_attention_and_no_nan() -> None:
    model = make_model()
    ids = torch.randint(6, V, (2, 10), generator=torch.Generator().manual_seed(5))
    key_mask = torch.ones(2, 10, dtype=torch.bool)
    key_mask[0, [2, 5, 6]] = False
    key_mask[1] = False  # a row with no visible key at all
    _, cache = model.run_with_cache(ids, attn_mode="bico", key_mask=key_mask)
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [B, H, T, T]
        assert torch.equal(pattern[0, :, :, [2, 5, 6]], torch.zeros_like(pattern[0, :, :, [2, 5, 6]]))
        assert not torch.isnan(pattern).any()
        assert torch.allclose(pattern.sum(-1), torch.ones(2, 4, 10))
        assert (pattern[0, :, :, 7] > 0).all()  # later keys are visible (bidirectional)
    assert not torch.isnan(model(ids, attn_mode="bico", key_mask=key_mask)).any()


# ---------------------------------------------------------------------------------------------------- paths & hooks


@pytest.mark.parametrize("mode", ["causal", "bico", "abi"])
def test_sdpa_path_equals_materialised_pattern_path(mode: str) -> None:
    model = make_model(span_positions=True)
    g = torch.Generator().manual_seed(6)
    ids = torch.randint(6, V, (3, 11), generator=g)
    key_mask = torch.rand(3, 11, generator=g) > 0.2
    key_mask[:, 0] = True
    kw = dict(
        attn_mode=mode,
        key_mask=key_mask,
        prefix_len=torch.tensor([4, 7, 11]),
        positions=torch.randint(0, 11, (3, 11), generator=g),
        span_positions=torch.randint(0, 5, (3, 11), generator=g),
    )
    fast = model(ids, **kw)
    slow = materialised(model, ids, **kw)
    assert torch.allclose(fast, slow, atol=1e-5)
    if mode == "bico":
        old = Attention.bico_impl
        try:
            Attention.bico_impl = "concat" if old == "direct" else "direct"
            assert torch.allclose(model(ids, **kw), slow, atol=1e-5)
        finally:
            Attention.bico_impl = old
    if mode == "causal":  # no mask at all: SDPA's is_causal path
        assert torch.allclose(model(ids), materialised(model, ids), atol=1e-5)


def test_run_with_cache_names_and_shapes() -> None:
    model = make_model()
    ids = torch.randint(6, V, (2, 7))
    logits, cache = model.run_with_cache(ids)
    assert torch.allclose(logits, model(ids), atol=1e-5)
    assert cache["hook_embed"].shape == (2, 7, 32)
    for layer in range(2):
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"blocks.{layer}.{name}"].shape == (2, 7, 32)
        for name in ("hook_q", "hook_k", "hook_v"):
            assert cache[f"blocks.{layer}.attn.{name}"].shape == (2, 7, 4, 8)
        assert cache[f"blocks.{layer}.attn.hook_pattern"].shape == (2, 4, 7, 7)
        assert torch.allclose(
            cache[f"blocks.{layer}.hook_resid_post"],
            cache[f"blocks.{layer}.hook_resid_mid"] + cache[f"blocks.{layer}.hook_mlp_out"],
        )
    assert torch.allclose(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    assert cache["ln_final.hook_normalized"].shape == (2, 7, 32)
    assert not any(h.has_hooks() for h in model.hook_dict.values())  # hooks removed afterwards


def test_run_with_hooks_can_ablate() -> None:
    model = make_model()
    ids = torch.randint(6, V, (2, 7))
    base = model(ids)
    ablated = model.run_with_hooks(
        ids, fwd_hooks=[("blocks.1.hook_mlp_out", lambda t, hook: torch.zeros_like(t))]
    )
    assert not torch.allclose(base, ablated, atol=1e-4)
    _, cache = model.run_with_cache(ids)
    resid = cache["blocks.1.hook_resid_mid"]
    manual = model.unembed(model.ln_final(resid))
    assert torch.allclose(ablated, manual, atol=1e-5)
    assert torch.allclose(model(ids), base, atol=1e-6)  # hooks are gone


def test_peft_lora_wraps_llama_module_names() -> None:
    from peft import LoraConfig, get_peft_model

    model = make_model()
    ids = torch.randint(6, V, (2, 7))
    base = model(ids)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    n_lora = sum("lora_A" in n for n, _ in peft_model.named_parameters())
    assert n_lora == len(targets) * model.cfg.n_layers
    out = peft_model(input_ids=ids, attn_mode="bico")
    assert out.shape == (2, 7, V)
    logits, cache = peft_model.base_model.model.run_with_cache(ids)  # hooks still work under peft
    assert not torch.allclose(logits, base, atol=1e-4)  # the (non-zero) LoRA weights are live
    assert "blocks.1.hook_resid_post" in cache
