"""The paper's probe: frozen model + low-rank embedding update + LayerNorm/linear heads on the last layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit.data.tokenizer import EOS_ID
from probekit.model.config import ModelConfig
from probekit.model.transformer import HookedLM
from probekit.probes.activations import collect_activations, hook_points
from probekit.probes.config import EmbedProbeConfig
from probekit.probes.embed_probe import LowRankEmbedding, probe_states, train_embed_probe
from probekit.probes.engine import Split
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
