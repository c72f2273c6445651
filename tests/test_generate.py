"""Greedy causal decoding and ABI span decoding: batching is exact, trained models regenerate what they learnt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from probekit.data.tokenizer import END_ID, EOS_ID, MASK_ID, START_ID, build_tokenizer
from probekit.model.batch import TrainItem, answer_item
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.objectives.abi import abi_generate
from probekit.objectives.generate import greedy_generate
from probekit.training.config import TrainConfig
from probekit.training.data import ItemSource
from probekit.training.trainer import train

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([WORDS])


def _random_model(vocab: int, **kw) -> HookedLM:
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=48, seed=1, **kw)
    model = HookedLM(cfg)
    with torch.no_grad():  # larger weights than init so greedy paths differ between prompts
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(8.0)
    return model


def _prompts(vocab: int, n: int = 7, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[EOS_ID] + torch.randint(6, vocab, (1 + i % 5,), generator=g).tolist() for i in range(n)]


def _tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(out=str(out), model={"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64}, batch_size=4,
                lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0, log_every=50, eval_windows=0)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_batched_greedy_equals_one_by_one(tok) -> None:
    model = _random_model(len(tok))
    prompts = _prompts(len(tok))
    for stop in (None, 9):
        batched = greedy_generate(model, prompts, max_new_tokens=6, stop_id=stop, batch_size=3)
        single = [greedy_generate(model, [p], max_new_tokens=6, stop_id=stop)[0] for p in prompts]
        assert batched == single
        assert all(stop not in out for out in batched)
    assert all(len(out) == 6 for out in greedy_generate(model, prompts, 6, stop_id=None))
    # each row's continuation is what repeated full forwards give
    p = prompts[3]
    seq = list(p)
    for _ in range(6):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert seq[len(p) :] == greedy_generate(model, [p], 6, stop_id=None)[0]
    assert model.training  # mode restored


def test_memorised_sequences_are_regenerated(tok, tmp_path: Path) -> None:
    ids = tok(WORDS, add_special_tokens=False)["input_ids"]
    seqs = [[EOS_ID, *ids[i : i + 7], EOS_ID] for i in (0, 4, 8, 12)]  # shared tokens, distinct continuations
    res = train(_tiny_cfg(tmp_path / "mem", max_steps=120), ItemSource([TrainItem(s) for s in seqs], seed=0),
                tokenizer=tok, progress=False)  # fmt: skip
    out = greedy_generate(res.model, [s[:2] for s in seqs], max_new_tokens=10)
    assert out == [s[2:-1] for s in seqs]  # stops at EOS, which is not returned


def test_abi_generate_matches_manual_forward_and_batches(tiny_single, tmp_path: Path) -> None:
    model_cfg = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_mlp": 64, "span_positions": True}
    cfg = TrainConfig(data=str(tiny_single.root), out=str(tmp_path / "abi"), objective="abi", seq_len=48,
                      batch_size=4, max_steps=3, warmup_steps=1, eval_windows=0, model=model_cfg)  # fmt: skip
    model = train(cfg, progress=False).model
    prompts = _prompts(len(tiny_single.tokenizer), n=5, seed=1)
    batched = abi_generate(model, prompts, max_new_tokens=4, stop_id=None, batch_size=2)
    assert batched == [abi_generate(model, [p], 4, stop_id=None)[0] for p in prompts]
    for p, out in zip(prompts, batched):
        n = len(p)
        logits = model(
            torch.tensor([p + [MASK_ID, START_ID]]), attn_mode="abi",
            positions=torch.tensor([list(range(n + 1)) + [n]]), span_positions=torch.tensor([[0] * (n + 1) + [1]]),
            prefix_len=torch.tensor([n + 1]),
        )  # fmt: skip
        assert int(logits[0, -1].argmax()) == out[0]


def test_abi_qa_finetune_then_generate_answers(tok, tmp_path: Path) -> None:
    ids = tok(WORDS, add_special_tokens=False)["input_ids"]
    qa = [(ids[i : i + 3], ids[i + 10 : i + 12]) for i in (0, 3, 6)]  # prompt -> two-token answer
    items = [answer_item(p, a, loss_on_eos=False) for p, a in qa]
    cfg = _tiny_cfg(tmp_path / "abiqa", objective="abi", max_steps=120, model={"d_model": 32, "n_layers": 2,
                    "n_heads": 2, "d_mlp": 64, "span_positions": True})  # fmt: skip
    res = train(cfg, ItemSource(items, seed=0), tokenizer=tok, progress=False)
    out = abi_generate(res.model, [[EOS_ID, *p] for p, _ in qa], max_new_tokens=5, suffix=[EOS_ID])
    assert out == [a for _, a in qa]


def test_generation_errors(tok) -> None:
    model = _random_model(len(tok))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        greedy_generate(model, [[EOS_ID], []], 3)
    with pytest.raises(ValueError, match=r"needs 52 positions .* n_ctx=48"):
        greedy_generate(model, [[EOS_ID] * 40], 12)
    with pytest.raises(ValueError, match="n_ctx=48"):
        abi_generate(model, [[EOS_ID] * 40], 7)
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy_generate(model, [[EOS_ID]], 0)
    assert greedy_generate(model, [], 3) == [] and END_ID == 5
