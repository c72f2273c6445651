"""The person-clustered bootstrap (``probekit.stats``)."""

from __future__ import annotations

import numpy as np
import pytest

from probekit.stats import bootstrap_means, person_bootstrap, person_bootstrap_table, person_weights


def _clustered(rng: np.random.Generator, n_people: int, rows: int, mean: float) -> tuple[np.ndarray, np.ndarray]:
    """0/1 correctness with a strong per-person effect: person i is right with probability p_i ~ Beta around
    ``mean`` on each of their ``rows`` rows. The population accuracy is exactly ``mean``."""
    a = 0.3  # intra-person correlation about 0.6
    p = rng.beta(a * mean / (1 - mean), a, size=n_people)  # E[p] = mean
    correct = rng.random((n_people, rows)) < p[:, None]
    pids = np.repeat(np.arange(n_people) * 7 + 3, rows)  # arbitrary, non-contiguous ids
    return correct.reshape(-1).astype(float), pids


def test_interval_covers_the_true_accuracy_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    true, hits, reps = 0.6, 0, 300
    for r in range(reps):
        values, pids = _clustered(rng, 80, 5, true)
        iv = person_bootstrap(values, pids, n_boot=400, level=0.95, seed=r)
        hits += int(iv.low[0] <= true <= iv.high[0])
    coverage = hits / reps
    # percentile bootstrap on 80 clusters: close to 95% (a row-level bootstrap of these data covers ~70%)
    assert 0.89 <= coverage <= 0.99, coverage


def test_row_level_resampling_would_undercover_clustered_data() -> None:
    """The same check with the persons' rows split apart (each row its own person) covers far less: the test
    above would fail if the bootstrap resampled rows instead of people."""
    rng = np.random.default_rng(1)
    true, hits, reps = 0.6, 0, 100
    for r in range(reps):
        values, _ = _clustered(rng, 80, 5, true)
        iv = person_bootstrap(values, np.arange(len(values)), n_boot=200, seed=r)
        hits += int(iv.low[0] <= true <= iv.high[0])
    assert hits / reps < 0.85


def test_a_persons_rows_are_resampled_together() -> None:
    """Each person is all right or all wrong on 5 rows: every resampled mean is then a multiple of 1/P (a
    person's rows never split), and the interval is as wide as the person-level binomial, not the row-level one."""
    P = 50
    person_right = np.arange(P) % 2 == 0
    values = np.repeat(person_right, 5).astype(float)
    pids = np.repeat(np.arange(P), 5)
    means = bootstrap_means(values, pids, n_boot=500, seed=0)[0]
    k = means * P
    assert np.allclose(k, np.round(k))
    iv = person_bootstrap(values, pids, n_boot=2000, seed=0)
    width = iv.high[0] - iv.low[0]
    person_level = 2 * 1.96 * np.sqrt(0.25 / P)  # 0.277
    assert width == pytest.approx(person_level, rel=0.2)


def test_mask_groups_and_joint_resampling() -> None:
    rng = np.random.default_rng(2)
    values, pids = _clustered(rng, 60, 6, 0.5)
    groups = np.tile(np.array(["a", "b", "c"]), len(values) // 3)
    table = person_bootstrap_table(values, pids, groups, n_boot=300, level=0.9, seed=4)
    for g in "abc":
        sel = groups == g
        direct = person_bootstrap(values[sel], pids[sel], n_boot=300, level=0.9, seed=4)
        assert table[g] == pytest.approx((direct.low[0], direct.high[0]))
    # the same seed draws the same people: identical statistics give identical intervals
    two = person_bootstrap(np.stack([values, values]), pids, n_boot=300, seed=9)
    assert two.low[0] == two.low[1] and two.high[0] == two.high[1]


def test_reproducible_and_edge_cases() -> None:
    values, pids = np.array([1.0, 0.0, 1.0, 1.0]), np.array([0, 0, 1, 2])
    a = person_bootstrap(values, pids, n_boot=100, seed=3)
    b = person_bootstrap(values, pids, n_boot=100, seed=3)
    assert (a.low == b.low).all() and (a.high == b.high).all()
    assert person_weights(5, 7, 0).sum(1).tolist() == [5] * 7
    empty = person_bootstrap(np.zeros((2, 0)), np.zeros(0, dtype=int), n_boot=10)
    assert np.isnan(empty.low).all()
    with pytest.raises(ValueError, match="level"):
        person_bootstrap(values, pids, level=1.5)
    with pytest.raises(ValueError, match="pids"):
        person_bootstrap(values, pids[:2])


def test_qa_summary_rows_carry_person_clustered_intervals() -> None:
    from probekit.evaluate.qa import summarize

    # 40 people x 2 tasks: even people answer everything, odd people nothing
    records = [{"pid": p, "task": t, "exact_match": p % 2 == 0, "first_token": True}
               for p in range(40) for t in ("major", "company")]  # fmt: skip
    rows = {(r["task"], r["metric"]): r for r in summarize(records, "m", "ntp", n_boot=500)}
    assert list(rows)[:2] == [("major", "exact_match"), ("major", "first_token")]
    em = rows[("overall", "exact_match")]
    assert em["value"] == 0.5 and em["n"] == 80 and em["ci_low"] < 0.5 < em["ci_high"]
    # clustered by person: as wide as 40 independent people, not 80 independent answers
    assert em["ci_high"] - em["ci_low"] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 40), rel=0.25)
    assert rows[("company", "first_token")]["ci_low"] == 1.0
    assert "ci_low" not in summarize(records, "m", "ntp", n_boot=0)[0]
