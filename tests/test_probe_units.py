"""A linear probe's figures do not depend on the embedding's units: scaled or shifted
embeddings give the same C / alpha and the same figures, and a factor carried by one
feature rescaled alone is still read (the classifiers fit on features standardised on the
training rows, probes/_standardise.py; the ridge probes let validation choose between the
embedding's units and standardised features, probes/_ridge.py)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from pytest_invariance.probes import AttributeSVMProbe  # noqa: E402
from pytest_invariance.studies.faces import factor_regression  # noqa: E402
from pytest_invariance.studies.factors import _continuous  # noqa: E402


def _data(seed=0, n=600, d=32):
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / 6) + 0.3  # post-ReLU-like, offset
    y = X[:, :3].sum(1) + rng.normal(size=n) * 0.8
    return X, y


SPLITS = (np.arange(0, 350), np.arange(350, 450), np.arange(450, 600))
UNITS = [(1e-5, 0.0), (1e3, 0.0), (1.0, 100.0)]  # (scale, offset): before this, 1e-5 read as chance


@pytest.mark.parametrize("scale,offset", UNITS)
def test_svm_figures_do_not_depend_on_units(scale, offset):
    X, y = _data()
    yb = (y > np.median(y)).astype(int)[:, None]
    tr, va, te = SPLITS

    def run(Z):
        p = AttributeSVMProbe(n_permutations=3, n_bootstrap=50).fit(Z[tr], yb[tr], Z[va], yb[va])
        return p, p.evaluate(Z[te], yb[te])["attr_0"]

    p0, ref = run(X)
    p1, got = run(X * scale + offset)
    assert p1.C_[0] == p0.C_[0]
    for m in ("balanced_error", "fn_rate", "fp_rate"):
        assert got[m].value == ref[m].value and got[m].chance == pytest.approx(ref[m].chance)
    # the weights come back in the embedding's units: same decision values
    np.testing.assert_allclose(p1.decision_function(X[te] * scale + offset), p0.decision_function(X[te]),
                               rtol=1e-6, atol=1e-6 * np.abs(p0.decision_function(X[te])).max())


@pytest.mark.parametrize("scale,offset", UNITS)
def test_ridge_figures_do_not_depend_on_units(scale, offset):
    X, y = _data(1)
    ref, got = _continuous(X, y, *SPLITS, seed=0), _continuous(X * scale + offset, y, *SPLITS, seed=0)
    for m in ("mae", "r2"):
        assert (got[m].details["scaling"], got[m].details["alpha"]) == (ref[m].details["scaling"], ref[m].details["alpha"])
        assert got[m].value == pytest.approx(ref[m].value, rel=1e-9)
        assert (got[m].ci_low, got[m].ci_high) == pytest.approx((ref[m].ci_low, ref[m].ci_high), rel=1e-9)
    groups = np.arange(len(y)) // 6
    train = groups % 10 < 7
    a = factor_regression(X, y, train, groups, seed=0)
    b = factor_regression(X * scale + offset, y, train, groups, seed=0)
    assert (b.value, b.details["scaling"], b.details["alpha"]) == (pytest.approx(a.value, rel=1e-9),
                                                                   a.details["scaling"], a.details["alpha"])


def test_figures_do_not_depend_on_one_features_scale():
    # One feature's units changed alone (e.g. a unit whose activations are 1e-4 of the others'):
    # with one penalty for the whole embedding, a factor carried by it was read at chance.
    X, y = _data(3)
    Xs = X.copy()
    Xs[:, 1] *= 1e-4
    ref, got = _continuous(X, y, *SPLITS, seed=0), _continuous(Xs, y, *SPLITS, seed=0)
    # the standardised fit is unchanged by the rescaling; validation picks it (or a better one)
    assert got["mae"].details["scaling"] == "standardised"
    assert got["mae"].value <= ref["mae"].ci_high and got["mae"].value < 0.8 * got["mae"].chance
    yb = (y > np.median(y)).astype(int)[:, None]
    tr, va, te = SPLITS
    a, b = (AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(Z[tr], yb[tr], Z[va], yb[va])
            .evaluate(Z[te], yb[te])["attr_0"]["balanced_error"].value for Z in (X, Xs))
    assert b == pytest.approx(a, abs=1 / len(te))


@pytest.mark.parametrize("scale", [1e-3, 1e-6])
def test_a_continuous_factor_in_one_low_variance_dimension_is_read_as_standardised_ridge_reads_it(scale):
    lm = pytest.importorskip("sklearn.linear_model")
    pre = pytest.importorskip("sklearn.preprocessing")
    rng = np.random.default_rng(0)
    n = 500
    y = rng.uniform(0, 1, n)
    X = rng.normal(size=(n, 64))
    X[:, 0] = scale * (y + 0.05 * rng.normal(size=n))
    tr, va, te = np.arange(300), np.arange(300, 400), np.arange(400, n)
    got = _continuous(X, y, tr, va, te, seed=0)["mae"]
    Z = pre.StandardScaler().fit(X[tr]).transform(X)
    ref = np.abs(lm.RidgeCV(alphas=10.0 ** np.arange(-6, 5)).fit(Z[tr], y[tr]).predict(Z[te]) - y[te]).mean()
    assert ref < 0.3 * got.chance and got.value == pytest.approx(ref, rel=0.1), (got.value, ref, got.chance)
