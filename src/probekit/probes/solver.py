"""A batched L-BFGS for many independent multinomial logistic regressions at once (the torch probe backend).

Every regression ("task") t has its own features X[t] ([n, d]), labels Y[t] ([n]), set of valid classes and
L2 strength, and minimises

    f_t(W, b) = mean_i CE(softmax(W x_i + b), y_i) + lam_t / 2 * ||W||^2        (the bias is not penalised)

which is scikit-learn's ``LogisticRegression(C=1 / (lam_t * n))`` objective. Parameters of all tasks are one
tensor ``theta [T, C, d + 1]`` (class-major weights, the bias in the last column; classes padded to a common C
and masked with a -inf bias). The optimiser keeps a separate history, step length and stopping test per task
(per-task scalars are ``[T]`` tensors), so every result is that regression's own optimum.

What makes it fast on a CPU, without changing any objective:

* **Tasks leave the batch when they stop.** Converged tasks are removed (with their features and history), and
  a backtracking line search re-evaluates only the tasks whose step was rejected, so the cost is the sum of the
  tasks' own iterations, not the slowest task's count times the batch.
* **A diagonal preconditioner that is nearly exact at the start.** The engine rotates each feature group into
  the eigenbasis of its training covariance (an orthogonal change of basis: the L2 penalty, the optimum's
  logits and every prediction are unchanged), where ``X^T X / n`` is diagonal. At the uniform start the
  weights' Hessian is ``(X^T X / n + lam * C * I) / C``, so the initial inverse Hessian of the two-loop
  recursion is an elementwise division: the strong correlations of residual-stream features cost nothing.
* **Curvature refreshes** (optional, ``lbfgs(curvature_every=k)``): away from the start the classes'
  curvatures differ by orders of magnitude (frequent vs rare classes, confident vs uncertain predictions), so
  every k iterations the preconditioner becomes the exact diagonal of the Hessian at the current point (one
  matrix product the size of a gradient's), which cuts the iterations of weakly regularised fits.
* **Cache-sized blocks.** Loss and gradient are written out by hand (no autograd graph) and computed block by
  block, each block's logits small enough to stay in the L2 cache for the softmax passes; one exp per logit;
  class-major layout (logits ``X @ W^T``, gradient ``P^T @ X``), the faster form for batched matrix multiplies.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-task inner product: [T, ...] x [T, ...] -> [T].

    On the CPU through numpy's fused einsum loop: the optimiser's vectors are large (tasks x classes x d) and
    ``torch.linalg.vecdot`` on them is several times slower (it multiplies into a temporary, then sums)."""
    a2, b2 = a.reshape(len(a), -1), b.reshape(len(b), -1)
    if a2.device.type == "cpu" and a2.dtype == b2.dtype:
        return torch.from_numpy(np.einsum("tp,tp->t", a2.numpy(), b2.numpy()))
    return torch.linalg.vecdot(a2, b2)


def _max_abs(a: Tensor) -> Tensor:
    """Per-task max |a|: [T, ...] -> [T] (two read-only passes; ``vector_norm(ord=inf)`` is far slower)."""
    a2 = a.reshape(len(a), -1)
    return torch.maximum(a2.amax(1), -a2.amin(1))


class Problem:
    """T regressions: task t reads X[t] ([n, d]), predicts Y[t] ([n], ids in 0..C-1) among ``valid[t]``
    ([C] bool) with L2 strength ``lam[t]``. ``budget``: logits elements per block of work (see ``loss_grad``)."""

    def __init__(self, X: Tensor, Y: Tensor, valid: Tensor, lam: Tensor, budget: int = 2**19) -> None:
        self.X, self.Y, self.valid, self.budget = X, Y, valid, budget
        self.T, self.n, self.d = X.shape
        self.C = valid.shape[1]
        self.mask = torch.where(valid, 0.0, -torch.inf).to(X.dtype)  # [T, C]
        self.padded = not bool(valid.all())
        self.var = (X * X).mean(1) if self.n else torch.ones(self.T, self.d, dtype=X.dtype, device=X.device)  # [T, d]
        self.X2: Tensor | None = None  # X * X [T, n, d], made by the first curvature refresh and kept
        self.set_lam(lam)

    def set_lam(self, lam: Tensor) -> None:
        """Set the L2 strengths [T] (and the preconditioner that depends on them)."""
        self.lam = lam
        mu = lam * self.valid.sum(-1).to(lam.dtype)  # [T]: lam * C_t
        self.pinv = torch.ones(self.T, 1, self.d + 1, dtype=self.X.dtype, device=self.X.device)  # [T, 1, d + 1]
        self.pinv[:, 0, : self.d] = 1.0 / (self.var + mu[:, None])

    def take(self, idx: Tensor) -> Problem:
        """The tasks ``idx`` only (a copy)."""
        sub = Problem.__new__(Problem)
        sub.X, sub.Y, sub.valid, sub.lam = self.X[idx], self.Y[idx], self.valid[idx], self.lam[idx]
        sub.mask, sub.var, sub.pinv = self.mask[idx], self.var[idx], self.pinv[idx]
        sub.X2 = None if self.X2 is None else self.X2[idx]
        sub.budget, sub.n, sub.d, sub.C, sub.T = self.budget, self.n, self.d, self.C, len(idx)
        sub.padded = self.padded
        return sub

    def loss_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(f [T], grad [T, C, d + 1]) at theta [T, C, d + 1].

        Worked in blocks of tasks (and rows, for wide tasks) whose logits fit the CPU's L2 cache (``budget``
        elements), so the softmax passes after each matrix multiply read cache, not memory."""
        T, n, d, C = self.T, self.n, self.d, self.C
        # the L2 term and its gradient first; the loss's are accumulated block by block below
        f = 0.5 * self.lam * (_dot(theta, theta) - theta[..., d].pow(2).sum(-1))  # [T]
        grad = theta * self.lam[:, None, None]  # [T, C, d + 1]
        grad[..., d] = 0.0  # the bias is not penalised
        tb = max(1, self.budget // max(1, n * C))  # tasks per block
        rb = n if tb > 1 else max(16, self.budget // C)  # rows per block
        for t0 in range(0, T, tb):
            ts = slice(t0, t0 + tb)
            W, gW = theta[ts, :, :d], grad[ts, :, :d]  # [t, C, d]
            bias = (theta[ts, :, d] + self.mask[ts])[:, None, :]  # [t, 1, C]
            for r0 in range(0, n, rb):
                Xc = self.X[ts, r0 : r0 + rb]  # [t, m, d]
                idx = self.Y[ts, r0 : r0 + rb, None]  # [t, m, 1]
                Z = torch.baddbmm(bias, Xc, W.transpose(1, 2))  # [t, m, C] logits
                z_y = Z.gather(-1, idx)  # [t, m, 1]
                z_max = Z.amax(-1, keepdim=True)
                # unnormalised softmax in place. The clamp keeps exp out of its slow underflow path (inputs
                # below about -87, and the -inf of masked classes) and the gradient's matrix multiply away from
                # denormal numbers (both cost 10x); e^-60 = 9e-27 changes no float32 sum
                P = Z.sub_(z_max).clamp_min_(-60.0).exp_()
                norm = P.sum(-1, keepdim=True)  # [t, m, 1]
                f[ts] += (norm.log() + z_max - z_y).sum((1, 2)) / n  # cross-entropy = logsumexp - z_y
                P.div_(norm).scatter_add_(-1, idx, torch.full(idx.shape, -1.0, dtype=P.dtype, device=P.device))
                gW.baddbmm_(P.transpose(1, 2), Xc, alpha=1.0 / n)  # [t, C, d]
                grad[ts, :, d] += P.sum(1) / n
        if self.padded:
            grad *= self.valid[:, :, None]  # masked (padding) classes stay exactly where they are
        return f, grad

    def squared(self) -> Tensor:
        """X * X [T, n, d], made once and kept (by this problem and the ``take`` and copies made after)."""
        if self.X2 is None:
            self.X2 = self.X * self.X
        return self.X2

    def refresh_curvature(self, theta: Tensor) -> None:
        """Replace the preconditioner by the exact diagonal of the Hessian at ``theta``: for class c and feature
        j, ``mean_i p_ic (1 - p_ic) x_ij^2 + lam`` (the bias: ``mean_i p_ic (1 - p_ic)``). One matrix product of
        the size of a gradient's; away from the uniform start the classes' curvatures differ by orders of
        magnitude (frequent vs rare classes, confident vs uncertain), which the start's preconditioner ignores."""
        T, n, d, C = self.T, self.n, self.d, self.C
        X2 = self.squared()
        pinv = torch.empty(T, C, d + 1, dtype=self.X.dtype, device=self.X.device)
        tb = max(1, self.budget // max(1, n * C))
        for t0 in range(0, T, tb):
            ts = slice(t0, t0 + tb)
            bias = (theta[ts, :, d] + self.mask[ts])[:, None, :]
            Z = torch.baddbmm(bias, self.X[ts], theta[ts, :, :d].transpose(1, 2))  # [t, n, C]
            P = torch.softmax(Z, -1)
            Q = P.sub_(P * P)  # p (1 - p)
            h = torch.bmm(Q.transpose(1, 2), X2[ts]).div_(n)  # [t, C, d]
            pinv[ts, :, :d] = h + self.lam[ts, None, None]
            pinv[ts, :, d] = Q.sum(1) / n
        floor = 1e-3 * pinv.amax(1, keepdim=True)  # no class's curvature far below the largest (padding: 0)
        self.pinv = 1.0 / torch.maximum(pinv, floor.clamp_min(1e-12))

    def precondition(self, q: Tensor) -> Tensor:
        """M^-1 q with M = diag(X^T X / n) + lam C I for the weights and 1 for the bias (see the module doc)."""
        return q * self.pinv

    def inv_norm(self, q: Tensor) -> Tensor:
        """q . M^-1 q per task [T]."""
        return _dot(q * self.pinv, q)


def predict(X: Tensor, theta: Tensor, valid: Tensor, chunk: int = 4096) -> Tensor:
    """Predicted class ids [T, m] for rows X [T, m, d] under theta [T, C, d + 1] (classes outside ``valid``
    [T, C] are never predicted)."""
    T, m, d = X.shape
    mask = torch.where(valid, 0.0, -torch.inf).to(X.dtype)[:, None, :]  # [T, 1, C]
    W, b = theta[..., :d].transpose(1, 2), theta[..., d][:, None, :] + mask
    out = [torch.baddbmm(b, X[:, s : s + chunk], W).argmax(-1) for s in range(0, m, chunk)]
    return torch.cat(out, dim=1) if out else torch.zeros(T, 0, dtype=torch.long, device=X.device)


def _acceptable(fn: Tensor, gn: Tensor, f: Tensor, gd: Tensor, t: Tensor, d: Tensor) -> Tensor:
    """Per task [T]: is the step ``t`` along ``d`` (loss ``f`` and slope ``gd`` = g . d at its start; loss ``fn``
    and gradient ``gn`` at its end) acceptable? Armijo, or Hager & Zhang's approximate Wolfe conditions: near the
    optimum, float32 cannot resolve the loss decrease Armijo asks for, but the new slope gn . d is accurate."""
    slope = _dot(gn, d)
    armijo = fn <= f + 1e-4 * t * gd
    f_tol = 1e-6 * f.abs().clamp_min(1.0)  # round-off allowance of the approximate Wolfe test
    approx_wolfe = (fn <= f + f_tol) & (slope >= 0.9 * gd) & (slope <= -0.8 * gd)
    return armijo | approx_wolfe


def lbfgs(
    prob: Problem, theta: Tensor, max_iter: int, tol: float, history: int, curvature_every: int = 0
) -> tuple[Tensor, Tensor]:
    """Minimise every task of ``prob`` from ``theta`` [T, C, d + 1]; returns (theta, iterations [T]).

    A task stops when max |gradient| <= ``tol`` (scikit-learn's test), after three steps in a row that change
    its loss only within round-off without a new smallest gradient, when no step along its direction is
    acceptable, or after ``max_iter`` iterations. Backtracking line search from the unit step (the
    preconditioned direction is Hessian-scaled), accepting Armijo decrease or Hager & Zhang's approximate Wolfe
    conditions (``_acceptable``), which let float32 converge to tolerances below its loss resolution.
    ``curvature_every`` > 0: start from, and every that many iterations refresh, the exact diagonal of the
    Hessian as the preconditioner (``Problem.refresh_curvature``, on a copy of ``prob``)."""
    T = theta.shape[0]
    if curvature_every:
        prob.squared()  # cached on the caller's problem: the next call on it (the L2 path's next strength) reuses it
        prob = copy.copy(prob)  # the refreshed preconditioner stays with this call
        prob.refresh_curvature(theta)
    theta = theta.clone()  # updated in place
    out_theta = theta.clone()
    out_iters = torch.zeros(T, dtype=torch.long, device=theta.device)
    ids = torch.arange(T, device=theta.device)  # original task of each batch row
    f, g = prob.loss_grad(theta)
    hist: list[tuple[Tensor, Tensor, Tensor]] = []  # (s, y, rho); rho = 0 marks a skipped pair for that task
    gamma = torch.ones_like(f)
    active = torch.ones_like(f, dtype=torch.bool)
    iters = torch.zeros_like(f, dtype=torch.long)
    eps = torch.finfo(theta.dtype).eps
    g_max = _max_abs(g)  # [T] max |gradient| now
    g_best = g_max.clone()  # smallest max |gradient| so far
    stall = torch.zeros_like(iters)  # consecutive steps without progress
    for it in range(max_iter):
        if curvature_every and it and it % curvature_every == 0:
            prob.refresh_curvature(theta)
            gamma = torch.ones_like(f)
        active &= g_max > tol
        n_done = int((~active).sum())
        if n_done == len(ids):
            break
        if n_done and n_done * 8 >= len(ids):  # drop stopped tasks: they cost nothing from here on
            done, keep = (~active).nonzero().squeeze(1), active.nonzero().squeeze(1)
            out_theta[ids[done]], out_iters[ids[done]] = theta[done], iters[done]
            ids, theta, f, g, gamma, iters, active, g_max, g_best, stall = (
                t[keep] for t in (ids, theta, f, g, gamma, iters, active, g_max, g_best, stall)
            )
            hist = [(s_[keep], y_[keep], rho[keep]) for s_, y_, rho in hist]
            prob = prob.take(keep)
        # two-loop recursion with the preconditioned initial inverse Hessian, per-task scalars
        q = g.clone()
        alphas = []
        for s_, y_, rho in reversed(hist):
            a = rho * _dot(s_, q)
            q.addcmul_(y_, a[:, None, None], value=-1.0)
            alphas.append(a)
        q = prob.precondition(q).mul_(gamma[:, None, None])
        for (s_, y_, rho), a in zip(hist, reversed(alphas)):
            q.addcmul_(s_, (a - rho * _dot(y_, q))[:, None, None])
        d = q.neg_()
        gd = _dot(g, d)
        bad = gd >= 0  # not a descent direction: preconditioned steepest descent for that task
        if bool(bad.any()):
            sd = -prob.precondition(g)
            d = torch.where(bad[:, None, None], sd, d)
            gd = torch.where(bad, _dot(g, sd), gd)
        d *= active[:, None, None]
        # line search: the unit step for every task, then halve only the rejected ones
        t = torch.ones_like(f)
        fn, gn = prob.loss_grad(theta + d)
        accepted = ~active | _acceptable(fn, gn, f, gd, t, d)
        for _ in range(30):
            if bool(accepted.all()):
                break
            idx = (~accepted).nonzero().squeeze(1)
            t[idx] *= 0.5
            fs, gs = prob.take(idx).loss_grad(theta[idx] + t[idx, None, None] * d[idx])
            fn[idx], gn[idx] = fs, gs
            accepted[idx] = _acceptable(fs, gs, f[idx], gd[idx], t[idx], d[idx])
        stuck = ~accepted  # no decrease found: the task stops where it is
        if bool(stuck.any()):
            t = torch.where(stuck, torch.zeros_like(t), t)
            fn = torch.where(stuck, f, fn)
            gn = torch.where(stuck[:, None, None], g, gn)
            active &= ~stuck
        s_ = d.mul_(t[:, None, None])
        y_ = gn - g
        sy, yHy = _dot(s_, y_), prob.inv_norm(y_)
        good = active & (sy > 1e-10 * yHy)
        hist.append((s_, y_, torch.where(good, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))))
        gamma = torch.where(good, sy / yHy.clamp_min(1e-30), gamma)
        if len(hist) > history:
            hist.pop(0)
        iters += active.long()
        # three steps in a row that change the loss only within round-off and bring no new smallest gradient:
        # float precision has the last word
        g_max = _max_abs(gn)
        flat = ((f - fn).abs() <= eps * f.abs().clamp_min(1.0)) & (g_max >= g_best)
        stall = torch.where(flat, stall + 1, torch.zeros_like(stall))
        g_best = torch.minimum(g_best, g_max)
        theta.add_(s_)
        f, g = fn, gn
        active &= stall < 3
    out_theta[ids], out_iters[ids] = theta, iters
    return out_theta, out_iters
