"""Scoring rules: exact match (ids and text), completion log-probabilities by hand, the paired test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, START_ID
from probekit.evaluate.scoring import (
    completion_logprobs,
    first_token_match,
    ids_exact_match,
    normalize_text,
    paired_test,
    text_exact_match,
)
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM


def test_ids_exact_match_rules() -> None:
    assert ids_exact_match([7, 8, EOS_ID, 9], [7, 8])  # stop at EOS, ignore what follows
    assert ids_exact_match([7, 8, END_ID], [7, 8])  # an ABI span stops at [END]
    assert ids_exact_match([7, 8], [7, 8])  # ran out of tokens exactly at the answer's end
    assert not ids_exact_match([7, 8, 9], [7, 8])  # the whole answer, nothing more
    assert not ids_exact_match([7], [7, 8])
    assert not ids_exact_match([EOS_ID, 7, 8], [7, 8])
    assert first_token_match([7, 9], [7, 8]) and not first_token_match([8, 7], [7, 8])
    assert not first_token_match([], [7])
    with pytest.raises(ValueError, match="empty target"):
        ids_exact_match([1], [])


def test_text_exact_match_rules() -> None:
    assert text_exact_match(" Greta Blackwood is a legend.", " Greta Blackwood")  # prefix
    assert text_exact_match("greta BLACKWOOD", "Greta Blackwood")  # case
    assert text_exact_match("  Greta \n\t Blackwood  ", " Greta Blackwood ")  # whitespace
    assert not text_exact_match(" Greta", " Greta Blackwood")  # shorter than the target
    assert not text_exact_match(" The Greta Blackwood", " Greta Blackwood")  # must start with it
    assert not text_exact_match(" GretaBlackwood", " Greta Blackwood")
    assert normalize_text("  A  b\nC ") == "a b c"
    with pytest.raises(ValueError, match="empty target"):
        text_exact_match("anything", "   ")


@pytest.fixture(scope="module")
def tiny() -> HookedLM:
    return HookedLM(ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=32, seed=1)).eval()


@pytest.fixture(scope="module")
def tiny_abi() -> HookedLM:
    cfg = ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=32, span_positions=True, seed=2)
    return HookedLM(cfg).eval()


PROMPTS = [[6, 7, 8], [9], [10, 11, 12, 13, 14]]
COMPLETIONS = [[15, 16], [17, 18, 19], [20, 21]]  # two completion lengths: ABI batching groups by length


@torch.no_grad()
def test_causal_logprob_by_hand(tiny: HookedLM) -> None:
    got = completion_logprobs(tiny, PROMPTS, COMPLETIONS, objective="ntp", batch_size=2)
    for p, c, g in zip(PROMPTS, COMPLETIONS, got):
        seq = torch.tensor([[EOS_ID, *p, *c]])
        logp = torch.log_softmax(tiny(seq)[0].double(), dim=-1)  # [T, V]
        want = sum(float(logp[len(p) + j, c[j]]) for j in range(len(c)))  # output at t predicts token t+1
        assert g == pytest.approx(want, abs=1e-4)
    assert completion_logprobs(tiny, PROMPTS, COMPLETIONS, objective="bico") == pytest.approx(got, abs=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("suffix", [(), (EOS_ID,)])
def test_abi_logprob_by_hand(tiny_abi: HookedLM, suffix: tuple[int, ...]) -> None:
    got = completion_logprobs(tiny_abi, PROMPTS, COMPLETIONS, objective="abi", batch_size=2, abi_suffix=suffix)
    for p, c, g in zip(PROMPTS, COMPLETIONS, got):
        part_a = [EOS_ID, *p, MASK_ID, *suffix]
        La, n = len(part_a), len(c)
        ids = torch.tensor([part_a + [START_ID, *c]])
        pos = torch.tensor([list(range(La)) + [len(p) + 1] * (n + 1)])  # Part B at its [MASK]'s position
        span = torch.tensor([[0] * La + list(range(1, n + 2))])  # [START] 1, then 2, 3, ...
        logits = tiny_abi(ids, attn_mode="abi", positions=pos, span_positions=span, prefix_len=torch.tensor([La]))
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        want = sum(float(logp[La + j, c[j]]) for j in range(n))  # [START] predicts c[0], c[j-1] predicts c[j]
        assert g == pytest.approx(want, abs=1e-4)


def test_logprob_bad_input(tiny: HookedLM) -> None:
    with pytest.raises(ValueError, match="empty completion"):
        completion_logprobs(tiny, [[6]], [[]])
    with pytest.raises(ValueError, match="n_ctx=32"):
        completion_logprobs(tiny, [[6] * 30], [[7, 8]])


def test_paired_test_obvious_and_null() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    shifted = base + 1.0 + rng.normal(scale=0.1, size=40)
    for method in ("wilcoxon", "ttest", "permutation"):
        res = paired_test(shifted, base, method=method)
        assert res.p_value < 1e-4 and res.mean_diff == pytest.approx(1.0, abs=0.1) and res.n == 40
        assert paired_test(shifted, base, method=method, alternative="less").p_value > 0.5
        null = paired_test(rng.normal(size=40), rng.normal(size=40), method=method)
        assert null.p_value > 0.05
    assert paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).p_value == 1.0
    assert np.isnan(paired_test([1.0], [0.0]).p_value)


def test_permutation_exact_small_case() -> None:
    # 5 positive differences: only the observed sign pattern (and its mirror, two-sided) is as extreme
    a, b = [2.0, 3.0, 4.0, 5.0, 6.0], [1.0, 1.0, 1.0, 1.0, 1.0]
    assert paired_test(a, b, method="permutation", alternative="greater").p_value == pytest.approx(1 / 32)
    assert paired_test(a, b, method="permutation").p_value == pytest.approx(2 / 32)
    # Monte Carlo branch (n > 16) is seeded: the same seed gives the same p-value
    x, y = list(range(20)), [v - 0.1 * ((-1) ** v) for v in range(20)]
    p1 = paired_test(x, y, method="permutation", seed=5).p_value
    assert p1 == paired_test(x, y, method="permutation", seed=5).p_value and 0 < p1 <= 1
    with pytest.raises(ValueError, match="unknown test"):
        paired_test(a, b, method="sign")
