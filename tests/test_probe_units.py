"""A linear probe's figures do not depend on the embedding's units: scaled or shifted
embeddings give the same C / alpha and the same figures (the penalties are set in units of
the training rows' spread, probes.functional.spread)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from pytest_invariance.probes import AttributeSVMProbe  # noqa: E402
from pytest_invariance.probes.functional import spread  # noqa: E402
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
        assert got[m].details["alpha"] == ref[m].details["alpha"]
        assert got[m].value == pytest.approx(ref[m].value, rel=1e-9)
        assert (got[m].ci_low, got[m].ci_high) == pytest.approx((ref[m].ci_low, ref[m].ci_high), rel=1e-9)
    groups = np.arange(len(y)) // 6
    train = groups % 10 < 7
    a = factor_regression(X, y, train, groups, seed=0)
    b = factor_regression(X * scale + offset, y, train, groups, seed=0)
    assert (b.value, b.details["alpha"]) == (pytest.approx(a.value, rel=1e-9), a.details["alpha"])


def test_spread_is_the_rms_distance_to_the_mean():
    X, _ = _data(2, n=50, d=4)
    mean, rms = spread(X)
    np.testing.assert_allclose(mean, X.mean(0))
    assert rms == pytest.approx(np.sqrt(((X - X.mean(0)) ** 2).sum(1).mean()))
    assert spread(np.ones((5, 3)))[1] == 1.0  # constant rows: nothing to rescale
