"""Bootstrap CI, permutation chance and p-values."""
from __future__ import annotations

import numpy as np
import pytest

from pytest_invariance.errors import InvalidParameterError
from pytest_invariance.probes import bootstrap_ci, p_value, permutation_chance


def test_bootstrap_matches_a_loop_reference_and_is_reproducible():
    x = np.random.default_rng(0).normal(size=300)
    lo, hi, samples = bootstrap_ci(x, n_bootstrap=500, random_state=1)
    rng = np.random.default_rng(123)
    loop = np.array([x[rng.integers(0, 300, 300)].mean() for _ in range(2000)])
    assert lo == pytest.approx(np.quantile(loop, 0.025), abs=0.02) and hi == pytest.approx(np.quantile(loop, 0.975), abs=0.02)
    lo2, hi2, samples2 = bootstrap_ci(x, n_bootstrap=500, random_state=1)
    assert (lo, hi) == (lo2, hi2) and np.array_equal(samples, samples2)
    assert bootstrap_ci(x, n_bootstrap=500, random_state=2)[0] != lo


def test_bootstrap_callable_ratio_and_coverage():
    y = np.r_[np.ones(50), np.zeros(150)]
    wrong = np.r_[np.ones(10), np.zeros(190)]  # fn rate 10 / 50 = 0.2
    lo, hi, s = bootstrap_ci(lambda c: (c @ wrong) / (c @ y), n=200, n_bootstrap=400)
    assert lo < 0.2 < hi and s.shape == (400,)
    with pytest.raises(InvalidParameterError, match="needs n="):
        bootstrap_ci(lambda c: c.sum(1))
    with pytest.raises(InvalidParameterError, match="confidence"):
        bootstrap_ci(y, confidence=1.5)


def test_permutation_chance_and_p_value():
    y = np.arange(20.0)
    mean, values = permutation_chance(lambda yp: float(np.corrcoef(yp, y)[0, 1]), y, k=30, random_state=0)
    assert values.shape == (30,) and abs(mean) < 0.2
    m2, v2 = permutation_chance(lambda yp: float(np.corrcoef(yp, y)[0, 1]), y, k=30, random_state=0)
    assert np.array_equal(values, v2)
    _, vb = permutation_chance(lambda yp: np.array([np.corrcoef(r, y)[0, 1] for r in yp]), y, k=30, random_state=0, batched=True)
    assert np.array_equal(values, vb)
    assert p_value(1.0, values) == pytest.approx(1 / 31)
    assert p_value(-1.0, values, higher_is_better=False) == pytest.approx(1 / 31)
    assert p_value(-1.0, values) == pytest.approx(1.0)
    with pytest.raises(InvalidParameterError):
        permutation_chance(lambda yp: 0.0, y, k=0)


def test_cluster_bootstrap_resamples_whole_groups():
    # rows of one identity are not independent: with groups, a resample draws identities, so
    # 10 identical rows per identity give the CI of the 30 identities' own values, not of 300 rows
    from pytest_invariance.probes.stats import bootstrap_ci

    rng = np.random.default_rng(0)
    per_identity = rng.integers(0, 2, 30).astype(float)
    rows, ids = np.repeat(per_identity, 10), np.repeat(np.arange(30), 10)
    lo_g, hi_g, s_g = bootstrap_ci(rows, groups=ids, n_bootstrap=500, random_state=3)
    lo_i, hi_i, s_i = bootstrap_ci(per_identity, n_bootstrap=500, random_state=3)
    assert np.allclose(s_g, s_i) and (lo_g, hi_g) == pytest.approx((lo_i, hi_i))
    lo_r, hi_r, _ = bootstrap_ci(rows, n_bootstrap=500, random_state=3)
    assert hi_r - lo_r < 0.5 * (hi_g - lo_g)  # as if 300 independent rows
    # ratio statistics (callables) see each row's count as its group's
    lo_c, hi_c, _ = bootstrap_ci(lambda c: (c @ rows) / c.sum(1), n=300, groups=ids, n_bootstrap=500, random_state=3)
    assert (lo_c, hi_c) == pytest.approx((lo_i, hi_i))
    with pytest.raises(InvalidParameterError, match="groups has 299 rows"):
        bootstrap_ci(rows, groups=ids[:-1])


def test_cluster_bootstrap_of_a_mean_weighs_groups_by_their_rows():
    # groups of unequal size: a resample's mean is its rows' sum over its row count (dividing by
    # n, as for rows, biased it); the same as drawing the groups by hand
    from pytest_invariance.probes.stats import bootstrap_ci, bootstrap_counts

    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(12), rng.integers(1, 20, 12))
    rows = rng.normal(size=len(ids)) + ids
    _, _, got = bootstrap_ci(rows, groups=ids, n_bootstrap=300, random_state=4)
    by_hand = []
    for c in bootstrap_counts(12, 300, 4):
        w = c[:, ids]
        by_hand.append((w @ rows) / w.sum(1))
    assert got == pytest.approx(np.concatenate(by_hand), rel=1e-12)
