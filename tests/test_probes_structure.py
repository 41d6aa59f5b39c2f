"""spectrum / spectrum_estimate (Fig. 6) and block_diagonalize (Eq. 1, Fig. 8)."""
from __future__ import annotations

import numpy as np
import pytest

from pytest_invariance.errors import DataError
from pytest_invariance.probes import block_diagonalize, spectrum, spectrum_estimate


def test_spectrum_matches_numpy_svd():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    out = spectrum(X, k=3)
    np.testing.assert_allclose(out["singular_values"], s, rtol=1e-8)
    np.testing.assert_allclose(out["explained_variance_ratio"].sum(), 1.0)
    assert out["top_k_share"] == pytest.approx((s[:3] ** 2).sum() / (s**2).sum())
    p = s / s.sum()
    assert out["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))


def test_rank_k_data_has_full_top_k_share():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 4)) @ rng.normal(size=(4, 30)) + 0.001 * rng.normal(size=(500, 30))
    est = spectrum_estimate(X, k=4, n_bootstrap=100)
    assert est.value > 0.999 and est.ci_low > 0.999 and est.chance == pytest.approx(4 / 30)
    iso = spectrum_estimate(rng.normal(size=(500, 30)), k=4, n_bootstrap=100, random_state=2)
    assert iso.value < 0.25 and iso.ci_low <= iso.value <= iso.ci_high


def test_spectrum_estimate_same_seed_identical():
    X = np.random.default_rng(3).normal(size=(400, 10)) * np.arange(1, 11)
    assert spectrum_estimate(X, 2, n_bootstrap=50, random_state=7) == spectrum_estimate(X, 2, n_bootstrap=50, random_state=7)


def test_spectrum_bad_input():
    with pytest.raises(DataError, match="constant"):
        spectrum(np.ones((10, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        spectrum(np.array([[1.0, np.nan], [2.0, 3.0]]))
    assert spectrum(np.random.default_rng(0).normal(size=(5, 40)))["singular_values"][4:].max() < 1e-6  # d > n: rank n-1


def test_known_blocks_come_back_grouped():
    rng = np.random.default_rng(0)
    L, per_block, per_class = 3, 4, 20
    labels = np.repeat(np.arange(L), per_class)
    owner = np.repeat(np.arange(L), per_block)
    D = 0.05 * rng.random((L * per_block, labels.size)) + 1.0 * (owner[:, None] == labels[None, :])
    shuffle = rng.permutation(len(owner))
    cols = rng.permutation(labels.size)
    res = block_diagonalize(D[shuffle][:, cols], labels[cols])
    np.testing.assert_array_equal(res.assignment[res.permutation], np.sort(owner))
    np.testing.assert_array_equal(shuffle[res.permutation] // per_block, np.sort(owner))
    blocks = res.reordered.reshape(L, per_block, L, per_class).mean(axis=(1, 3))
    assert np.all(np.diag(blocks) > 0.9) and np.all(blocks[~np.eye(L, dtype=bool)] < 0.1)
    assert res.error.shape == (L * per_block, L)


def test_block_diagonalize_dead_rows_and_errors():
    D = np.array([[0, 0, 5, 5], [0, 0, 0, 0], [5, 4, 0, 1]], dtype=float)
    res = block_diagonalize(D, ["a", "a", "b", "b"])
    assert res.permutation.tolist() == [2, 0, 1] and res.assignment[1] == -1
    with pytest.raises(DataError, match="non-negative"):
        block_diagonalize(-D, [0, 0, 1, 1])
    with pytest.raises(DataError, match="aligned"):
        block_diagonalize(D, [0, 1])
    with pytest.raises(DataError, match="2 distinct labels"):
        block_diagonalize(D, [0, 0, 0, 0])
