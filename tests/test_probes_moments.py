"""Least squares from sufficient statistics equals scikit-learn on the raw rows."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from pytest_invariance.probes import LinearRegressionProbe
from pytest_invariance.probes import functional as F


@pytest.fixture
def data():
    # ReLU-like float32 features (dead units included) of 3 classes, an angle-like target.
    rng = np.random.default_rng(4)
    X = np.maximum(rng.normal(size=(20_000, 12)) @ rng.normal(size=(12, 12)), 0).astype(np.float32)
    X[:, 5] = 0
    cls = rng.integers(0, 3, len(X))
    y = X[:, :4] @ [3.0, -1.0, 0.5, 2.0] + 10 * cls + rng.normal(size=len(X))
    return X, y, cls


def test_group_moments_equal_numpy(data):
    X, y, cls = data
    mo = F.group_moments(X, cls, 3, y[:, None])
    for c in range(3):
        Xc = X[cls == c].astype(np.float64)
        d = Xc - Xc.mean(0)
        np.testing.assert_allclose(mo.scatter[c], d.T @ d, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(mo.cross[c][:, 0], d.T @ (y[cls == c] - y[cls == c].mean()), rtol=1e-10, atol=1e-8)
        assert mo.counts[c] == (cls == c).sum()


def test_pooled_moments_give_the_global_fit(data):
    X, y, cls = data
    probe = LinearRegressionProbe(per_class=True, n_permutations=0, n_bootstrap=0).fit(X, y, classes=cls)
    pooled = probe.moments_.pooled()
    coef, b = F.ridge_solve(*F.ridge_eig(pooled.scatter[0], 0.0), pooled.cross[0], pooled.means[0], pooled.y_means[0])
    ref = LinearRegression().fit(X.astype(np.float64), y)
    np.testing.assert_allclose(X @ coef[0] + b[0], ref.predict(X), rtol=0, atol=1e-8)
    direct = LinearRegressionProbe(n_permutations=0, n_bootstrap=0).fit(X, y)
    np.testing.assert_allclose(coef[0], direct.coef_[0], rtol=1e-9, atol=1e-10)


def test_float16_features_fit_like_their_float32_values(data):
    X, y, cls = data
    h = X.astype(np.float16)
    a = LinearRegressionProbe(per_class=True, n_permutations=0, n_bootstrap=0).fit(h, y, classes=cls)
    b = LinearRegressionProbe(per_class=True, n_permutations=0, n_bootstrap=0).fit(h.astype(np.float32), y, classes=cls)
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_second_fit_on_the_same_rows_reuses_the_scatter_with_the_same_numbers(data, monkeypatch):
    # Above the size threshold the per-group scatter is kept by the digest of X and the codes:
    # a fit with other targets computes only cross-products, and gives what a first fit gives.
    X, y, cls = data
    monkeypatch.setattr(F, "_SCATTER_KEY_BYTES", 0)
    monkeypatch.setattr(F, "_SCATTERS", type(F._SCATTERS)())
    first = F.group_moments(X, cls, 3, y[:, None])
    Y2 = np.column_stack([y, -2 * y + 1])
    (kept_means, kept_scatter), = F._SCATTERS.values()
    saved = kept_scatter.copy()
    kept_scatter += 1.0  # marks the kept entry: a reuse returns it, a recomputation would not
    marked = F.group_moments(X, cls, 3, Y2)
    np.testing.assert_array_equal(marked.scatter, first.scatter + 1.0)
    kept_scatter[...] = saved
    again = F.group_moments(X, cls, 3, Y2)
    assert len(F._SCATTERS) == 1
    np.testing.assert_array_equal(again.scatter, first.scatter)
    np.testing.assert_allclose(again.cross[:, :, :1], first.cross, rtol=1e-12)  # other m: other GEMM kernel
    F._SCATTERS.clear()
    fresh = F.group_moments(X, cls, 3, Y2)
    np.testing.assert_array_equal(fresh.cross, again.cross)
    np.testing.assert_array_equal(fresh.scatter, again.scatter)
    # Other rows (one value changed) are not served the kept scatter.
    X2 = X.copy()
    X2[0, 0] += 1
    other = F.group_moments(X2, cls, 3, y[:, None])
    assert not np.array_equal(other.scatter, first.scatter) and len(F._SCATTERS) == 2
