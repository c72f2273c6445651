"""Objectives: batch construction (NTP, ABI, BICO), label alignment, span sampling, and that each loss falls."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, PAD_ID, START_ID, UNK_ID
from probekit.model.batch import IGNORE_INDEX
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM, compute_loss
from probekit.objectives import OBJECTIVES, get_objective
from probekit.objectives.abi import ABIObjective, abi_generation_inputs, reconstruct


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest (and steadily on a shared machine) on one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_sequences(n: int, seed: int, lo: int = 10, hi: int = 40, vocab: int = 60) -> list[list[int]]:
    """Sequences starting with EOS, with an EOS separator inside some of them (a packed window)."""
    g = gen(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(lo, hi, (), generator=g))
        body = torch.randint(6, vocab, (length,), generator=g).tolist()
        if i % 2:
            body[length // 2] = EOS_ID
        out.append([EOS_ID] + body)
    return out


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_and_errors() -> None:
    assert OBJECTIVES == ("ntp", "abi", "bico")
    assert get_objective("bico", bico_prob=0.25).bico_prob == 0.25  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("mlm")
    with pytest.raises(ValueError, match="unknown setting"):
        get_objective("ntp", mask_ratio=0.1)
    with pytest.raises(ValueError, match="bico_prob"):
        get_objective("bico", bico_prob=1.5)
    with pytest.raises(ValueError, match="objectives need it at 0"):
        get_objective("ntp", {"<pad>": 1, "<|endoftext|>": 0})


# ---------------------------------------------------------------------------------------------------- NTP


def test_ntp_labels_padding_and_key_mask() -> None:
    seqs = [[EOS_ID, 7, 8, 9], [EOS_ID, 10, 11]]
    b = get_objective("ntp").build(seqs, gen())
    assert b.attn_mode == "causal"
    assert b.input_ids.tolist() == [[1, 7, 8, 9], [1, 10, 11, PAD_ID]]
    assert b.labels.tolist() == [[7, 8, 9, -100], [10, 11, -100, -100]]
    assert b.key_mask is not None and b.key_mask.tolist() == [[True] * 4, [True, True, True, False]]
    same_len = get_objective("ntp").build([[1, 7, 8], [1, 9, 10]], gen())
    assert same_len.key_mask is None  # no pads: the model may take the is_causal fast path


# ---------------------------------------------------------------------------------------------------- ABI


def test_abi_spans_non_overlapping_on_maskable_tokens_with_target_coverage() -> None:
    obj = ABIObjective()
    g = gen(1)
    covered, maskable_total = 0, 0
    lengths: list[int] = []
    for seq in random_sequences(60, seed=1, lo=80, hi=200):
        spans = obj.sample_spans(seq, g)
        n_maskable = sum(1 for i, t in enumerate(seq) if i > 0 and t >= 6)
        hit = [False] * len(seq)
        for (s, e), nxt in zip(spans, spans[1:] + [(len(seq) + 1, 0)]):
            assert e < nxt[0]  # disjoint and never adjacent
            for i in range(s, e):
                assert i > 0 and seq[i] >= 6 and not hit[i]
                hit[i] = True
        assert sum(hit) == round(0.15 * n_maskable)  # room is ample here, so coverage is exact
        covered += sum(hit)
        maskable_total += n_maskable
        lengths += [e - s for s, e in spans]
    assert abs(covered / maskable_total - 0.15) < 0.01
    # Poisson(3) with 0 -> 1 (the last span of each sequence is cut to hit the target): mean 3.05, var ~2.9
    mean = sum(lengths) / len(lengths)
    var = sum((x - mean) ** 2 for x in lengths) / len(lengths)
    assert 2.7 < mean < 3.3 and 2.0 < var < 4.0
    p_le1 = sum(x <= 1 for x in lengths) / len(lengths)
    assert abs(p_le1 - 4 * math.exp(-3)) < 0.07  # P(0) + P(1) = 0.199 (+ a few cut last spans)


def test_abi_part_a_part_b_positions_labels_and_reconstruction() -> None:
    seqs = random_sequences(8, seed=2)
    b = get_objective("abi").build(seqs, gen(2))
    assert b.attn_mode == "abi" and b.positions is not None and b.span_positions is not None
    assert b.prefix_len is not None and b.key_mask is not None
    for row, seq in enumerate(seqs):
        assert reconstruct(b, row) == seq
        n = int(b.key_mask[row].sum())
        a = int(b.prefix_len[row])
        ids, lab = b.input_ids[row].tolist(), b.labels[row].tolist()
        pos, sp = b.positions[row].tolist(), b.span_positions[row].tolist()
        assert ids[0] == EOS_ID and all(x == IGNORE_INDEX for x in lab[:a])  # no loss on Part A
        assert pos[:a] == list(range(a)) and sp[:a] == [0] * a
        n_masks = ids[:a].count(MASK_ID)
        assert n_masks == ids[a:n].count(START_ID) and n_masks > 0
        assert n == len(seq) + 2 * n_masks
        assert ids[n:] == [PAD_ID] * (len(ids) - n) and all(x == IGNORE_INDEX for x in lab[n:])
        for t in range(a, n):
            assert ids[pos[t]] == MASK_ID  # Part B carries its [MASK]'s Part A position
            if ids[t] == START_ID:
                assert sp[t] == 1
            else:
                assert sp[t] == sp[t - 1] + 1 and pos[t] == pos[t - 1]
            span_ends = t + 1 == n or ids[t + 1] == START_ID
            assert lab[t] == (END_ID if span_ends else ids[t + 1])
        masks_in_b = {pos[t] for t in range(a, n)}
        assert masks_in_b == {i for i in range(a) if ids[i] == MASK_ID}
    assert get_objective("abi").max_input_len(100) >= b.input_ids.shape[1]


def test_abi_is_seeded_and_shuffles_part_b() -> None:
    seqs = random_sequences(4, seed=3, lo=60, hi=80)
    b1 = get_objective("abi").build(seqs, gen(7))
    b2 = get_objective("abi").build(seqs, gen(7))
    assert torch.equal(b1.input_ids, b2.input_ids)
    orders = []
    for row in range(4):
        a, n = int(b1.prefix_len[row]), int(b1.key_mask[row].sum())  # type: ignore[index]
        starts = [t for t in range(a, n) if b1.input_ids[row, t] == START_ID]
        orders.append([int(b1.positions[row, t]) for t in starts])  # type: ignore[index]
    assert any(o != sorted(o) for o in orders)  # spans are fed in shuffled order


def test_abi_generation_inputs_batch_like_single_prompts() -> None:
    model = HookedLM(ModelConfig(vocab_size=60, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64,
                                 span_positions=True, init_range=0.2)).eval()
    prompts = [[EOS_ID, 7, 8, 9, 10], [EOS_ID, 11, 12]]
    generated = [[20, 21], [22, 23]]
    batch = abi_generation_inputs(prompts, generated)
    one = abi_generation_inputs(prompts[1], [generated[1]])
    assert one.input_ids.tolist() == [[EOS_ID, 11, 12, MASK_ID, START_ID, 22, 23]]
    assert one.positions.tolist() == [[0, 1, 2, 3, 3, 3, 3]]  # type: ignore[union-attr]
    assert one.span_positions.tolist() == [[0, 0, 0, 0, 1, 2, 3]]  # type: ignore[union-attr]
    assert one.prefix_len.tolist() == [4]  # type: ignore[union-attr]
    with torch.no_grad():
        lb = model(**batch.model_kwargs())[:, -1]
        for row in range(2):
            single = abi_generation_inputs(prompts[row], [generated[row]])
            ls = model(**single.model_kwargs())[0, -1]
            assert torch.allclose(lb[row], ls, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- BICO


def test_bico_coin_is_seeded_and_about_half() -> None:
    obj = get_objective("bico")
    seqs = random_sequences(2, seed=4)
    modes = [obj.build(seqs, g).attn_mode for g in [gen(5)] for _ in range(200)]
    modes_again = [obj.build(seqs, g).attn_mode for g in [gen(5)] for _ in range(200)]
    assert modes == modes_again
    assert 70 < modes.count("bico") < 130 and set(modes) == {"bico", "causal"}
    assert {get_objective("bico", bico_prob=0.0).build(seqs, gen()).attn_mode} == {"causal"}


def test_bico_masking_labels_and_key_mask() -> None:
    seqs = random_sequences(10, seed=5, lo=30, hi=60)
    b = get_objective("bico", bico_prob=1.0).build(seqs, gen(6))
    assert b.attn_mode == "bico" and b.key_mask is not None
    for row, seq in enumerate(seqs):
        ids, lab = b.input_ids[row].tolist(), b.labels[row].tolist()
        masked = [i for i in range(len(seq)) if ids[i] == UNK_ID]
        n_maskable = sum(1 for i, t in enumerate(seq) if i > 0 and t >= 6)
        assert len(masked) == round(0.15 * n_maskable)
        for i in masked:
            assert i > 0 and seq[i] >= 6  # never position 0, never a special token (the inner EOS survives)
        for i in range(len(seq)):
            if i not in masked:
                assert ids[i] == seq[i]
            assert b.key_mask[row, i].item() == (i not in masked)
        for i in range(len(ids) - 1):
            assert lab[i] == (seq[i + 1] if i + 1 in masked else IGNORE_INDEX)
        assert lab[-1] == IGNORE_INDEX
        assert not b.key_mask[row, len(seq) :].any() and ids[len(seq) :] == [PAD_ID] * (len(ids) - len(seq))


# ---------------------------------------------------------------------------------------------------- losses


def counting_corpus(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    g = gen(seed)
    out = []
    for _ in range(n):
        start, step = int(torch.randint(0, vocab - 6, (), generator=g)), int(torch.randint(1, 3, (), generator=g))
        out.append([EOS_ID] + [6 + (start + step * i) % (vocab - 6) for i in range(length)])
    return out


@pytest.mark.parametrize("name,settings", [("ntp", {}), ("abi", {}), ("bico", {"bico_prob": 1.0})])
def test_loss_falls(name: str, settings: dict[str, float]) -> None:
    torch.manual_seed(0)
    vocab = 30
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64,
                      span_positions=name == "abi", seed=0)
    model = HookedLM(cfg)
    obj = get_objective(name, **settings)
    corpus = counting_corpus(64, 24, vocab, seed=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = gen(9)
    eval_batch = obj.build(corpus[:32], gen(10))
    with torch.no_grad():
        before = compute_loss(model, eval_batch).item()
    for step in range(100 if name == "abi" else 50):
        batch = obj.build([corpus[(step * 16 + i) % 64] for i in range(16)], g)
        loss = compute_loss(model, batch)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = compute_loss(model, eval_batch).item()
    assert after < 0.6 * before, (before, after)


def test_compute_loss_ignores_masked_labels_and_handles_empty() -> None:
    model = HookedLM(ModelConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=16))
    b = get_objective("ntp").build([[EOS_ID, 7, 8, 9]], gen())
    logits = model(b.input_ids)
    expected = torch.nn.functional.cross_entropy(logits[0, :3], torch.tensor([7, 8, 9]))
    assert torch.allclose(compute_loss(model, b), expected, atol=1e-6)
    b.labels[:] = IGNORE_INDEX
    loss = compute_loss(model, b)
    assert loss.item() == 0.0 and loss.requires_grad
