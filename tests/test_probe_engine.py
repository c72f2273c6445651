"""The batched probe engine: agreement with scikit-learn, planted features, skips, unseen classes, chunking."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probekit.probes.config import EngineConfig
from probekit.probes.engine import Split, _rotate, _standardise, choose_l2, run_probes
from probekit.probes.solver import Problem, lbfgs, predict


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


@pytest.mark.parametrize("solver", ["fast", "classic"])
def test_batched_engine_agrees_with_sklearn_on_same_features(solver):
    X, labels, split = planted()
    for grid in [(1e-2,), (1e-3, 1e-2, 1e-1)]:
        torch_fits = run_probes(X, labels, split, EngineConfig(backend="torch", l2_grid=grid, solver=solver))
        sk_fits = run_probes(X, labels, split, EngineConfig(backend="sklearn", l2_grid=grid))
        diffs = np.array([abs(a.accuracy - b.accuracy) for a, b in zip(torch_fits, sk_fits)])
        assert len(diffs) == 9
        assert diffs.max() <= 0.02 + 1e-9, (grid, diffs)
        for a, b in zip(torch_fits, sk_fits):
            assert (a.n_train, a.n_test, a.n_classes, a.baseline) == (b.n_train, b.n_test, b.n_classes, b.baseline)


def _two_regressions() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 6, (200,), generator=gen)
    X = torch.randn(2, 200, 8, generator=gen) + 0.7 * torch.randn(6, 8, generator=gen)[y]
    return X, y


def test_lbfgs_reaches_the_sklearn_optimum():
    X, y = _two_regressions()
    lams = [1e-3, 1e-1]
    # four tasks: (group 0, lam 1e-3), (group 0, lam 1e-1), (group 1, lam 1e-3), (group 1, lam 1e-1)
    prob = Problem(X.repeat_interleave(2, 0), y.repeat(4, 1), torch.ones(4, 6, dtype=torch.bool),
                   torch.tensor(lams * 2))  # fmt: skip
    theta, iters = lbfgs(prob, torch.zeros(4, 6, 9), max_iter=200, tol=1e-5, history=10)
    f, _ = prob.loss_grad(theta)
    for t in range(4):
        g, lam = t // 2, lams[t % 2]
        clf = LogisticRegression(C=1 / (lam * 200), max_iter=500, tol=1e-8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(X[g].double().numpy(), y.numpy())
        th = theta.clone()
        th[t] = torch.cat([torch.tensor(clf.coef_, dtype=torch.float32),
                           torch.tensor(clf.intercept_, dtype=torch.float32)[:, None]], dim=1)  # fmt: skip
        f_sk, _ = prob.loss_grad(th)
        assert f[t] <= f_sk[t] + 1e-4, (t, float(f[t]), float(f_sk[t]))
    assert int(iters.max()) < 200


def test_loss_and_gradient_match_autograd_with_masked_classes():
    X, y = _two_regressions()
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[:, 6:] = False  # two padding classes
    lam = torch.tensor([1e-2, 1e-1])
    theta = 0.3 * torch.randn(2, 8, 9, generator=torch.Generator().manual_seed(2))
    theta[:, 6:] = 0.0
    prob = Problem(X, torch.stack([y, y]), valid, lam, budget=256)  # tiny blocks: rows are chunked
    f, grad = prob.loss_grad(theta)
    th = theta.double().requires_grad_(True)
    logits = X.double() @ th[..., :8].transpose(1, 2) + th[:, None, :, 8]  # [2, n, 8]
    logits = logits.masked_fill(~valid[:, None, :], -torch.inf)
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.stack([y, y]), reduction="none").mean(1)
    ref = ce + 0.5 * lam.double() * (th[..., :8] ** 2).sum((1, 2))
    ref.sum().backward()
    assert torch.allclose(f.double(), ref.detach(), atol=1e-5)
    assert torch.allclose(grad.double(), th.grad, atol=1e-5)
    assert (grad[:, 6:] == 0).all()  # padding classes never move


def test_batched_tasks_are_independent_of_each_other():
    """Solving tasks together (with converged ones dropped along the way) gives each task its own solution."""
    X, y = _two_regressions()
    Xt = X.repeat_interleave(2, 0)
    Y = torch.stack([y, torch.roll(y, 1), y, torch.roll(y, 3)])
    valid = torch.ones(4, 6, dtype=torch.bool)
    lam = torch.tensor([1e-1, 1e-3, 1e-2, 1e-4])
    together, _ = lbfgs(Problem(Xt, Y, valid, lam), torch.zeros(4, 6, 9), 100, 1e-4, 5)
    for t in range(4):
        alone, _ = lbfgs(Problem(Xt[t : t + 1], Y[t : t + 1], valid[:1], lam[t : t + 1]), torch.zeros(1, 6, 9),
                         100, 1e-4, 5)  # fmt: skip
        assert torch.allclose(together[t], alone[0], atol=1e-5), t


def test_rotation_changes_no_prediction():
    X, labels, split = planted(G=2)
    train = torch.as_tensor(split.train)
    Xs = _standardise(X, train)
    Xr = _rotate(Xs, train)
    sigma = Xr[:, train].transpose(1, 2) @ Xr[:, train] / len(train)
    off = sigma - torch.diag_embed(torch.diagonal(sigma, dim1=1, dim2=2))
    assert off.abs().max() < 1e-4  # the training covariance is diagonal in the rotated basis
    assert torch.allclose(Xr.norm(dim=2), Xs.norm(dim=2), atol=1e-4)  # orthogonal: lengths kept
    y = torch.as_tensor(labels[1])
    valid = torch.ones(1, 12, dtype=torch.bool)
    preds = []
    for Z in (Xs, Xr):
        prob = Problem(Z[:1, train], y[train][None], valid, torch.tensor([1e-2]))
        theta, _ = lbfgs(prob, torch.zeros(1, 12, 17), 300, 1e-6, 10)
        preds.append(predict(Z[:1], theta, valid))
    assert (preds[0] == preds[1]).float().mean() >= 0.99


def test_choose_l2_rules():
    grid = (1e-4, 1e-3, 1e-2, 1e-1)
    n = 100
    correct = np.array([[80, 82, 79, 60],  # best 0.82 (1e-3); SE 0.038: 0.79 (1e-2) is within it
                        [50, 50, 50, 50],  # all tie: the strongest
                        [90, 70, 60, 50]])  # only the weakest is good enough
    assert grid[choose_l2(correct[0], n, grid, "best")] == 1e-3
    assert [grid[i] for i in choose_l2(correct, n, grid, "one_se")] == [1e-2, 1e-1, 1e-4]
    assert [grid[i] for i in choose_l2(correct, n, grid, "best")] == [1e-3, 1e-1, 1e-4]
    # the grid's order does not matter
    rev = tuple(reversed(grid))
    assert rev[choose_l2(correct[0][::-1], n, rev, "one_se")] == 1e-2


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


def test_padded_buckets_give_the_same_results_as_tight_ones():
    from probekit.probes.engine import _buckets

    assert _buckets([4, 12, 3], 1.0) == [[2], [0], [1]]  # one bucket per class count
    assert _buckets([4, 12, 3], 10.0) == [[2, 0, 1]]  # all padded to 12 classes
    assert _buckets([100, 104, 140], 1.05) == [[0, 1], [2]]  # 2 x 104 / 204 <= 1.05; 3 x 140 / 344 > 1.05
    X, labels, split = planted(G=3)
    tight = run_probes(X, labels, split, EngineConfig(bucket_waste=1.0))
    padded = run_probes(X, labels, split, EngineConfig(bucket_waste=10.0))  # padded classes are masked out
    for a, b in zip(tight, padded):
        assert a.accuracy == pytest.approx(b.accuracy, abs=0.01)
        assert a.l2 == b.l2
    with pytest.raises(ValueError, match="bucket_waste"):
        EngineConfig(bucket_waste=0.9)


def test_split_rejects_overlap_and_bad_config():
    with pytest.raises(ValueError, match="overlap"):
        Split(train=np.arange(10), test=np.arange(5, 15))
    with pytest.raises(ValueError, match="subset"):
        Split(train=np.arange(10), test=np.arange(10, 20), val=np.arange(8, 12))
    with pytest.raises(ValueError, match="valid engines are"):
        EngineConfig(backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="l2_grid"):
        EngineConfig(l2_grid=())
    with pytest.raises(ValueError, match="valid rules are"):
        EngineConfig(l2_rule="median")
    with pytest.raises(ValueError, match="valid solvers are"):
        EngineConfig(solver="newton")


def test_progress_counts_every_regression():
    X, labels, split = planted(G=2)
    labels = labels.copy()
    labels[2] = 1
    seen: list[int] = []
    run_probes(X, labels, split, EngineConfig(), progress=seen.append)
    assert sum(seen) == 2 * 3


def test_sklearn_backend_uses_torchs_thread_count(monkeypatch):
    from threadpoolctl import threadpool_info

    from probekit.probes import engine

    seen: list[int] = []
    real = engine._fit_label_sklearn

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        seen.extend(i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_fit_label_sklearn", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        X = torch.as_tensor(rng.normal(size=(1, 60, 4)), dtype=torch.float32)
        y = rng.integers(0, 3, size=(1, 60))
        split = Split(train=np.arange(40), test=np.arange(40, 60), val=np.arange(30, 40))
        run_probes(X, y, split, EngineConfig(backend="sklearn", l2_grid=(0.1,), max_iter=20))
    finally:
        torch.set_num_threads(old)
    assert seen and set(seen) == {1}  # numpy's and scipy's OpenBLAS alike


# ----------------------------------------------------------------------------------------------------------
# the fast solver: curvature preconditioner, loose validation path, skipped strengths, warm starts


def _sweep(seed: int = 0, G: int = 2, N: int = 600, d: int = 24) -> tuple[torch.Tensor, np.ndarray, Split]:
    """A harder sweep than ``planted``: 30- and 60-class label sets with weak, noisy signal (near-chance probes,
    where strengths nearly tie) and a 5-class one with a strong signal, on correlated features."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(0, 30, N), rng.integers(0, 60, N), rng.integers(0, 5, N)])
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) / d**0.5 + torch.eye(d)
    X = torch.randn(G, N, d, generator=gen) @ mix
    for g in range(G):
        for k, scale in ((0, 0.6), (1, 0.4), (2, 2.0)):
            X[g] += scale * torch.randn(int(labels[k].max()) + 1, d, generator=gen)[labels[k]]
    perm = rng.permutation(N)
    return X, labels, Split(train=perm[:400], val=perm[:80], test=perm[400:])


@pytest.mark.slow
def test_fast_solver_agrees_with_sklearn_and_a_converged_reference_on_a_harder_sweep():
    """The faster engine still agrees with scikit-learn within 2 points, and with a converged reference."""
    X, labels, split = _sweep()
    fast = run_probes(X, labels, split, EngineConfig(solver="fast"))
    sk = run_probes(X, labels, split, EngineConfig(backend="sklearn"))
    ref = run_probes(X, labels, split, EngineConfig(backend="sklearn", tol=1e-8, max_iter=3000))
    for other in (sk, ref):
        diffs = np.array([abs(a.accuracy - b.accuracy) for a, b in zip(fast, other)])
        assert len(diffs) == 6 and diffs.max() <= 0.02 + 1e-9, diffs
    assert [f.n_classes for f in fast[:3]] == [30, 60, 5]


def test_curvature_preconditioner_is_the_hessian_diagonal():
    X, y = _two_regressions()
    valid = torch.ones(2, 7, dtype=torch.bool)
    valid[:, 6] = False  # one padding class
    lam = torch.tensor([1e-3, 1e-1])
    theta = 0.3 * torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(3))
    theta[:, 6] = 0.0
    prob = Problem(X, torch.stack([y, y]), valid, lam, budget=256)
    prob.refresh_curvature(theta)
    for t in range(2):
        def f(th: torch.Tensor, t: int = t) -> torch.Tensor:
            th = th.view(6, 9)
            logits = X[t].double() @ th[:, :8].T + th[:, 8]
            ce = torch.nn.functional.cross_entropy(logits, y)
            return ce + 0.5 * float(lam[t]) * (th[:, :8] ** 2).sum()

        H = torch.autograd.functional.hessian(f, theta[t, :6].double().reshape(-1))
        diag = torch.diagonal(H).view(6, 9)
        assert torch.allclose(1.0 / prob.pinv[t, :6].double(), diag, rtol=1e-4, atol=1e-6), t


@pytest.mark.parametrize("curvature_every", [0, 5])
def test_warm_and_cold_starts_reach_the_same_solution_and_meet_the_tolerance(curvature_every):
    """Warm starts (the stronger strength's solution, a loosely converged one) change where the solver starts,
    never where it stops: the solutions agree with the cold start's, and every task meets max |gradient| <= tol."""
    X, y = _two_regressions()
    T = 2
    Y = torch.stack([y, torch.roll(y, 5)])
    valid = torch.ones(T, 6, dtype=torch.bool)
    strong = Problem(X, Y, valid, torch.full((T,), 1e-1))
    weak = Problem(X, Y, valid, torch.full((T,), 1e-2))
    zero = torch.zeros(T, 6, 9)
    tol = 1e-5
    cold, it_cold = lbfgs(weak, zero, 500, tol, 3, curvature_every)
    warm_path, _ = lbfgs(strong, zero, 500, 1e-3, 3, curvature_every)  # a loose fit at the stronger strength
    warm, it_warm = lbfgs(weak, warm_path, 500, tol, 3, curvature_every)
    loose, _ = lbfgs(weak, zero, 500, 1e-3, 3, curvature_every)
    refined, it_refined = lbfgs(weak, loose, 500, tol, 3, curvature_every)
    assert int(it_refined.sum()) < int(it_cold.sum())  # a warm start saves iterations (counts, not time)
    for sol, it in ((cold, it_cold), (warm, it_warm), (refined, it_refined)):
        _, g = weak.loss_grad(sol)
        # float32: on some CPUs the preconditioned line search stalls a little above tol (6e-5 seen with
        # curvature_every=5); the engine's reported probes stop at 1e-4, which every start must meet
        assert float(g.abs().amax()) <= (tol if curvature_every == 0 else 1e-4)
        if it is not None:
            assert int(it.max()) < 500
    def centred(th: torch.Tensor) -> torch.Tensor:  # the biases are only defined up to a shared constant
        return torch.cat([th[..., :8], th[..., 8:] - th[..., 8:].mean(1, keepdim=True)], -1)

    for sol in (warm, refined):
        assert torch.allclose(centred(sol), centred(cold), atol=1e-3)
        assert torch.allclose(weak.loss_grad(sol)[0], weak.loss_grad(cold)[0], atol=1e-6)


def test_fast_solver_skips_weaker_strengths_after_a_perfect_validation_score(monkeypatch):
    """A task with 100% validation accuracy leaves the path; its choice is what the whole grid would give."""
    from probekit.probes import engine

    X, labels, split = planted(G=3)
    X = X.clone()
    X[2] *= 3.0  # group 2's label set 2 (3 classes) becomes perfectly separable
    sizes: list[int] = []
    real = engine.lbfgs

    def spy(prob, theta, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes.append(prob.T)
        return real(prob, theta, *args, **kwargs)

    monkeypatch.setattr(engine, "lbfgs", spy)
    fast = run_probes(X, labels, split, EngineConfig(solver="fast"))
    n_fast = list(sizes)
    sizes.clear()
    classic = run_probes(X, labels, split, EngineConfig(solver="classic"))
    perfect = [f for f in classic if f.val_accuracy == 1.0]
    assert perfect  # the test needs such a probe
    assert sum(n_fast) < sum(sizes)  # ... and the fast path fitted fewer tasks
    for a, b in zip(fast, classic):
        if b.val_accuracy == 1.0:
            assert a.l2 == b.l2 and a.val_accuracy == 1.0
            assert a.accuracy == pytest.approx(b.accuracy, abs=0.01)


def test_spec_engine_selects_the_solver():
    from probekit.probes.spec import ProbeSpec

    assert ProbeSpec(engine="torch-fast").engine_config() == EngineConfig(solver="fast")
    assert ProbeSpec(engine="torch-classic").engine_config() == EngineConfig(solver="classic")
    cfg = EngineConfig(backend="torch-classic")
    assert (cfg.backend, cfg.solver) == ("torch", "classic")
    with pytest.raises(ValueError, match="valid engines are"):
        ProbeSpec(engine="torch-newton")


def test_path_stop_leaves_the_path_after_a_worse_strength_and_keeps_unimodal_choices(monkeypatch):
    """``path_stop``: a task leaves the L2 path (strongest first) right after a strength that scores below its
    best so far on validation; the weaker strengths are never fitted, and wherever the full path's validation
    counts are unimodal the choice is the full path's."""
    from probekit.probes import engine

    # one label set (so the validation counts' rows are the probes, in order); the signal grows with the group,
    # and on 100 fitting rows of 48 noisy features the weak strengths overfit the weak-signal groups
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    G, N, d, C = 6, 300, 48, 8
    labels = rng.integers(0, C, size=(1, N))
    X = torch.randn(G, N, d, generator=gen)
    means = torch.randn(C, d, generator=gen)
    for g in range(G):
        X[g] += 0.15 * (g + 1) * means[labels[0]]
    perm = rng.permutation(N)
    split = Split(train=perm[:150], val=perm[:50], test=perm[150:])
    n_val = len(split.val)
    grid = EngineConfig().l2_grid
    order = np.argsort(-np.asarray(grid))
    seen: list[np.ndarray] = []
    real_choose, real_lbfgs = engine.choose_l2, engine.lbfgs
    fitted = [0]

    def spy_choose(counts, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(np.asarray(counts).copy())
        return real_choose(counts, *args, **kwargs)

    def spy_lbfgs(prob, theta, *args, **kwargs):  # type: ignore[no-untyped-def]
        fitted[0] += prob.T
        return real_lbfgs(prob, theta, *args, **kwargs)

    monkeypatch.setattr(engine, "choose_l2", spy_choose)
    monkeypatch.setattr(engine, "lbfgs", spy_lbfgs)
    stop = run_probes(X, labels, split, EngineConfig(path_stop=True))
    c_stop, n_stop = np.concatenate(seen), fitted[0]
    seen.clear()
    fitted[0] = 0
    full = run_probes(X, labels, split, EngineConfig(path_stop=False))
    c_full, n_full = np.concatenate(seen), fitted[0]
    assert n_stop < n_full  # some task left the path early
    left = 0
    for row_s, row_f in zip(c_stop[:, order], c_full[:, order]):
        n_fit = int((row_s >= 0).sum())
        assert (row_s[:n_fit] >= 0).all() and (row_s[n_fit:] == -1).all()  # a prefix of the path
        assert np.abs(row_s[:n_fit] - row_f[:n_fit]).max() <= 1  # the same fits (up to batching round-off)
        if n_fit < len(grid):
            left += 1
            last, best = row_s[n_fit - 1], row_s[: n_fit - 1].max(initial=-1)
            assert last == n_val or last < best  # it left exactly after a worse (or perfect) strength
    assert left
    n_unimodal = 0
    for a, b, row in zip(stop, full, c_full[:, order]):
        peak = int(np.argmax(row))
        if (np.diff(row[: peak + 1]) >= 0).all() and (np.diff(row[peak:]) <= 0).all():
            n_unimodal += 1
            assert a.l2 == b.l2
    assert n_unimodal
