"""Tests aimed at bugs that matter and that looser tests let through (issue 29's audit): each fails under the
mutation its docstring names (applied by hand and checked once)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probekit.model.config import ModelConfig
from probekit.model.transformer import Attention, HookedLM, build_attention_mask

V = 50


def _model(**kw: object) -> HookedLM:
    cfg = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=64, init_range=0.2, seed=0)
    cfg.update(kw)
    return HookedLM(ModelConfig(**cfg)).eval()  # type: ignore[arg-type]


def test_abi_mask_is_exact_for_every_row_and_prefix() -> None:
    """Mutations: Part A sees Part B's first token (``n <= p``); ``prefix_len.max()`` used for every row."""
    T, prefix = 9, [2, 5, 9, 0]
    mask = build_attention_mask("abi", T, None, torch.tensor(prefix), torch.device("cpu"))
    for b, p in enumerate(prefix):
        want = torch.tensor([[n < p if m < p else (n < p or n <= m) for n in range(T)] for m in range(T)])
        assert torch.equal(mask[b, 0], want), (b, p)


def test_abi_part_a_is_blind_to_part_bs_first_token_in_every_row() -> None:
    """Mutation: Part A sees Part B's first token. Two layers (a 1-layer model never reads Part A's outputs in a
    loss), rows of different prefix lengths, and only Part B's first token changed: every Part A output of every
    row stays the same, and each row's own Part B does change."""
    model = _model(span_positions=True)
    g = torch.Generator().manual_seed(0)
    T, prefix = 12, torch.tensor([7, 4])
    ids = torch.randint(6, V, (2, T), generator=g)
    kw = dict(attn_mode="abi", prefix_len=prefix)
    base = model(ids, **kw)
    changed = ids.clone()
    for b, p in enumerate(prefix.tolist()):
        changed[b, p] = (ids[b, p] - 6 + 1) % (V - 6) + 6  # Part B's first token ([START] in training)
    out = model(changed, **kw)
    for b, p in enumerate(prefix.tolist()):
        assert torch.allclose(out[b, :p], base[b, :p], atol=1e-6), f"row {b}: Part A saw Part B"
        assert not torch.allclose(out[b, p:], base[b, p:], atol=1e-4)


def test_abi_rows_of_a_batch_match_each_row_alone() -> None:
    """Mutation: ``prefix_len.max()`` (or any one row's length) used for the whole batch."""
    model = _model(span_positions=True)
    g = torch.Generator().manual_seed(1)
    T, prefix = 10, torch.tensor([3, 8])
    ids = torch.randint(6, V, (2, T), generator=g)
    both = model(ids, attn_mode="abi", prefix_len=prefix)
    for b in range(2):
        alone = model(ids[b : b + 1], attn_mode="abi", prefix_len=prefix[b : b + 1])
        assert torch.allclose(both[b], alone[0], atol=1e-5), b


def test_bico_concat_runs_bico_sdpa_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: ``bico_impl = "concat"`` never reaching ``bico_sdpa`` (e.g. the fused CPU kernel or the direct
    path taken instead). The fast path is off, so the choice between direct and concat decides; the call is
    counted and its result equals the direct implementation's."""
    import probekit.model.transformer as tr

    calls = []
    real = tr.bico_sdpa

    def spy(*a: object, **k: object) -> torch.Tensor:
        calls.append(1)
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(tr, "bico_sdpa", spy)
    model = _model(fast_path=False)
    ids = torch.randint(6, V, (2, 9), generator=torch.Generator().manual_seed(2))
    key_mask = torch.ones(2, 9, dtype=torch.bool)
    key_mask[1, 7:] = False
    monkeypatch.setattr(Attention, "bico_impl", "direct")
    direct = model(ids, attn_mode="bico", key_mask=key_mask)
    assert calls == []
    monkeypatch.setattr(Attention, "bico_impl", "concat")
    concat = model(ids, attn_mode="bico", key_mask=key_mask)
    assert len(calls) == model.cfg.n_layers  # one call per layer
    assert torch.allclose(concat, direct, atol=1e-5)


def _spy_bootstrap(monkeypatch: pytest.MonkeyPatch, module: str) -> list[np.ndarray]:
    import importlib

    mod = importlib.import_module(module)
    seen: list[np.ndarray] = []
    real = mod.person_bootstrap

    def spy(values: np.ndarray, pids: np.ndarray, *a: object, **k: object) -> object:
        seen.append(np.asarray(pids))
        return real(values, pids, *a, **k)

    monkeypatch.setattr(mod, "person_bootstrap", spy)
    return seen


def test_probe_bootstrap_resamples_people_not_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the probe runner's bootstrap resampling rows (test rows) instead of people. Three rows per
    person, all right or all wrong together: the people interval is wider than the rows one, and it is exactly
    the person bootstrap over the people."""
    from probekit.probes.runner import probe_stats
    from probekit.stats import person_bootstrap

    seen = _spy_bootstrap(monkeypatch, "probekit.probes.runner")
    pids = np.repeat(np.arange(12), 3)  # 12 people, 3 rows each
    right = np.repeat(np.arange(12) % 2 == 0, 3).astype(np.float64)
    t = SimpleNamespace(pids=pids, split=SimpleNamespace(test=np.arange(len(pids))))
    fit = SimpleNamespace(test_correct=right, accuracy=float(right.mean()))
    spec = SimpleNamespace(bootstrap=400, ci_level=0.95, seed=3)
    out = probe_stats([fit], None, t, spec)[0]  # type: ignore[arg-type]
    assert [list(p) for p in seen] == [list(pids)]
    want = person_bootstrap(right[None], pids, 400, 0.95, 3)
    assert (out["ci_low"], out["ci_high"]) == (float(want.low[0]), float(want.high[0]))
    rows = person_bootstrap(right[None], np.arange(len(pids)), 400, 0.95, 3)
    assert out["ci_high"] - out["ci_low"] > 1.3 * float(rows.high[0] - rows.low[0])
    assert out["n_test_people"] == 12


def test_patching_intervals_cluster_by_the_clean_person(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: patching's intervals resampling pairs, not the people of the clean runs."""
    from probekit.patching.patch import TracePair, TraceResult, summarize
    from probekit.probes.activations import HookPoint

    seen = _spy_bootstrap(monkeypatch, "probekit.patching.patch")
    people = [7, 7, 7, 3, 3, 3, 11, 11, 11, 5]
    pairs = [TracePair(clean=[1, 2, 3], corrupt=[1, 4, 3], answer=[9], cluster=c, labels=["bos", "name", "x"],
                       tokens=["a", "b", "c"]) for c in people]  # fmt: skip
    N, rng = len(pairs), np.random.default_rng(0)
    point = HookPoint("resid", 0, "blocks.0.hook_resid_post")
    res = TraceResult(points=[point], patched={"p_answer": rng.random((N, 1, 3))},
                      clean={"p_answer": rng.random(N)}, corrupt={"p_answer": rng.random(N)})  # fmt: skip
    df = summarize(
        res,
        pairs,
        n_boot=200,
        seed=0,
        model="m",
        objective="ntp",
        dataset="d",
        prompts="qa",
        mode="patch",
        corruption="swap",
        attribute="major",
    )
    assert seen and all(list(p) == people for p in seen)
    assert df["ci_low"].notna().all()


def test_reversal_intervals_cluster_by_person(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: reversal's intervals resampling prompts, not people (a person's paraphrased prompts travel
    together): the clusters handed to the bootstrap are the people (each with several prompts)."""
    from probekit.data.reversal import ReversalConfig, load_reversal_dir, make_reversal_dataset
    from probekit.evaluate.reversal import evaluate_reversal

    seen = _spy_bootstrap(monkeypatch, "probekit.evaluate.reversal")
    make_reversal_dataset(tmp_path / "rev", ReversalConfig(n_per_group=3, n_train_templates=2, n_test_templates=2))
    data = load_reversal_dir(tmp_path / "rev")
    model = HookedLM(ModelConfig(vocab_size=len(data.tokenizer), d_model=32, n_layers=1, n_heads=2, d_mlp=64,
                                 n_ctx=128, seed=0)).eval()  # fmt: skip
    _, rows = evaluate_reversal(model, data.tokenizer, "ntp", data, tasks=["N2D"], n_boot=50)
    items = data.task("N2D")
    assert seen
    pids = seen[0]
    assert list(pids) == [r.completion for r in items]
    assert len(set(pids.tolist())) < len(pids)  # several prompts per person: resampling rows would differ
    assert any(r["metric"] == "exact_match" and np.isfinite(r["ci_low"]) for r in rows)
