"""A few extreme training rows do not set the probes' feature scaling (probes/_standardise.py).

One row at 1e6 on every dimension made every feature's std ~5e4 times the rest's, and
planted binary, categorical and continuous factors read at chance with their gates passed.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from pytest_invariance.probes import AttributeSVMProbe, MultinomialProbe  # noqa: E402
from pytest_invariance.probes._standardise import Standardiser, robust_band  # noqa: E402
from pytest_invariance.studies.factors import _continuous  # noqa: E402

TR, VA, TE = np.arange(0, 400), np.arange(400, 500), np.arange(500, 600)


def _planted(seed=0, n=600, d=32):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    yb, yc, yr = rng.integers(0, 2, n), rng.integers(0, 3, n), rng.uniform(0, 1, n)
    X[:, 0] += 3 * yb
    X[:, 1] += 3 * yc
    X[:, 2] += 3 * yr
    return X, yb, yc, yr


def _figures(X, yb, yc, yr):
    svm = AttributeSVMProbe(n_permutations=0, n_bootstrap=20).fit(X[TR], yb[TR, None], X[VA], yb[VA, None])
    be = svm.evaluate(X[TE], yb[TE, None])["attr_0"]["balanced_error"]
    multi = MultinomialProbe(C_grid=(0.001, 0.01, 0.1, 1.0), n_permutations=0, n_bootstrap=20, max_iter=200)
    ba = multi.fit(X[TR], yc[TR], X[VA], yc[VA]).evaluate(X[TE], yc[TE])["balanced_accuracy"]
    return be, ba, _continuous(X, yr, TR, VA, TE, seed=0)["mae"]


@pytest.mark.parametrize("rows,dims,value", [(1, 32, 1e6), (1, 3, 1e3), (1, 1, 1e4), (3, 32, -1e5), (3, 1, 30.0)])
def test_extreme_training_rows_do_not_hide_planted_factors(rows, dims, value):
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X, yb, yc, yr = _planted()
    clean = _figures(X, yb, yc, yr)
    X[:rows, :dims] = value  # inside the training rows
    be, ba, mae = _figures(X, yb, yc, yr)
    assert be.details["outlier_rows"] == rows and ba.details["outlier_rows"] == rows
    assert be.value == pytest.approx(clean[0].value, abs=0.03), (be.value, clean[0].value)
    assert ba.value == pytest.approx(clean[1].value, abs=0.05), (ba.value, clean[1].value)
    assert mae.value <= clean[2].value + 0.03, (mae.value, clean[2].value)
    if (rows, dims) == (1, 32):  # the reference with a plain StandardScaler reads chance here
        Z = StandardScaler().fit(X[TR]).transform(X)
        ref = LinearSVC(C=1.0, class_weight="balanced").fit(Z[TR], yb[TR]).predict(Z[TE])
        assert 1 - balanced_accuracy_score(yb[TE], ref) > 0.4


def test_rows_without_outliers_are_standardised_exactly():
    X, *_ = _planted(1)
    st = Standardiser.fit(X)
    assert st.outlier_rows == 0
    np.testing.assert_array_equal(st.mean, X.sum(0, dtype=np.float64) / len(X))
    np.testing.assert_allclose(st.std, X.std(0), rtol=1e-12)


@pytest.mark.parametrize("kind", ["mode_on_10pc", "sparse_relu", "one_hot", "lognormal", "constant"])
def test_units_that_hold_a_factor_in_a_minority_of_rows_keep_every_value(kind):
    # a logit or one-hot-like unit far out on 10% of the rows, a unit at rest on 95% of them,
    # a binary unit, a heavy-tailed unit: their values hold information and none is clipped
    rng = np.random.default_rng(2)
    n = 5000
    on = rng.random(n) < (0.05 if kind == "sparse_relu" else 0.1)
    x = {"mode_on_10pc": np.where(on, rng.normal(40, 1, n), rng.normal(0, 0.5, n)),
         "sparse_relu": np.where(on, rng.exponential(30, n), 0.0),
         "one_hot": on.astype(float) * 7,
         "lognormal": rng.lognormal(0, 1.0, n),
         "constant": np.full(n, 5.0)}[kind]
    X = np.column_stack([x, rng.normal(size=n)])
    st = Standardiser.fit(X)
    np.testing.assert_allclose(st.transform(X), (X - st.mean) / st.std, rtol=1e-12)
    if kind in ("mode_on_10pc", "one_hot", "constant"):  # nothing outside the band: plain mean and std
        assert st.outlier_rows == 0
        np.testing.assert_allclose(st.mean, X.mean(0), rtol=1e-12)


def test_test_rows_beyond_the_training_range_are_extrapolated():
    # yaw linear in one dimension; training spans +-8 degrees, test +-90 (held-out profiles):
    # clipping test rows to the training range saturated the predictions (at +-30: MAE 21
    # vs 2.7), and to 3 widths beyond it read 6.9 where ridge reads 0.3
    from sklearn.linear_model import RidgeCV

    rng = np.random.default_rng(3)
    n, d = 600, 32
    y = np.concatenate([rng.uniform(-8, 8, 480), rng.uniform(-90, 90, 120)])  # 11x the training range
    X = rng.normal(0, 1, (n, d))
    X[:, 0] = y / 8 + 0.03 * rng.normal(size=n)
    tr, va, te = np.arange(360), np.arange(360, 480), np.arange(480, 600)
    got = _continuous(X, y, tr, va, te, seed=0)["mae"]
    ref = np.abs(RidgeCV(alphas=10.0 ** np.arange(-6, 5)).fit(X[tr], y[tr]).predict(X[te]) - y[te]).mean()
    # within a degree of ridge's (0.23) against chance 45; clipped predictions read 6.9 or 21
    assert got.value < ref + 1.0 and got.value < 0.03 * got.chance, (got.value, ref, got.chance)


def test_one_huge_dimension_does_not_hold_the_others_constant():
    # an uninformative unit with std 1e8 beside 63 at std 1: a cut on small stds relative to
    # the RMS std held every other feature constant and read the flag at chance
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    X, yb, yc, yr = _planted(4)
    X[:, 5] *= 1e8
    be = _figures(X, yb, yc, yr)[0]
    Z = StandardScaler().fit(X[TR]).transform(X)
    ref = 1 - balanced_accuracy_score(yb[TE], LinearSVC(C=1.0, class_weight="balanced").fit(Z[TR], yb[TR]).predict(Z[TE]))
    assert be.value == pytest.approx(ref, abs=0.04), (be.value, ref)


def test_test_rows_clipped_beyond_the_margin_are_counted_in_every_probes_details():
    # a row to predict farther than MARGIN widths out (or active in a unit dead in training) is
    # clipped; the figures said nothing of it
    from pytest_invariance.probes import MLPProbe
    from pytest_invariance.probes._standardise import MARGIN

    X, yb, yc, yr = _planted(5)
    X[TR, 7] = 0.0  # a unit dead on the training rows
    X[TE, 7] = 0.0
    X[VA, 7] = 0.0
    clean = _figures(X, yb, yc, yr)
    assert not any("extrapolated_rows" in e.details for e in clean)
    width = X[TR, 3].max() - X[TR, 3].min()
    X[TE[:4], 3] = X[TR, 3].max() + (MARGIN + 1) * width  # 4 rows beyond the margin
    X[TE[4:6], 3] = X[TR, 3].max() + (MARGIN - 1) * width  # 2 inside it: not clipped
    X[TE[6], 7] = 0.5  # the dead unit active on one row
    for est in _figures(X, yb, yc, yr):
        assert est.details["extrapolated_rows"] == 5, est.details
    mlp = MLPProbe(task="regression", hidden=8, max_epochs=5, n_bootstrap=20, random_state=0).fit(X[TR], yr[TR])
    assert mlp.evaluate(X[TE], yr[TE])["mae"].details["extrapolated_rows"] == 5
    assert _continuous(X, yr, TR, VA, TE, seed=0)["r2"].details["extrapolated_rows"] == 5
