"""The paper's probe: frozen model + low-rank embedding update + LayerNorm/linear heads on the last layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from probekit.data.tokenizer import EOS_ID
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.probes.activations import collect_activations, hook_points
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.embed_probe import (
    PAPER_RANK,
    Heads,
    LowRankEmbedding,
    _batches,
    _update_states,
    probe_states,
    train_embed_probe,
)
from probekit.probes.engine import Split, _map_labels
from probekit.probes.tasks import ProbeTaskSet


def tiny_model(vocab: int = 40, seed: int = 0) -> HookedLM:
    return HookedLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=128, seed=seed))


def token_task(labels_from_tokens: bool, n: int = 240, vocab: int = 40, seed: int = 0) -> ProbeTaskSet:
    """Random token sequences read at their last token; the label is that token's id mod 4 (planted) or random."""
    rng = np.random.default_rng(seed)
    seqs, pos = [], []
    for _ in range(n):
        length = int(rng.integers(3, 9))
        seqs.append([EOS_ID] + rng.integers(4, vocab, size=length - 1).tolist())
        pos.append([length - 1])
    last = np.array([s[-1] for s in seqs])
    y = last % 4 if labels_from_tokens else rng.integers(0, 4, size=n)
    rows = rng.permutation(n)
    split = Split(train=np.sort(rows[: n // 2]), test=np.sort(rows[n // 2 :]), val=np.sort(rows[: n // 8]))
    return ProbeTaskSet(
        kind="q", sequences=seqs, positions=np.array(pos), position_names=["last"], pids=np.arange(n),
        next_tokens=np.full((n, 1), -1), label_keys=[("token", "mod4")], labels=y[None].astype(np.int64), split=split,
    )  # fmt: skip


def test_zero_update_reads_exactly_the_models_last_layer():
    model, task = tiny_model().eval(), token_task(True)
    rows = np.arange(16)
    read = hook_points(2, ["resid"], [2])[0]
    delta = LowRankEmbedding(40, 32, rank=2)  # B = 0 at the start
    with torch.no_grad():
        h = probe_states(model, delta, task, rows, read.name)  # [16, 1, 32]
    acts = collect_activations(model, [task.sequences[r] for r in rows], task.positions[rows], [read])
    torch.testing.assert_close(h, acts.get(0, 0)[:, None], atol=1e-5, rtol=1e-5)  # acts.get: [16, 32]
    # a non-zero update changes the states, and its gradient reaches A and B but no model weight
    with torch.no_grad():
        delta.B.normal_()
    model.requires_grad_(False)
    h2 = probe_states(model, delta, task, rows, read.name)
    assert not torch.allclose(h2, h)
    h2.square().sum().backward()
    assert delta.A.grad is not None and delta.A.grad.abs().sum() > 0 and delta.B.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_planted_label_is_learned_and_shuffled_labels_are_not():
    cfg = EmbedProbeConfig(epochs=30, patience=30, lr=1e-2, batch_size=16)
    planted, _ = train_embed_probe(tiny_model(), token_task(True), cfg)
    shuffled, _ = train_embed_probe(tiny_model(), token_task(False), cfg)
    assert planted[0].status == "ok" and planted[0].accuracy > 0.8
    assert shuffled[0].accuracy < 0.45  # chance is 0.25; 120 test rows


def test_model_is_left_untouched_and_runs_are_reproducible():
    model, task = tiny_model(), token_task(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    cfg = EmbedProbeConfig(epochs=3, batch_size=16)
    a, log_a = train_embed_probe(model, task, cfg)
    b, log_b = train_embed_probe(model, task, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [f.accuracy for f in a] == [f.accuracy for f in b] and log_a == log_b
    assert log_a["rank"] == 16  # the paper's Q rank
    assert np.shape(log_a["chosen_epochs"]) == (1, 1) and 1 <= log_a["chosen_epochs"][0][0] <= 3


def test_single_class_label_set_is_skipped_and_bad_config_rejected():
    task = token_task(True)
    task.labels = np.concatenate([task.labels, np.zeros_like(task.labels)])
    task.label_keys = task.label_keys + [("constant", "value")]
    fits, _ = train_embed_probe(tiny_model(), task, EmbedProbeConfig(epochs=1))
    assert fits[0].status == "ok" and fits[1].status == "skipped: single class"
    with pytest.raises(ValueError, match="epochs"):
        EmbedProbeConfig(epochs=0)


def test_run_spec_adds_embed_update_rows_and_yaml_settings_are_checked(tmp_path):
    from probekit.data.store import build_dataset
    from probekit.probes.runner import ProbeModel, run_spec
    from probekit.probes.spec import ProbeSpec, load_spec
    from probekit.reporting.results import summary_table

    ds = build_dataset(tmp_path / "ds", n_people=24, augmentation="single", seed=7)
    spec = ProbeSpec(kinds=["p", "q"], positions=["major", "company"], attributes=["major"], targets=["first_token"],
                     l2_grid=[0.01], max_iter=20, embed_probe={"epochs": 2})  # fmt: skip
    pm = ProbeModel(tiny_model(vocab=len(ds.tokenizer)), "tiny", "ntp", ds.name, ds.tokenizer)
    logs: list = []
    df = run_spec(spec, ds, [pm], progress=False, embed_logs=logs)
    assert [(g["probe_kind"], g["rank"], len(g["epochs"])) for g in logs] == [("p", 2, 2), ("q", 16, 2)]
    emb = df[df.hook == "embed_update"]
    # 3 resid layers x (2 P positions + 1 Q) frozen probes, plus (2 + 1) embedding-update probes at layer 2
    assert len(df) == 3 * 3 + 3 and len(emb) == 3
    assert set(emb.layer) == {2} and set(emb.engine) == {"embed_update_r2", "embed_update_r16"}
    k = emb.accuracy * emb.n_test  # a count of the test rows, not a loose number in [0, 1]
    assert ((k - k.round()).abs() < 1e-9).all() and emb.accuracy.between(0, 1).all()
    assert "tiny [embed_update]" in summary_table(df)
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed_probe: {epoch: 3}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['epoch'\]"):
        load_spec(bad)
    ok = tmp_path / "ok.yaml"
    ok.write_text("embed_probe: {}\n")
    assert load_spec(ok).embed_probe == EmbedProbeConfig()


def test_per_head_selection_reads_each_head_at_its_own_best_validation_epoch():
    """Two label sets on one task: per_head reads each at its own best validation epoch, mean reads both at one."""
    task = token_task(True)
    rng = np.random.default_rng(1)
    task.labels = np.concatenate([task.labels, rng.integers(0, 4, size=task.labels.shape)])  # planted + noise
    task.label_keys = task.label_keys + [("noise", "value")]
    cfg = EmbedProbeConfig(epochs=12, patience=12, lr=1e-2, batch_size=16)
    per, log_p = train_embed_probe(tiny_model(), task, cfg)
    one, log_m = train_embed_probe(tiny_model(), task, EmbedProbeConfig(**{**vars(cfg), "select": "mean"}))
    assert [e["train_loss"] for e in log_p["epochs"]] == [e["train_loss"] for e in log_m["epochs"]]  # same run
    heads = np.array([e["val_accuracy_heads"][0] for e in log_p["epochs"]])  # [epochs, 2] validation curves
    own = heads.argmax(0) + 1  # each head's first best epoch
    assert log_p["chosen_epochs"][0] == own.tolist()
    assert [f.val_accuracy for f in per] == pytest.approx(heads.max(0).tolist())
    shared = int(heads.mean(1).argmax()) + 1
    assert log_m["chosen_epochs"][0] == [shared, shared]  # mean: one epoch for every head
    assert [f.val_accuracy for f in one] == pytest.approx(heads[shared - 1].tolist())
    with pytest.raises(ValueError, match="select"):
        EmbedProbeConfig(select="best")


def test_frozen_false_needs_the_papers_probe() -> None:
    from probekit.probes.spec import ProbeSpec
    from probekit.serde import from_dict

    with pytest.raises(ValueError, match="frozen"):
        from_dict(ProbeSpec, {"name": "x", "frozen": False})
    assert from_dict(ProbeSpec, {"name": "x", "frozen": False, "embed_probe": {}}).frozen is False


def multi_position_task(n: int = 200, vocab: int = 40, seed: int = 3) -> ProbeTaskSet:
    """Sequences of 6-29 tokens read at two positions each (the second anywhere up to the last token), two label
    sets (one planted in the token at the first position, one random): batches mix lengths, as P-probes do."""
    rng = np.random.default_rng(seed)
    seqs, pos = [], []
    for _ in range(n):
        length = int(rng.integers(6, 30))
        seqs.append([EOS_ID] + rng.integers(4, vocab, size=length - 1).tolist())
        first = int(rng.integers(1, 4))
        pos.append([first, int(rng.integers(first + 1, length))])
    y = np.stack([np.array([s[p[0]] for s, p in zip(seqs, pos)]) % 3, rng.integers(0, 3, size=n)])
    rows = rng.permutation(n)
    split = Split(train=np.sort(rows[: n // 2]), test=np.sort(rows[n // 2 :]), val=np.sort(rows[: n // 6]))
    return ProbeTaskSet(
        kind="p", sequences=seqs, positions=np.array(pos), position_names=["first", "second"], pids=np.arange(n),
        next_tokens=np.full((n, 2), -1), label_keys=[("token", "mod3"), ("noise", "value")], labels=y, split=split,
    )  # fmt: skip


@pytest.mark.parametrize(("layers", "span"), [(3, False), (2, True), (1, False)])
def test_update_states_equal_the_hooked_forward_pass(layers: int, span: bool) -> None:
    """The cut-down pass (sequences cut after the last read position, no key mask, the first block's projections
    per distinct token, the last block at the read positions only) gives the states and gradients of the full
    hooked forward pass: padding, an ABI model's span table and a one-block model included."""
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=layers, n_heads=2, d_mlp=64, n_ctx=128,
                      span_positions=span)  # fmt: skip
    model, task = HookedLM(cfg).eval().requires_grad_(False), multi_position_task()
    if span:
        with torch.no_grad():
            model.span_embed.weight.normal_()  # type: ignore[union-attr]
    rows = np.arange(0, 60, 2)  # lengths 6-29 in one batch: padding and cuts differ per row
    delta = LowRankEmbedding(40, 32, rank=4)
    with torch.no_grad():
        delta.B.normal_()
    grads = []
    for cols in ([0, 1], [0], [1]):  # both read positions, or one: the pass stops after the last one read
        for h in (probe_states(model, delta, task, rows, f"blocks.{layers - 1}.hook_resid_post")[:, cols],
                  _update_states(model, delta, task, rows, cols)):  # fmt: skip  # [30, len(cols), 32]
            (h * torch.linspace(-1, 1, h.numel()).view_as(h)).sum().backward()
            grads.append((h.detach(), delta.A.grad.clone(), delta.B.grad.clone()))  # type: ignore[union-attr]
            delta.zero_grad()
    for ref, got in zip(grads[::2], grads[1::2]):
        for a, b in zip(ref, got):
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def reference_probe(model: HookedLM, task: ProbeTaskSet, cfg: EmbedProbeConfig) -> dict[str, np.ndarray]:
    """The per-head probe computed the straightforward way: whole batches through the model's hooks, test and
    training people scored at every epoch in which some head's validation accuracy improves."""
    split, L = task.split, model.cfg.n_layers
    labs = [_map_labels(task.labels[k], split.train) for k in range(len(task.label_keys))]
    P, K = len(task.position_names), len(labs)
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        delta = LowRankEmbedding(model.cfg.vocab_size, model.cfg.d_model, cfg.rank or PAPER_RANK[task.kind])
        heads = Heads(model.cfg.d_model, P, [len(lab.classes) for lab in labs])
    Y = torch.as_tensor(np.stack([lab.y for lab in labs]))  # [K, N]
    opt = torch.optim.AdamW([*delta.parameters(), *heads.parameters()], lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.eval().requires_grad_(False)

    def logits(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:  # [B, P, sum C], labels [K, B]
        return heads(probe_states(model, delta, task, rows, f"blocks.{L - 1}.hook_resid_post")), Y[:, rows]

    def correct(rows: np.ndarray) -> np.ndarray:  # [P, K, len(rows)]
        with torch.no_grad():
            lg, y = logits(rows)
        b = heads.bounds
        return np.stack([(lg[..., b[j] : b[j + 1]].argmax(-1) == y[j][:, None]).T.numpy() for j in range(K)], 1)

    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen)))
    out = {k: np.zeros((P, K)) for k in ("chosen", "test", "train", "val")}
    best, losses, since = np.full((P, K), -np.inf), [], 0
    for epoch in range(1, cfg.epochs + 1):
        total = 0.0
        for b in _batches(split.fit, cfg.batch_size, rng):
            lg, y = logits(b)
            loss = torch.stack([nn.functional.cross_entropy(lg[..., heads.bounds[j] : heads.bounds[j + 1]]
                                .transpose(1, 2), y[j][:, None].expand(-1, P), ignore_index=-1)
                                for j in range(K)]).mean()  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        losses.append(total / len(split.fit))
        val = correct(split.val).mean(-1)
        better = val > best
        if better.any():
            test, train = correct(split.test).mean(-1), correct(split.train).mean(-1)
            for key, value in (("chosen", epoch), ("test", test), ("train", train), ("val", val)):
                out[key][better] = value[better] if isinstance(value, np.ndarray) else value
            best[better] = val[better]
        since = 0 if better.any() else since + 1
        if since >= cfg.patience:
            break
    return {**out, "losses": np.array(losses)}


def test_probe_equals_a_straightforward_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the optimised probe computes (cut-down passes on groups of similar-length rows, test and training
    people scored only at the chosen epochs, at the end, up to the positions read) is what the straightforward
    loop computes: the same epochs chosen per head and the same accuracies; losses agree to float32 rounding."""
    from probekit.probes import embed_probe

    monkeypatch.setattr(embed_probe, "TRAIN_TOKENS", 150)  # several passes per batch of 35 rows of 6-29 tokens
    monkeypatch.setattr(embed_probe, "SCORE_TOKENS", 300)
    task = multi_position_task()
    cfg = EmbedProbeConfig(epochs=8, patience=3, lr=1e-2, batch_size=35)
    fits, log = train_embed_probe(tiny_model(), task, cfg)
    ref = reference_probe(tiny_model(), task, cfg)
    chosen = np.array(log["chosen_epochs"])  # [P, K]
    assert len(np.unique(chosen)) > 1  # heads read at different epochs: the end-of-run scoring is exercised
    np.testing.assert_array_equal(chosen, ref["chosen"])
    np.testing.assert_allclose([e["train_loss"] for e in log["epochs"]], ref["losses"], rtol=1e-5)
    for key, attr in (("test", "accuracy"), ("train", "train_accuracy"), ("val", "val_accuracy")):
        got = np.array([getattr(f, attr) for f in fits]).reshape(chosen.shape)  # fits: position-major
        np.testing.assert_array_equal(got, ref[key], err_msg=key)
