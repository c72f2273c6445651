"""The batched probe engine: agreement with scikit-learn, planted features, skips, unseen classes, chunking."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probekit.probes.engine import EngineConfig, Split, _lbfgs, _Problem, run_probes


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared: one thread is faster and deterministic
    yield
    torch.set_num_threads(old)


def planted(G: int = 3, N: int = 360, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, Split]:
    """Features [G, N, d] where group g carries label set g % 3 with strength 1 + g; three label sets."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 4, N), rng.integers(0, 12, N), rng.integers(0, 3, N)])
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(G, N, d, generator=gen)
    for g in range(G):
        k = g % 3
        means = torch.randn(int(labels[k].max()) + 1, d, generator=gen)
        X[g] += (1.0 + g) * means[labels[k]]
    perm = rng.permutation(N)
    return X, labels, Split(train=perm[:240], val=perm[:48], test=perm[240:])


def test_batched_engine_agrees_with_sklearn_on_same_features():
    X, labels, split = planted()
    for grid in [(1e-2,), (1e-3, 1e-2, 1e-1)]:
        torch_fits = run_probes(X, labels, split, EngineConfig(backend="torch", l2_grid=grid))
        sk_fits = run_probes(X, labels, split, EngineConfig(backend="sklearn", l2_grid=grid))
        diffs = np.array([abs(a.accuracy - b.accuracy) for a, b in zip(torch_fits, sk_fits)])
        assert len(diffs) == 9
        assert diffs.max() <= 0.02 + 1e-9, (grid, diffs)
        for a, b in zip(torch_fits, sk_fits):
            assert (a.n_train, a.n_test, a.n_classes, a.baseline) == (b.n_train, b.n_test, b.n_classes, b.baseline)


def test_lbfgs_reaches_the_sklearn_optimum():
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 6, (200,), generator=gen)
    X = torch.randn(2, 200, 8, generator=gen) + 0.7 * torch.randn(6, 8, generator=gen)[y]
    lams = torch.tensor([[1e-3, 1e-1], [1e-3, 1e-1]])
    prob = _Problem(X, y.repeat(2, 1), torch.ones(2, 6, dtype=torch.bool), lams, row_chunk=64)
    theta, iters = _lbfgs(prob, torch.zeros(2, 2, 9 * 6), max_iter=200, tol=1e-5, history=10)
    f, _ = prob.loss_grad(theta)
    for g in range(2):
        for k, lam in enumerate([1e-3, 1e-1]):
            clf = LogisticRegression(C=1 / (lam * 200), max_iter=500, tol=1e-8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clf.fit(X[g].double().numpy(), y.numpy())
            th = theta.clone()
            th[g, k] = torch.cat([torch.tensor(clf.coef_.T, dtype=torch.float32).reshape(-1),
                                  torch.tensor(clf.intercept_, dtype=torch.float32)])  # fmt: skip
            f_sk, _ = prob.loss_grad(th)
            assert f[g, k] <= f_sk[g, k] + 1e-4, (g, k, float(f[g, k]), float(f_sk[g, k]))
    assert int(iters.max()) < 200


def test_planted_feature_is_recovered_and_shuffled_labels_are_not():
    X, labels, split = planted(G=3)
    fits = {(f.group, f.label): f for f in run_probes(X, labels, split, EngineConfig())}
    # group g carries label set g (strength 1 + g): decodable where planted, chance elsewhere
    assert fits[(0, 0)].accuracy >= 0.9
    assert fits[(1, 1)].accuracy >= 0.9
    assert fits[(2, 2)].accuracy >= 0.95
    assert fits[(0, 1)].accuracy <= 1 / 12 + 0.12
    shuffled = np.stack([np.random.default_rng(6 + k).permutation(labels[k]) for k in range(3)])
    sh = {(f.group, f.label): f for f in run_probes(X, shuffled, split, EngineConfig())}
    chance = {0: 1 / 4, 1: 1 / 12, 2: 1 / 3}
    for g in range(3):
        assert sh[(g, g)].accuracy <= chance[g] + 0.15, (g, sh[(g, g)].accuracy)


def test_single_class_is_skipped_not_a_crash():
    X, labels, split = planted(G=2)
    labels = labels.copy()
    labels[1] = 7  # one class only
    fits = run_probes(X, labels, split, EngineConfig())
    skipped = [f for f in fits if f.label == 1]
    assert all(f.status == "skipped: single class" and math.isnan(f.accuracy) for f in skipped)
    assert all(f.n_classes == 1 and f.baseline == 1.0 for f in skipped)
    assert all(f.status == "ok" and not math.isnan(f.accuracy) for f in fits if f.label != 1)


def test_unseen_test_classes_count_as_errors_and_baseline_is_training_majority():
    N = 200
    gen = torch.Generator().manual_seed(0)
    y = np.repeat(np.arange(5), N // 5)  # classes 0..4
    X = 5 * torch.eye(5)[torch.as_tensor(y)][None] + 0.05 * torch.randn(1, N, 5, generator=gen)  # [1, N, 5]
    train = np.flatnonzero(y < 4)[::2]
    test = np.setdiff1d(np.arange(N), train)  # holds every class-4 row: never seen in training
    fit = run_probes(X, y[None], Split(train=train, test=test), EngineConfig(l2_grid=(1e-3,)))[0]
    assert fit.n_classes == 4
    assert fit.n_test_unseen == 40
    assert fit.accuracy == pytest.approx((len(test) - 40) / len(test))  # perfect elsewhere, errors on unseen
    # majority of training labels (ties -> the smallest class id 0) scored on test
    assert fit.baseline == pytest.approx(np.mean(y[test] == 0))


def test_chunked_memory_budget_gives_the_same_results():
    X, labels, split = planted(G=4)
    big = run_probes(X, labels, split, EngineConfig(memory_budget_mb=512))
    small = run_probes(X, labels, split, EngineConfig(memory_budget_mb=0.05))  # one group, 64-row chunks
    for a, b in zip(big, small):
        assert a.accuracy == pytest.approx(b.accuracy, abs=0.01)
        assert a.l2 == b.l2


def test_split_rejects_overlap_and_bad_config():
    with pytest.raises(ValueError, match="overlap"):
        Split(train=np.arange(10), test=np.arange(5, 15))
    with pytest.raises(ValueError, match="subset"):
        Split(train=np.arange(10), test=np.arange(10, 20), val=np.arange(8, 12))
    with pytest.raises(ValueError, match="valid engines are"):
        EngineConfig(backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="l2_grid"):
        EngineConfig(l2_grid=())


def test_progress_counts_every_regression():
    X, labels, split = planted(G=2)
    labels = labels.copy()
    labels[2] = 1
    seen: list[int] = []
    run_probes(X, labels, split, EngineConfig(), progress=seen.append)
    assert sum(seen) == 2 * 3
