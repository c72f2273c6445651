"""Batched multinomial logistic-regression probes.

A probing sweep is a grid of *feature groups* (one per hook point x token position: the activations a probe
reads) crossed with *label sets* (one per attribute x target kind: what it predicts). Every (group, label set)
pair is an independent multinomial logistic regression:

    minimise   mean_i CE(softmax(W^T x_i + b), y_i) + l2/2 * ||W||^2        (the bias is not penalised)

which is exactly scikit-learn's ``LogisticRegression(C=1/(l2 * n_train))`` objective. The torch backend solves
all regressions of a bucket of label sets at once: features of G groups are stacked ``[G, n, d]``, the
parameters of every (group, label set) are one tensor ``[G, K, (d + 1) * C]`` (label sets of similar class
counts share a bucket, padded classes masked out), and a batched L-BFGS keeps a separate history, step length
and stopping test for each regression (per-task scalars are ``[G, K]`` tensors), so every result is that
regression's own optimum, not a compromise of a joint problem. Two things make it converge in fewer steps than a
plain L-BFGS, without changing the objective: the L2 grid is walked as a regularisation path (strongest first,
each fit warm-started from the previous one), and the search direction is preconditioned with
``(X^T X / n + l2 * C * I)^-1`` (the Hessian at the start, up to scale), which undoes the strong correlations
of residual-stream features. Loss and gradient are written out by hand (no autograd graph) and accumulated
over row chunks, so memory stays bounded.

Protocol (both backends, identical): features are standardised per group with the training rows' mean and
std; classes are the distinct training labels (a test label never seen in training is an error, counted in
``n_test_unseen``); the L2 strength is chosen per regression from ``l2_grid`` by accuracy on a validation
subset of the *training* rows (fit on the rest), then the regression is refit on all training rows with that
strength. The test rows are used once, for the reported accuracy. A label set with a single training class
is reported with status ``"skipped: single class"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

Backend = Literal["torch", "sklearn"]
BACKENDS: tuple[str, ...] = ("torch", "sklearn")


@dataclass
class EngineConfig:
    """Settings shared by both backends (the sklearn backend ignores the torch-only memory settings)."""

    backend: Backend = "torch"
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1)
    max_iter: int = 100  # L-BFGS iterations (scikit-learn's default)
    tol: float = 1e-4  # stop when max |gradient| of the mean loss falls below this (scikit-learn's gtol)
    history: int = 5  # L-BFGS memory (5 pairs suffice with the preconditioner; scikit-learn keeps 10)
    memory_budget_mb: float = 1024.0  # torch: working memory for one chunk of groups
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown probe engine {self.backend!r}; valid engines are {list(BACKENDS)}")
        self.l2_grid = tuple(float(v) for v in self.l2_grid)
        if not self.l2_grid or any(v <= 0 for v in self.l2_grid):
            raise ValueError(f"l2_grid must be a non-empty list of positive numbers, got {list(self.l2_grid)}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")


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
# torch backend: loss/gradient and a batched L-BFGS with per-task state


class _Problem:
    """Mean cross-entropy + L2 of G x K regressions: every group g has features X[g] ([n, d], shared by its K
    regressions); regression k predicts Y[k] ([n], ids in 0..C-1) among the classes ``valid[k]`` ([C] bool)
    with L2 strength lam[g, k]. Parameters theta [G, K, d*C + C]: the weights W (d x C, row-major), then the
    bias (C).

    ``precondition`` applies M^-1 with M = Sigma_g + lam * C_k * I (Sigma_g = X_g^T X_g / n): the Hessian of the
    weights at the uniform start is (Sigma_g + lam C_k I) / C_k, so L-BFGS started from this metric needs far
    fewer iterations on the strongly correlated features of a residual stream. It changes the path, not the
    objective or its optimum.
    """

    def __init__(self, X: Tensor, Y: Tensor, valid: Tensor, lam: Tensor, row_chunk: int) -> None:
        self.X, self.Y, self.valid, self.lam, self.row_chunk = X, Y, valid, lam, row_chunk
        self.G, self.n, self.d = X.shape
        self.K, self.C = valid.shape
        self.dC = self.d * self.C
        self.mask_bias = torch.where(valid, 0.0, -torch.inf).to(X.dtype)  # [K, C]
        self._eig: tuple[Tensor, Tensor] | None = None

    def unpack(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """theta [G, K, P] -> (W [G, d, K*C], masked bias [G, 1, K*C])."""
        G, K, d, C = self.G, self.K, self.d, self.C
        W = theta[..., : self.dC].reshape(G, K, d, C).permute(0, 2, 1, 3).reshape(G, d, K * C)
        return W, (theta[..., self.dC :] + self.mask_bias).reshape(G, 1, K * C)

    def logits(self, Xc: Tensor, W: Tensor, bm: Tensor) -> Tensor:
        """[G, m, K, C] logits for rows Xc [G, m, d] (-inf for masked classes)."""
        return torch.baddbmm(bm, Xc, W).view(self.G, Xc.shape[1], self.K, self.C)

    def loss_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(f [G, K], grad [G, K, P]) at theta [G, K, P]."""
        G, n, d, K, C = self.G, self.n, self.d, self.K, self.C
        W, bm = self.unpack(theta)
        f = torch.zeros(G, K, dtype=theta.dtype, device=theta.device)
        gW = torch.zeros(G, d, K * C, dtype=theta.dtype, device=theta.device)
        gb = torch.zeros(G, K, C, dtype=theta.dtype, device=theta.device)
        for s in range(0, n, self.row_chunk):
            Xc = self.X[:, s : s + self.row_chunk]  # [G, m, d]
            m = Xc.shape[1]
            logp = torch.log_softmax(self.logits(Xc, W, bm), dim=-1)  # [G, m, K, C]
            idx = self.Y[:, s : s + m].T.reshape(1, m, K, 1).expand(G, m, K, 1)
            f -= logp.gather(-1, idx).squeeze(-1).sum(1) / n  # [G, K]
            P = logp.exp_()  # softmax; masked classes are exactly 0
            P.scatter_add_(-1, idx, torch.full(idx.shape, -1.0, dtype=P.dtype, device=P.device))
            gW.baddbmm_(Xc.transpose(1, 2), P.view(G, m, K * C), alpha=1.0 / n)  # [G, d, K*C]
            gb += P.sum(1) / n
        grad = torch.cat([gW.view(G, d, K, C).permute(0, 2, 1, 3).reshape(G, K, self.dC), gb], dim=-1)
        w = theta[..., : self.dC]
        f += 0.5 * self.lam * torch.linalg.vecdot(w, w)
        grad[..., : self.dC] += self.lam[..., None] * w
        return f, grad

    def subset(self, groups: Tensor) -> "_Problem":
        """The same problem restricted to some groups (for dropping converged ones)."""
        sub = _Problem(self.X[groups], self.Y, self.valid, self.lam[groups], self.row_chunk)
        if self._eig is not None:
            sub._eig = self._eig[0][groups], self._eig[1][groups]
        return sub

    def _eigen(self) -> tuple[Tensor, Tensor, Tensor]:
        """(eigenvalues [G, d], eigenvectors [G, d, d] of X^T X / n, mu = lam * C_k [G, K])."""
        if self._eig is None:
            sigma = torch.bmm(self.X.transpose(1, 2), self.X) / max(self.n, 1)  # [G, d, d]
            evals, U = torch.linalg.eigh(sigma.double())
            self._eig = evals.clamp_min(0).to(self.X.dtype), U.to(self.X.dtype)
        return self._eig[0], self._eig[1], self.lam * self.valid.sum(-1).to(self.X.dtype)

    def precondition(self, q: Tensor) -> Tensor:
        """M^-1 q per regression (see the class docstring); the bias part is scaled by 1 / (1 + lam C_k)."""
        G, K, d, C = self.G, self.K, self.d, self.C
        evals, U, mu = self._eigen()
        w = q[..., : self.dC].view(G, K, d, C)
        z = torch.einsum("gij,gkic->gkjc", U, w) / (evals[:, None, :, None] + mu[..., None, None])
        out = torch.empty_like(q)
        out[..., : self.dC] = torch.einsum("gij,gkjc->gkic", U, z).reshape(G, K, self.dC)
        out[..., self.dC :] = q[..., self.dC :] / (1.0 + mu[..., None])
        return out

    def inv_norm(self, q: Tensor) -> Tensor:
        """q . M^-1 q per regression [G, K] (half the work of ``precondition``)."""
        G, K, d, C = self.G, self.K, self.d, self.C
        evals, U, mu = self._eigen()
        z = torch.einsum("gij,gkic->gkjc", U, q[..., : self.dC].view(G, K, d, C))
        w = (z * z).sum(-1) / (evals[:, None, :] + mu[..., None])  # [G, K, d]
        b = q[..., self.dC :]
        return w.sum(-1) + (b * b).sum(-1) / (1.0 + mu)

    def predict(self, rows: Tensor, theta: Tensor) -> Tensor:
        """Predicted class ids [G, len(rows), K]."""
        W, bm = self.unpack(theta)
        out = [self.logits(self.X[:, rows[s : s + self.row_chunk]], W, bm).argmax(-1)
               for s in range(0, len(rows), self.row_chunk)]  # fmt: skip
        return torch.cat(out, dim=1) if out else torch.zeros(self.G, 0, self.K, dtype=torch.long, device=self.X.device)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-task inner product: [G, K, P] x [G, K, P] -> [G, K]."""
    return torch.linalg.vecdot(a, b)


def _lbfgs(prob: _Problem, theta: Tensor, max_iter: int, tol: float, history: int) -> tuple[Tensor, Tensor]:
    """Minimise every regression of ``prob`` with its own L-BFGS state (history pairs, step length, stopping
    test); returns (theta, iterations [G, K]). Backtracking Armijo line search per regression. Groups whose
    regressions have all stopped are dropped from the batch, so they cost nothing while others go on."""
    out_theta, out_iters = theta.clone(), torch.zeros(theta.shape[:2], dtype=torch.long, device=theta.device)
    rows = torch.arange(theta.shape[0], device=theta.device)  # original group of each batch row
    f, g = prob.loss_grad(theta)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, rho); rho = 0 marks a skipped pair for that task
    gamma = torch.ones_like(f)
    active = torch.ones_like(f, dtype=torch.bool)
    iters = torch.zeros_like(f, dtype=torch.long)
    eps = 64 * torch.finfo(theta.dtype).eps
    for _ in range(max_iter):
        active &= g.abs().amax(-1) > tol
        if not bool(active.any()):
            break
        done = ~active.any(-1)  # [G']: every regression of the group has stopped
        if int(done.sum()) >= max(1, len(rows) // 4):
            out_theta[rows[done]], out_iters[rows[done]] = theta[done], iters[done]
            keep = (~done).nonzero().squeeze(1)
            rows, theta, f, g, gamma, active, iters = (t[keep] for t in (rows, theta, f, g, gamma, active, iters))
            hist = [(s_[keep], y_[keep], rho[keep]) for s_, y_, rho in hist]
            prob = prob.subset(keep)
        # two-loop recursion with the preconditioned initial Hessian, per-task scalars
        q = g.clone()
        alphas = []
        for s_, y_, rho in reversed(hist):
            a = rho * _dot(s_, q)
            q.addcmul_(a[..., None], y_, value=-1.0)
            alphas.append(a)
        q = prob.precondition(q) * gamma[..., None]
        for (s_, y_, rho), a in zip(hist, reversed(alphas)):
            q.addcmul_((a - rho * _dot(y_, q))[..., None], s_)
        d = -q
        gd = _dot(g, d)
        bad = gd >= 0  # not a descent direction: steepest descent for that task
        if bool(bad.any()):
            d = torch.where(bad[..., None], -g, d)
            gd = torch.where(bad, -_dot(g, g), gd)
        d *= active[..., None]
        t = torch.ones_like(f)  # the preconditioned direction is already Hessian-scaled at the start
        accepted = ~active
        for _ in range(30):
            fn, gn = prob.loss_grad(theta + t[..., None] * d)
            accepted |= fn <= f + 1e-4 * t * gd
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        stuck = ~accepted  # no decrease found: the task stops where it is
        if bool(stuck.any()):
            t = torch.where(stuck, torch.zeros_like(t), t)
            active &= ~stuck
            fn, gn = prob.loss_grad(theta + t[..., None] * d)
        s_ = t[..., None] * d
        y_ = gn - g
        sy, yHy = _dot(s_, y_), prob.inv_norm(y_)
        good = active & (sy > 1e-10 * yHy)
        hist.append((s_, y_, torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))))
        gamma = torch.where(good, sy / yHy.clamp_min(1e-30), gamma)
        if len(hist) > history:
            hist.pop(0)
        iters += active.long()
        flat = (f - fn).abs() <= eps * torch.maximum(f.abs(), fn.abs()).clamp_min(1.0)
        theta, f, g = theta + s_, fn, gn
        active &= ~flat
    out_theta[rows], out_iters[rows] = theta, iters
    return out_theta, out_iters


def _standardise(X: Tensor, train: Tensor) -> Tensor:
    """Standardise X [G, N, d] per group with the training rows' mean and std."""
    Xt = X[:, train]
    mu = Xt.mean(dim=1, keepdim=True)  # [G, 1, d]
    sd = Xt.std(dim=1, keepdim=True, unbiased=False)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
    return (X - mu) / sd


def _buckets(sizes: Sequence[int], n_grid: int, max_width: int = 4096, waste: float = 1.5) -> list[list[int]]:
    """Group label sets of similar class counts so padding to the largest wastes at most ``waste`` x."""
    out: list[list[int]] = []
    cur: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        cand = cur + [i]
        width = sizes[i] * len(cand)
        if cur and (width > waste * sum(sizes[j] for j in cand) or width * n_grid > max_width):
            out.append(cur)
            cur = [i]
        else:
            cur = cand
    return out + [cur] if cur else out


def _fit_bucket_torch(
    X: Tensor, labs: Sequence[_Labels], split: Split, cfg: EngineConfig, row_chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fit label sets ``labs`` on the groups of X [G, N, d]. Returns (test acc, train acc, val acc, l2), each
    [G, len(labs)]."""
    G, _, d = X.shape
    L, R = len(labs), len(cfg.l2_grid)
    C = max(len(lab.classes) for lab in labs)
    dev, dt = X.device, X.dtype
    Y = torch.as_tensor(np.stack([np.maximum(lab.y, 0) for lab in labs]), device=dev)  # [L, N]; -1 only in test
    Y_true = torch.as_tensor(np.stack([lab.y for lab in labs]), device=dev)
    grid = torch.tensor(cfg.l2_grid, dtype=dt, device=dev)

    def valid_for(rows: Tensor, reps: int) -> Tensor:
        v = torch.zeros(L, C, dtype=torch.bool, device=dev)
        v.scatter_(1, Y[:, rows], True)
        return v.repeat_interleave(reps, dim=0)

    train = torch.as_tensor(split.train, device=dev)
    choice = torch.full((G, L), int(torch.argmax(grid)), dtype=torch.long, device=dev)  # default: strongest
    val_acc = np.full((G, L), math.nan)
    theta0 = torch.zeros(G, L, d * C + C, dtype=dt, device=dev)
    if R > 1 and split.val.size:
        # the regularisation path: strongest L2 first, each fit warm-started from the previous solution
        fit = torch.as_tensor(split.fit, device=dev)
        val = torch.as_tensor(split.val, device=dev)
        prob = _Problem(X[:, fit], Y[:, fit], valid_for(fit, 1), grid.new_empty(G, L), row_chunk)
        order = torch.argsort(grid, descending=True).tolist()
        theta = torch.zeros(G, L, d * C + C, dtype=dt, device=dev)
        thetas = torch.empty(R, G, L, d * C + C, dtype=dt, device=dev)
        accs = torch.empty(G, L, R, device=dev)
        val_prob = _Problem(X[:, val], Y[:, val], prob.valid, prob.lam, row_chunk)
        for r in order:
            prob.lam = grid[r].expand(G, L).contiguous()
            theta, _ = _lbfgs(prob, theta, cfg.max_iter, cfg.tol, cfg.history)
            thetas[r] = theta
            pv = val_prob.predict(torch.arange(len(val), device=dev), theta)  # [G, n_val, L]
            accs[:, :, r] = (pv == Y[:, val].T[None]).float().mean(1)
        # the highest validation accuracy; ties go to the strongest regularisation
        choice = torch.tensor(order, device=dev)[accs[:, :, order].argmax(dim=-1)]  # [G, L]
        val_acc = accs.gather(2, choice[..., None]).squeeze(-1).cpu().numpy()
        theta0 = thetas.permute(1, 2, 0, 3).gather(2, choice[..., None, None].expand(G, L, 1, thetas.shape[-1]))
        theta0 = theta0.squeeze(2)
    lam = grid[choice]  # [G, L]
    prob = _Problem(X[:, train], Y[:, train], valid_for(train, 1), lam, row_chunk)
    theta, _ = _lbfgs(prob, theta0.contiguous(), cfg.max_iter, cfg.tol, cfg.history)
    full = _Problem(X, Y, prob.valid, lam, row_chunk)

    def acc(rows: np.ndarray) -> np.ndarray:
        r = torch.as_tensor(rows, device=dev)
        pred = full.predict(r, theta)  # [G, n, L]
        return (pred == Y_true[:, r].T[None]).float().mean(1).cpu().numpy()

    return acc(split.test), acc(split.train), val_acc, lam.cpu().numpy()


# ----------------------------------------------------------------------------------------------------------
# sklearn backend (reference)


def _fit_label_sklearn(
    Xg: np.ndarray, lab: _Labels, split: Split, cfg: EngineConfig
) -> tuple[float, float, float, float]:
    """One regression with scikit-learn; returns (test acc, train acc, val acc, chosen l2)."""
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
        l2 = max(sorted(grid, reverse=True), key=lambda g: scores[g])
        val_acc = scores[l2]
    clf = fit(split.train, l2)
    return (
        _acc(clf.predict(Xg[split.test]), lab.y[split.test]),
        _acc(clf.predict(Xg[split.train]), lab.y[split.train]),
        val_acc,
        l2,
    )


# ----------------------------------------------------------------------------------------------------------
# entry point


def _groups_per_chunk(n_rows: int, d: int, width: int, history: int, budget_mb: float) -> tuple[int, int]:
    """(groups per chunk, rows per loss chunk) keeping features, logits and L-BFGS state within the budget;
    ``width`` = regressions x classes of the widest bucket."""
    budget = budget_mb * 2**20 / 4  # float32 elements
    row_chunk = max(64, min(max(n_rows, 1), int(budget / 8 / max(1, 3 * width))))
    per_group = 4 * n_rows * d + 3 * row_chunk * width + (2 * history + 8) * (d + 1) * width
    return max(1, int(budget // max(per_group, 1))), row_chunk


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
    progress: Callable[[int], None] | None = None,
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
        R = len(cfg.l2_grid)
        buckets = [[live[i] for i in b] for b in _buckets([len(labs[k].classes) for k in live], R)]
        width = max(len(b) * R * max(len(labs[k].classes) for k in b) for b in buckets)
        if cfg.backend == "torch":
            gchunk, row_chunk = _groups_per_chunk(len(split.train), src.d, width, cfg.history, cfg.memory_budget_mb)
        else:
            gchunk, row_chunk = G, 0
        gchunk = min(gchunk, G)
        train_t = torch.as_tensor(split.train, device=cfg.device)
        for g0 in range(0, G, gchunk):
            groups = list(range(g0, min(G, g0 + gchunk)))
            X = src.load(groups).to(device=cfg.device, dtype=torch.float32)  # [G', N, d]
            X = _standardise(X, train_t)
            if cfg.backend == "torch":
                for bucket in buckets:
                    accs = _fit_bucket_torch(X, [labs[k] for k in bucket], split, cfg, row_chunk)
                    for j, k in enumerate(bucket):
                        for i, g in enumerate(groups):
                            f = fits[(g, k)]
                            f.accuracy, f.train_accuracy, f.val_accuracy, f.l2 = (float(a[i, j]) for a in accs)
                    if progress:
                        progress(len(groups) * len(bucket))
            else:
                Xn = X.cpu().numpy()
                for k in live:
                    for i, g in enumerate(groups):
                        f = fits[(g, k)]
                        f.accuracy, f.train_accuracy, f.val_accuracy, f.l2 = _fit_label_sklearn(
                            Xn[i], labs[k], split, cfg
                        )
                    if progress:
                        progress(len(groups))
                del Xn
            del X
    return [fits[(g, k)] for g in range(G) for k in range(K)]
