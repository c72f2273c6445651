"""Probe rigour: control tasks, selectivity and bootstrap intervals in the probe results table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from probekit.probes.config import EngineConfig
from probekit.probes.engine import Split, run_probes
from probekit.probes.runner import ProbeModel, probe_stats, run_spec
from probekit.probes.spec import ProbeSpec
from probekit.probes.tasks import ProbeTaskSet, control_labels


def _task(labels: np.ndarray, pids: np.ndarray, train: np.ndarray, test: np.ndarray, val: np.ndarray) -> ProbeTaskSet:
    n = labels.shape[1]
    return ProbeTaskSet(
        kind="q", sequences=[[1]] * n, positions=np.zeros((n, 1), dtype=np.int64), position_names=["name"],
        pids=pids, next_tokens=np.full((n, 1), -1), label_keys=[("major", "value")] * len(labels),
        labels=labels, split=Split(train=train, test=test, val=val),
    )  # fmt: skip


def _people(n_people: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """pids [N] (``rows`` rows a person) and the train / test / validation rows of a 60/40 person split."""
    pids = np.repeat(np.arange(n_people), rows)
    order = np.random.default_rng(seed).permutation(n_people)
    train_p, test_p = order[: int(0.6 * n_people)], order[int(0.6 * n_people) :]
    val_p = train_p[: len(train_p) // 5]
    return (pids, np.flatnonzero(np.isin(pids, train_p)), np.flatnonzero(np.isin(pids, test_p)),
            np.flatnonzero(np.isin(pids, val_p)))  # fmt: skip


def test_control_labels_are_fixed_per_person_and_follow_the_class_distribution() -> None:
    pids, train, test, val = _people(3000, 2)
    rng = np.random.default_rng(0)
    person_class = rng.choice(4, size=3000, p=[0.55, 0.25, 0.15, 0.05])
    labels = person_class[pids][None, :]  # [1, N]
    t = _task(labels, pids, train, test, val)
    ctrl = control_labels(t, seed=0)[0]
    # every row of a person carries the same control label
    assert all(len(set(ctrl[pids == p])) == 1 for p in range(0, 3000, 97))
    # drawn from the task's class distribution, independently of the real label
    freq = np.bincount(ctrl[::2], minlength=4) / 3000
    assert np.allclose(freq, [0.55, 0.25, 0.15, 0.05], atol=0.03)
    assert abs(np.mean(ctrl == labels[0]) - (0.55**2 + 0.25**2 + 0.15**2 + 0.05**2)) < 0.03
    # fixed per person and seed: the same person keeps the label in another task set of the same people (one row
    # a person, in another order), as P- and Q-probes of one dataset do
    sub = np.arange(0, len(pids), 2)[::-1]
    t2 = _task(labels[:, sub], pids[sub], np.flatnonzero(np.isin(pids[sub], pids[train])),
               np.flatnonzero(~np.isin(pids[sub], pids[train])), np.zeros(0, dtype=np.int64))  # fmt: skip
    assert (control_labels(t2, seed=0)[0] == ctrl[sub]).all()
    assert (control_labels(t, seed=1)[0] != ctrl).mean() > 0.3


def _selectivity(X: torch.Tensor, labels: np.ndarray, pids: np.ndarray, train: np.ndarray, test: np.ndarray,
                 val: np.ndarray) -> dict[str, float]:  # fmt: skip
    """Fit the probe and its control on features X [1, N, d]; the stats columns of the one probe."""
    t = _task(labels[None, :], pids, train, test, val)
    spec = ProbeSpec(control_task=True, bootstrap=300, l2_grid=(1e-3, 1e-2, 1e-1))
    both = np.concatenate([t.labels, control_labels(t, spec.seed)])
    fits = run_probes(X, both, t.split, EngineConfig(l2_grid=spec.l2_grid, max_iter=200))
    st = probe_stats([fits[0]], [fits[1]], t, spec)[0]
    return {"accuracy": fits[0].accuracy, "train_accuracy": fits[0].train_accuracy, **st}


def test_a_planted_linear_feature_is_selective_and_memorisation_is_not() -> None:
    n_people, d = 400, 16
    pids, train, test, val = _people(n_people, 1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1, n_people, d, generator=g)
    W = torch.randn(d, 5, generator=g)
    planted = (X[0] @ W).argmax(1).numpy()  # a linear function of the features
    st = _selectivity(X, planted, pids, train, test, val)
    assert st["accuracy"] > 0.8
    assert st["control_accuracy"] < 0.45  # the control labels are random per person: nothing to generalise
    assert st["selectivity"] > 0.45 and st["selectivity_ci_low"] > 0.3
    assert st["ci_low"] <= st["accuracy"] <= st["ci_high"]

    # labels only memorisation can fit: random per person, features wide enough to memorise the training people
    Xwide = torch.randn(1, n_people, 320, generator=g)
    memorised = np.random.default_rng(5).integers(0, 5, size=n_people)
    st = _selectivity(Xwide, memorised, pids, train, test, val)
    assert st["train_accuracy"] > 0.9  # the probe memorised its training people...
    assert abs(st["selectivity"]) < 0.1  # ...which buys nothing on new people: as (un)selective as its control
    assert st["selectivity_ci_low"] < 0 < st["selectivity_ci_high"]


def test_run_spec_writes_intervals_and_selectivity(tiny_multi) -> None:
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tiny_multi.tokenizer), d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=128)
    model = HookedLM(cfg).eval()
    spec = ProbeSpec(kinds=("p", "q"), attributes=["major", "company"], positions=["major", "company"],
                     l2_grid=(1e-2, 1e-1), max_iter=30, control_task=True, bootstrap=200)  # fmt: skip
    df = run_spec(spec, tiny_multi, [ProbeModel(model, "m", seed=7)], progress=False)
    ok = df[df.status == "ok"]
    assert len(ok) and ok["ci_low"].notna().all() and ok["control_accuracy"].notna().all()
    assert (ok["ci_low"] <= ok["accuracy"] + 1e-12).all() and (ok["accuracy"] <= ok["ci_high"] + 1e-12).all()
    assert np.allclose(ok["selectivity"], ok["accuracy"] - ok["control_accuracy"])
    assert (ok["selectivity_ci_low"] <= ok["selectivity"] + 1e-12).all()
    assert (ok["n_test_people"] == len(tiny_multi.split["test"])).all() and (ok["seed"] == 7).all()
    # the intervals are reproducible and turned off by bootstrap: 0
    again = run_spec(spec, tiny_multi, [ProbeModel(model, "m", seed=7)], progress=False)
    pd.testing.assert_frame_equal(df, again)
    off = run_spec(ProbeSpec(**{**spec.__dict__, "bootstrap": 0, "control_task": False}), tiny_multi,
                   [ProbeModel(model, "m")], progress=False)  # fmt: skip
    assert off["ci_low"].isna().all() and off["control_accuracy"].isna().all()
    assert np.allclose(off["accuracy"], df["accuracy"])  # the control task does not change the probes


@pytest.mark.parametrize("bad", [{"bootstrap": -1}, {"bootstrap": 1.5}, {"ci_level": 1.0}, {"control_task": "yes"}])
def test_spec_rejects_bad_rigour_settings(bad: dict) -> None:
    with pytest.raises(ValueError):
        ProbeSpec(**bad)


def test_embedding_update_probe_rows_get_intervals_and_a_control(tiny_single) -> None:
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM
    from probekit.probes.config import EmbedProbeConfig

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tiny_single.tokenizer), d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=128)
    spec = ProbeSpec(kinds=("q",), attributes=["major"], targets=["value"], layers=[1], l2_grid=(0.1,),
                     max_iter=10, control_task=True, bootstrap=100,
                     embed_probe=EmbedProbeConfig(epochs=2, patience=2))  # fmt: skip
    logs: list = []
    df = run_spec(spec, tiny_single, [ProbeModel(HookedLM(cfg).eval(), "m")], progress=False, embed_logs=logs)
    emb = df[df.hook == "embed_update"]
    assert len(emb) == 1 and emb["ci_low"].notna().all() and emb["control_accuracy"].notna().all()
    assert np.allclose(emb["selectivity"], emb["accuracy"] - emb["control_accuracy"])
    assert [lg["control_task"] for lg in logs] == [False, True]  # the control is its own training run


@pytest.mark.slow
def test_tables_do_not_depend_on_the_process_thread_count(tiny_multi, monkeypatch) -> None:
    """Probes run with the spec's thread count whatever the process's, so two thread counts give identical
    tables (and the engine really sees the spec's count: the identity alone could hold by luck on a tiny model)."""
    import probekit.probes.runner as runner
    from probekit.model.config import ModelConfig
    from probekit.model.transformer import HookedLM

    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=len(tiny_multi.tokenizer), d_model=64, n_layers=2, n_heads=2, d_mlp=128, n_ctx=128)
    model = HookedLM(cfg).eval()
    spec = ProbeSpec(kinds=("p", "q"), attributes=["major", "birth_date"], l2_grid=(1e-3, 1e-1), max_iter=40,
                     bootstrap=100)  # fmt: skip
    seen: list[int] = []
    real = runner.run_probes

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(runner, "run_probes", spy)
    before = torch.get_num_threads()
    tables = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            tables.append(run_spec(spec, tiny_multi, [ProbeModel(model, "m")], progress=False))
            assert torch.get_num_threads() == n  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    pd.testing.assert_frame_equal(tables[0], tables[1])
    seen.clear()
    torch.set_num_threads(2)
    try:
        run_spec(ProbeSpec(**{**spec.__dict__, "threads": None, "kinds": ("q",)}), tiny_multi,
                 [ProbeModel(model, "m")], progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert set(seen) == {2}  # threads: null leaves the process's count
