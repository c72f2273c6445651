"""Batched multinomial logistic-regression probes.

A probing sweep is a grid of *feature groups* (one per hook point x token position: the activations a probe
reads) crossed with *label sets* (one per attribute x target kind: what it predicts). Every (group, label set)
pair is an independent multinomial logistic regression:

    minimise   mean_i CE(softmax(W^T x_i + b), y_i) + l2/2 * ||W||^2        (the bias is not penalised)

which is exactly scikit-learn's ``LogisticRegression(C=1/(l2 * n_train))`` objective. The torch backend solves all
regressions of a bucket of label sets at once (label sets whose class counts are within
``EngineConfig.bucket_waste`` of each other share a bucket, padded classes masked out): one task per (group, label
set, current L2 strength), each with its own L-BFGS state, so every result is that regression's own optimum, not a
compromise of a joint problem (``probekit.probes.solver`` explains the solver). The L2 grid is walked as a
regularisation path, strongest first, each fit warm-started from the previous one, and the refit starts from the
chosen strength's solution.

Two torch solvers (``EngineConfig.solver``; in a probe spec, ``engine: torch-fast`` or ``torch-classic``) solve
the same objectives and choose the strength by the same rule:

* ``classic`` (the engine before issue 11; tables made before the switch used it): every fit of the path and
  the refit stop at ``tol`` (or ``max_iter``), with the start's diagonal preconditioner.
* ``fast`` (the default): the validation-path fits stop at ``path_tol`` (1e-3): they only decide which strength
  wins on the validation people, and stopped at tol 1e-4 the weak ones ran into the iteration cap anyway; the
  reported probe is still the refit on all training rows at ``tol``. L-BFGS uses the exact per-class diagonal of
  the Hessian as its preconditioner, refreshed every ``curvature_every`` iterations
  (``Problem.refresh_curvature``). A task leaves the path early when its validation score is already perfect
  (a tie goes to the strongest, so the choice is the one the whole grid would give) or, with ``path_stop`` (on
  by default), as soon as a strength scores below its best so far: wherever validation accuracy is unimodal
  along the path (it rises while regularisation eases underfitting, then falls as the probe overfits) the
  weaker strengths score below that best, so neither rule can choose them and the choice is the whole grid's.
  The weakest strengths take the most iterations, so this is where the path's work goes. The chosen strength
  can differ from ``classic``'s where validation scores nearly tie or the validation curve is not unimodal
  (near-chance probes: up to 2 points from a converged reference on the benchmark's 48 checked probes);
  ``benchmarks/bench_probes.py`` reports the evaluations per fit and the accuracy differences.

Protocol (both backends, identical): features are standardised per group with the training rows' mean and
std; classes are the distinct training labels (a test label never seen in training is an error, counted in
``n_test_unseen``); the L2 strength is chosen per regression from ``l2_grid`` by accuracy on a validation
subset of the *training* rows (fit on the rest; ``choose_l2``: by default the strongest L2 within one standard
error of the best), then the regression is refit on all training rows with that strength. The test rows are
used once, for the reported accuracy. A label set with a single training class
is reported with status ``"skipped: single class"``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from probekit.probes.config import EngineConfig
from probekit.probes.solver import Problem, lbfgs, predict

log = logging.getLogger(__name__)


@dataclass
class Split:
    """Row indices into the feature/label arrays. ``val`` must be a subset of ``train`` (or empty)."""

    train: np.ndarray  # [n_train] int64
    test: np.ndarray  # [n_test] int64
    val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [n_val] int64, within train

    def __post_init__(self) -> None:
        self.train = np.asarray(self.train, dtype=np.int64)
        self.test = np.asarray(self.test, dtype=np.int64)
        self.val = np.asarray(self.val, dtype=np.int64)
        if np.intersect1d(self.train, self.test).size:
            raise ValueError("train and test rows overlap; a probe must be tested on rows it never saw")
        if self.val.size and np.setdiff1d(self.val, self.train).size:
            raise ValueError("validation rows must be a subset of the training rows")

    @property
    def fit(self) -> np.ndarray:
        """Training rows outside the validation subset (used while choosing the L2 strength)."""
        return np.setdiff1d(self.train, self.val) if self.val.size else self.train


@dataclass
class ProbeFit:
    """The outcome of one regression: feature group ``group`` x label set ``label``."""

    group: int
    label: int
    status: str  # "ok" or "skipped: <reason>"
    accuracy: float  # on the test rows (unseen classes count as errors); NaN when skipped
    baseline: float  # majority class of the training labels, scored on the test rows
    n_train: int
    n_test: int
    n_classes: int  # distinct classes among the training labels
    n_test_unseen: int  # test rows whose class never occurs in training
    examples_per_class: float  # n_train / n_classes
    train_accuracy: float = math.nan
    val_accuracy: float = math.nan  # of the chosen L2 strength (NaN without a validation split)
    l2: float = math.nan  # chosen L2 strength
    # [n_test] bool: which test rows (in ``Split.test`` order) the probe got right; None when skipped. The
    # person-clustered bootstrap (``probekit.stats``) resamples these by person.
    test_correct: np.ndarray | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------------------------------------
# label bookkeeping shared by both backends


@dataclass
class _Labels:
    classes: np.ndarray  # [C] the distinct training labels, sorted
    y: np.ndarray  # [N] mapped to 0..C-1, -1 where the class is unseen in training
    majority: int  # mapped id of the training majority class


def _map_labels(y: np.ndarray, train: np.ndarray) -> _Labels:
    classes, counts = np.unique(y[train], return_counts=True)
    pos = np.searchsorted(classes, y)
    pos_c = np.minimum(pos, len(classes) - 1)
    mapped = np.where(classes[pos_c] == y, pos_c, -1).astype(np.int64)
    return _Labels(classes=classes, y=mapped, majority=int(np.argmax(counts)))


def _acc(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(pred == y)) if len(y) else math.nan


def choose_l2(val_correct: np.ndarray, n_val: int, grid: Sequence[float], rule: str = "one_se") -> np.ndarray:
    """Index into ``grid`` of the chosen L2 strength per regression, from the validation counts of correct
    predictions ``val_correct`` [..., len(grid)] (counts, so both backends compare exact numbers).

    ``best``: the highest validation accuracy, ties to the strongest L2. ``one_se`` (the default): the strongest
    L2 whose accuracy is within one standard error, sqrt(a (1 - a) / n_val), of the best accuracy a: the
    one-standard-error rule (Hastie, Tibshirani & Friedman, ESL 7.10). It prefers the simpler probe unless a
    weaker penalty is clearly better, which keeps the probe's own capacity low and makes the choice robust to
    the few-example noise of small validation sets (and to solver round-off, where two strengths nearly tie).
    """
    acc = np.asarray(val_correct, dtype=np.float64) / max(n_val, 1)  # [..., R]
    best = acc.max(-1, keepdims=True)
    slack = np.sqrt(best * (1.0 - best) / max(n_val, 1)) if rule == "one_se" else 0.0
    ok = acc >= best - slack - 1e-12  # [..., R]
    strength = np.asarray(grid, dtype=np.float64)
    return np.where(ok, strength, -np.inf).argmax(-1)  # the strongest admissible


def _base_fit(g: int, k: int, lab: _Labels, split: Split) -> ProbeFit:
    n_train, n_test, n_cls = len(split.train), len(split.test), len(lab.classes)
    y_test = lab.y[split.test]
    status = "ok"
    if n_cls < 2:
        status = "skipped: single class" if n_cls == 1 else "skipped: no training examples"
    elif n_test == 0:
        status = "skipped: no test examples"
    return ProbeFit(
        group=g,
        label=k,
        status=status,
        accuracy=math.nan,
        baseline=_acc(np.full(n_test, lab.majority), y_test) if n_cls else math.nan,
        n_train=n_train,
        n_test=n_test,
        n_classes=n_cls,
        n_test_unseen=int(np.sum(y_test < 0)),
        examples_per_class=n_train / n_cls if n_cls else 0.0,
    )


# ----------------------------------------------------------------------------------------------------------
# torch backend (the solver is in ``probekit.probes.solver``)


def _standardise(X: Tensor, train: Tensor) -> Tensor:
    """Standardise X [G, N, d] per group with the training rows' mean and std."""
    Xt = X[:, train]
    mu = Xt.mean(dim=1, keepdim=True)  # [G, 1, d]
    sd = Xt.std(dim=1, keepdim=True, unbiased=False)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
    return (X - mu) / sd


def _rotate(X: Tensor, train: Tensor) -> Tensor:
    """X [G, N, d] in the eigenbasis of each group's training covariance: an orthogonal change of basis, so the
    regularised objective, its optimal logits and every prediction are those of the unrotated features; only
    the solver's diagonal preconditioner gains (it becomes exact at the start)."""
    Xt = X[:, train]
    sigma = torch.bmm(Xt.transpose(1, 2), Xt).double() / max(len(train), 1)  # [G, d, d]
    _, U = torch.linalg.eigh(sigma)
    return torch.bmm(X, U.to(X.dtype))


def _buckets(sizes: Sequence[int], waste: float) -> list[list[int]]:
    """Group label sets of similar class counts so padding to the largest wastes at most ``waste`` x."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        cand = cur + [i]
        if cur and sizes[i] * len(cand) > waste * sum(sizes[j] for j in cand):
            out.append(cur)
            cur = [i]
        else:
            cur = cand
    return out + [cur] if cur else out


def _fit_bucket_torch(
    X: Tensor, labs: Sequence[_Labels], split: Split, cfg: EngineConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit label sets ``labs`` on every group of X [G, N, d] (one task per group x label set). Returns
    (test acc, train acc, val acc, l2), each [G, len(labs)], and the test rows' correctness [G, len(labs), n_test]."""
    G, _, d = X.shape
    L, R = len(labs), len(cfg.l2_grid)
    C = max(len(lab.classes) for lab in labs)
    dev, dt = X.device, X.dtype
    grp = torch.arange(G, device=dev).repeat_interleave(L)  # [T] group of each task (group-major)
    lab = torch.arange(L, device=dev).repeat(G)  # [T] label set of each task
    Y_all = torch.as_tensor(np.stack([lb.y for lb in labs]), device=dev)[lab]  # [T, N]; -1 = unseen (test only)
    grid = torch.tensor(cfg.l2_grid, dtype=dt, device=dev)

    def rows_of(rows: np.ndarray) -> tuple[Tensor, Tensor]:
        r = torch.as_tensor(rows, device=dev)
        return X[:, r][grp], Y_all[:, r]  # [T, m, d], [T, m]

    def problem(rows: np.ndarray, lam: Tensor) -> Problem:
        Xr, Yr = rows_of(rows)
        valid = torch.zeros(len(grp), C, dtype=torch.bool, device=dev)
        valid.scatter_(1, Yr.clamp_min(0), True)
        return Problem(Xr, Yr.clamp_min(0), valid, lam)

    def n_correct(Xr: Tensor, Yr: Tensor, theta: Tensor, valid: Tensor) -> Tensor:
        return (predict(Xr, theta, valid) == Yr).sum(1, dtype=torch.float64)  # [T]

    def correct(rows: np.ndarray, theta: Tensor, valid: Tensor) -> Tensor:
        out = torch.zeros(len(grp), len(rows), dtype=torch.bool, device=dev)  # [T, n_rows]
        for s in range(0, len(rows), 2048):  # bounded memory on large test sets
            Xr, Yr = rows_of(rows[s : s + 2048])
            out[:, s : s + 2048] = predict(Xr, theta, valid) == Yr
        return out

    T = len(grp)
    fast = cfg.solver == "fast"
    curvature_every = cfg.curvature_every if fast else 0
    choice = torch.full((T,), int(torch.argmax(grid)), dtype=torch.long, device=dev)  # default: strongest
    val_acc = torch.full((T,), math.nan, dtype=torch.float64, device=dev)
    theta0 = torch.zeros(T, C, d + 1, dtype=dt, device=dev)
    if R > 1 and split.val.size:
        # the regularisation path: strongest L2 first, each fit warm-started from the previous solution
        order = torch.argsort(grid, descending=True).tolist()
        prob = problem(split.fit, grid[order[0]].expand(T).contiguous())
        X_val, Y_val = rows_of(split.val)  # gathered once for every strength of the path
        n_val = len(split.val)
        theta = theta0
        thetas = torch.empty(R, T, C, d + 1, dtype=dt, device=dev)
        counts = torch.empty(T, R, dtype=torch.float64, device=dev)  # correct validation predictions
        for r in order:
            prob.set_lam(grid[r].expand(T).contiguous())
            if not fast:
                theta, _ = lbfgs(prob, theta, cfg.max_iter, cfg.tol, cfg.history)
                counts[:, r] = n_correct(X_val, Y_val, theta, prob.valid)
            else:
                # a task whose validation score is already perfect cannot choose a weaker strength (under either
                # rule a tie goes to the strongest): it skips the rest of the path (its count -1: never chosen);
                # with ``path_stop``, so does a task whose last strength scored below its best so far
                done = order[: order.index(r)]
                need = (counts[:, done] < n_val).all(1)
                if cfg.path_stop and done:
                    last, best = counts[:, done[-1]], counts[:, done].amax(1)
                    need &= last >= best  # -1 (skipped) is below any count: a stopped task stays stopped
                theta = theta.clone()
                counts[:, r] = -1.0
                if bool(need.all()):
                    theta, _ = lbfgs(prob, theta, cfg.max_iter, cfg.path_tol, cfg.history, cfg.curvature_every)
                    counts[:, r] = n_correct(X_val, Y_val, theta, prob.valid)
                elif bool(need.any()):
                    idx = need.nonzero().squeeze(1)
                    theta[idx], _ = lbfgs(prob.take(idx), theta[idx], cfg.max_iter, cfg.path_tol, cfg.history,
                                          cfg.curvature_every)  # fmt: skip
                    counts[idx, r] = n_correct(X_val[idx], Y_val[idx], theta[idx], prob.valid[idx])
            thetas[r] = theta
        del prob, X_val, Y_val
        chosen = choose_l2(counts.cpu().numpy(), len(split.val), cfg.l2_grid, cfg.l2_rule)
        choice = torch.as_tensor(chosen, device=dev)
        val_acc = counts.gather(1, choice[:, None]).squeeze(1) / len(split.val)
        theta0 = thetas[choice, torch.arange(T, device=dev)]
        del thetas
    prob = problem(split.train, grid[choice])
    theta, _ = lbfgs(prob, theta0.contiguous(), cfg.max_iter, cfg.tol, cfg.history, curvature_every)
    valid = prob.valid
    train_acc = n_correct(prob.X, prob.Y, theta, valid) / max(len(split.train), 1)  # training labels are all seen
    del prob

    def gl(v: Tensor) -> np.ndarray:
        return v.view(G, L).cpu().numpy()

    l2 = np.asarray(cfg.l2_grid)[choice.cpu().numpy()].reshape(G, L)  # the grid's own values, not float32 copies
    test_ok = correct(split.test, theta, valid)  # [T, n_test]
    test_acc = test_ok.sum(1, dtype=torch.float64) / max(len(split.test), 1)
    return gl(test_acc), gl(train_acc), gl(val_acc), l2, test_ok.view(G, L, -1).cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# sklearn backend (reference)


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    """scikit-learn's BLAS and OpenMP pools limited to ``n`` threads (torch's count, e.g. from ``probekit --threads``).
    scikit-learn is imported first: threadpoolctl only limits libraries already loaded, and scipy's OpenBLAS (used
    by L-BFGS-B) is loaded by that import."""
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n):
        yield


def _fit_label_sklearn(
    Xg: np.ndarray, lab: _Labels, split: Split, cfg: EngineConfig
) -> tuple[float, float, float, float, np.ndarray]:
    """One regression with scikit-learn; returns (test acc, train acc, val acc, chosen l2, test rows correct)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit(rows: np.ndarray, l2: float) -> LogisticRegression:
        clf = LogisticRegression(C=1.0 / (l2 * len(rows)), max_iter=cfg.max_iter, tol=cfg.tol)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # both backends stop at max_iter alike
            warnings.simplefilter("ignore", UserWarning)  # "more unique classes than 50% of samples": expected
            clf.fit(Xg[rows], lab.y[rows])
        return clf

    grid = list(cfg.l2_grid)
    val_acc, l2 = math.nan, max(grid)
    if len(grid) > 1 and split.val.size:
        fit_rows = split.fit
        if len(np.unique(lab.y[fit_rows])) < 2:  # nothing to choose between: every strength predicts that class
            scores = {g: _acc(np.full(len(split.val), lab.y[fit_rows][0]), lab.y[split.val]) for g in grid}
        else:
            scores = {g: _acc(fit(fit_rows, g).predict(Xg[split.val]), lab.y[split.val]) for g in grid}
        correct = np.array([round(scores[g] * len(split.val)) for g in grid])
        l2 = grid[int(choose_l2(correct, len(split.val), grid, cfg.l2_rule))]
        val_acc = scores[l2]
    clf = fit(split.train, l2)
    test_ok = clf.predict(Xg[split.test]) == lab.y[split.test]  # [n_test]
    return (
        float(test_ok.mean()) if len(test_ok) else math.nan,
        _acc(clf.predict(Xg[split.train]), lab.y[split.train]),
        val_acc,
        l2,
        test_ok,
    )


# ----------------------------------------------------------------------------------------------------------
# entry point


def _groups_per_chunk(n_rows: int, d: int, buckets: Sequence[tuple[int, int]], cfg: EngineConfig) -> int:
    """Groups per chunk keeping one bucket's per-task features and solver state within
    ``cfg.memory_budget_mb``; ``buckets`` = (label sets, classes) of each bucket."""
    budget = cfg.memory_budget_mb * 2**20 / 4  # float32 elements
    # parameter-sized tensors: history pairs, iterates, path (and the fast solver's per-class preconditioner)
    state = 2 * cfg.history + 7 + len(cfg.l2_grid)
    copies = 3 if cfg.solver == "fast" else 2  # per-task feature copies (the fast solver keeps their squares too)
    per_group = max(L * (copies * n_rows * d + state * C * (d + 1)) for L, C in buckets) + n_rows * d
    return max(1, int(budget // max(per_group, 1)))


class FeatureSource(Protocol):
    """Feature groups the engine reads chunk by chunk (e.g. one per hook point x position)."""

    n_groups: int
    n_rows: int
    d: int

    def load(self, groups: Sequence[int]) -> Tensor:
        """Features of ``groups``: [len(groups), n_rows, d]."""
        ...


class TensorFeatures:
    """A ``FeatureSource`` over an in-memory tensor [G, N, d]."""

    def __init__(self, X: Tensor) -> None:
        if X.ndim != 3:
            raise ValueError(f"features must be [n_groups, N, d], got shape {tuple(X.shape)}")
        self.X = X
        self.n_groups, self.n_rows, self.d = X.shape

    def load(self, groups: Sequence[int]) -> Tensor:
        return self.X[list(groups)]


def run_probes(
    features: FeatureSource | Tensor,
    labels: np.ndarray,
    split: Split,
    cfg: EngineConfig,
    progress: Callable[[int], object] | None = None,
) -> list[ProbeFit]:
    """Fit every (feature group x label set) probe.

    features: a ``FeatureSource`` or a tensor [G, N, d]; labels: [K, N] int class ids (any integers; the classes
    are the distinct training values); split: row indices. ``progress(n)`` is called with the number of
    regressions finished after each step. Returns G * K fits in (group, label) order.
    """
    src: FeatureSource = TensorFeatures(features) if isinstance(features, Tensor) else features
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != src.n_rows:
        raise ValueError(f"labels must be [n_label_sets, {src.n_rows}], got shape {labels.shape}")
    G, K = src.n_groups, labels.shape[0]
    labs = [_map_labels(labels[k], split.train) for k in range(K)]
    fits = {(g, k): _base_fit(g, k, labs[k], split) for g in range(G) for k in range(K)}
    live = [k for k in range(K) if G and fits[(0, k)].status == "ok"]
    if progress and G:
        progress(G * (K - len(live)))
    if live:
        buckets = [[live[i] for i in b] for b in _buckets([len(labs[k].classes) for k in live], cfg.bucket_waste)]
        if cfg.backend == "torch":
            shapes = [(len(b), max(len(labs[k].classes) for k in b)) for b in buckets]
            gchunk = _groups_per_chunk(len(split.train), src.d, shapes, cfg)
        else:
            gchunk = G
        gchunk = min(gchunk, G)
        train_t = torch.as_tensor(split.train, device=cfg.device)
        for g0 in range(0, G, gchunk):
            groups = list(range(g0, min(G, g0 + gchunk)))
            X = src.load(groups).to(device=cfg.device, dtype=torch.float32)  # [G', N, d]
            X = _standardise(X, train_t)
            if cfg.backend == "torch":
                X = _rotate(X, train_t)
                for bucket in buckets:
                    *accs, test_ok = _fit_bucket_torch(X, [labs[k] for k in bucket], split, cfg)
                    for j, k in enumerate(bucket):
                        for i, g in enumerate(groups):
                            f = fits[(g, k)]
                            f.accuracy, f.train_accuracy, f.val_accuracy, f.l2 = (float(a[i, j]) for a in accs)
                            f.test_correct = test_ok[i, j]
                    if progress:
                        progress(len(groups) * len(bucket))
            else:
                Xn = X.cpu().double().numpy()  # the reference computes in float64
                with _blas_threads(torch.get_num_threads()):
                    for k in live:
                        for i, g in enumerate(groups):
                            f = fits[(g, k)]
                            f.accuracy, f.train_accuracy, f.val_accuracy, f.l2, f.test_correct = _fit_label_sklearn(
                                Xn[i], labs[k], split, cfg
                            )
                        if progress:
                            progress(len(groups))
                del Xn
            del X
    return [fits[(g, k)] for g in range(G) for k in range(K)]
