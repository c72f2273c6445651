"""Uncertainty for accuracies measured on people: the person-clustered bootstrap.

A test set of biography entries, QA items or probe rows holds several rows per person (five entries under
``multi5``, six questions per person), and rows of one person are not independent: a model that knows a person
tends to get all of their rows right. The bootstrap therefore resamples *people* with replacement and takes all
of a resampled person's rows together (the cluster bootstrap): one resample draws ``P`` people out of the ``P`` test
people, and the statistic is recomputed on the union of their rows (a person drawn twice counts twice).

``person_bootstrap`` works on many statistics at once (every probe of a sweep shares its test people), so one
set of resampling weights serves a whole table: ``values`` [F, N] holds, per statistic f and row i, the row's
contribution (1/0 for correct/incorrect; the difference of two such indicators for selectivity). The statistic
of a resample is the weighted mean of a row's value over the resampled people's rows. The same ``seed`` gives
the same resamples, so intervals are reproducible, and statistics computed with the same ``pids`` and seed are
resampled jointly (e.g. a probe and its control task).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probekit.errors import UserError

DEFAULT_N_BOOT = 1000
DEFAULT_LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """Percentile bootstrap intervals of F statistics (NaN where a statistic had no rows)."""

    low: np.ndarray  # [F]
    high: np.ndarray  # [F]


def person_weights(n_people: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_people] int counts: how often each person is drawn in each resample (each row sums to
    ``n_people``): a multinomial draw of ``n_people`` out of ``n_people`` with replacement."""
    if n_people < 1:
        raise UserError("a bootstrap needs at least one person")
    if n_boot < 1:
        raise UserError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_people, np.full(n_people, 1.0 / n_people), size=n_boot)


def bootstrap_means(
    values: np.ndarray, pids: np.ndarray, n_boot: int = DEFAULT_N_BOOT, seed: int = 0, mask: np.ndarray | None = None
) -> np.ndarray:
    """[F, n_boot] the mean of ``values`` [F, N] (a [N] vector is one statistic) over the rows of each resample
    of the people ``pids`` [N] (NaN where a resample drew none of a statistic's people).

    ``mask`` [F, N] (bool, optional) marks the rows each statistic uses (e.g. QA items of one attribute); rows
    outside it, and NaN values, are ignored, and a person with no rows left in a statistic contributes nothing to it.
    """
    v = np.atleast_2d(np.asarray(values, dtype=np.float64))  # [F, N]
    pids = np.asarray(pids)
    if pids.ndim != 1 or pids.shape[0] != v.shape[1]:
        raise ValueError(f"pids must be [N] with N = {v.shape[1]} rows, got shape {pids.shape}")
    m = ~np.isnan(v)
    if mask is not None:
        m &= np.broadcast_to(np.asarray(mask, dtype=bool), v.shape)
    F = v.shape[0]
    if v.shape[1] == 0:
        return np.full((F, n_boot), np.nan)
    people, inv = np.unique(pids, return_inverse=True)  # inv [N]: person index of each row
    P = len(people)
    # per-person sums of values and row counts: [F, P] each
    sums = np.zeros((F, P))
    counts = np.zeros((F, P))
    vm = np.where(m, v, 0.0)
    for f in range(F):  # bincount per statistic: exact sums, O(F * N)
        sums[f] = np.bincount(inv, weights=vm[f], minlength=P)
        counts[f] = np.bincount(inv, weights=m[f].astype(np.float64), minlength=P)
    W = person_weights(P, n_boot, seed).astype(np.float64)  # [B, P]
    num = sums @ W.T  # [F, B]
    den = counts @ W.T  # [F, B]
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den  # NaN where a resample drew none of the statistic's people


def person_bootstrap(
    values: np.ndarray,
    pids: np.ndarray,
    n_boot: int = DEFAULT_N_BOOT,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    mask: np.ndarray | None = None,
) -> Interval:
    """Percentile intervals of the mean of ``values`` [F, N] over rows, resampling the people ``pids`` [N] with
    replacement (``bootstrap_means``): the ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the
    resampled means, each [F] (NaN for a statistic without rows, and everywhere when ``n_boot`` is 0)."""
    if not 0.0 < level < 1.0:
        raise UserError(f"the interval level must be in (0, 1), got {level}")
    if n_boot == 0:
        F = np.atleast_2d(np.asarray(values)).shape[0]
        return Interval(np.full(F, np.nan), np.full(F, np.nan))
    stats = bootstrap_means(values, pids, n_boot, seed, mask)  # [F, B]
    F = stats.shape[0]
    low, high = np.full(F, np.nan), np.full(F, np.nan)
    has = ~np.isnan(stats).all(1)
    if has.any():
        lo_hi = np.nanquantile(stats[has], [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=1)  # [2, F']
        low[has], high[has] = lo_hi[0], lo_hi[1]
    return Interval(low, high)


def person_bootstrap_table(
    correct: np.ndarray, pids: np.ndarray, groups: np.ndarray, n_boot: int, level: float, seed: int
) -> dict[object, tuple[float, float]]:
    """Intervals of the accuracy of each group of rows (e.g. per attribute): ``correct`` [N] 0/1, ``pids`` [N],
    ``groups`` [N] labels. Every group is resampled with the same people draws. Returns ``{group: (low, high)}``."""
    groups = np.asarray(groups)
    keys = list(dict.fromkeys(groups.tolist()))
    mask = np.stack([groups == k for k in keys])  # [G, N]
    values = np.broadcast_to(np.asarray(correct, dtype=np.float64), mask.shape)
    iv = person_bootstrap(values, pids, n_boot, level, seed, mask=mask)
    return {k: (float(iv.low[i]), float(iv.high[i])) for i, k in enumerate(keys)}


__all__ = ["DEFAULT_LEVEL", "DEFAULT_N_BOOT", "Interval", "bootstrap_means", "person_bootstrap",
           "person_bootstrap_table", "person_weights"]  # fmt: skip
