"""LinearRegressionProbe against sklearn's LinearRegression/Ridge and planted angles."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
lm = pytest.importorskip("sklearn.linear_model")

from pytest_invariance.errors import DataError, InvalidParameterError, NotFittedError  # noqa: E402
from pytest_invariance.probes import LinearRegressionProbe  # noqa: E402


def angle_data(n=600, d=12, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 60, n)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    Z = rng.normal(size=(n, d))
    X = Z - np.outer(Z @ u, u) + np.outer(angle / 30, u)  # the angle is exactly 30 * X.u
    y = angle + noise * rng.normal(size=n)
    return X, y


@pytest.mark.parametrize("alpha", [0.0, 3.0])
def test_coefficients_match_sklearn(alpha):
    X, y = angle_data(noise=5.0)
    ref = (lm.Ridge(alpha=alpha) if alpha else lm.LinearRegression()).fit(X, y)
    p = LinearRegressionProbe(alpha=alpha, n_permutations=0, n_bootstrap=0).fit(X, y)
    np.testing.assert_allclose(p.coef_[0], ref.coef_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(p.predict(X), ref.predict(X), rtol=1e-7, atol=1e-7)


def test_planted_angle_gives_near_zero_mae_and_bins():
    X, y = angle_data(noise=0.0)
    res = LinearRegressionProbe(bins=(0, 15, 30, 45), n_permutations=3, n_bootstrap=100).fit(X[:400], y[:400]).evaluate(X[400:], y[400:])
    assert res["mae"].value < 1e-6 and res["mae"].chance > 10 and res["mae"].p_value == pytest.approx(0.25)
    assert [b["bin"] for b in res["bins"]] == ["0-15", "15-30", "30-45", ">45", "total"]
    assert sum(b["count"] for b in res["bins"][:-1]) == res["bins"][-1]["count"] == 200
    assert all(b["estimate"].value < 1e-6 for b in res["bins"])


def test_noise_features_give_chance_level_mae():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(800, 5)), rng.uniform(0, 60, 800)
    mae = LinearRegressionProbe(n_permutations=0, n_bootstrap=300).fit(X[:500], y[:500]).evaluate(X[500:], y[500:])["mae"]
    assert mae.ci_low <= mae.chance * 1.02 and mae.value > 0.95 * mae.chance


def test_per_class_uses_each_class_regressor():
    rng = np.random.default_rng(1)
    n, d = 600, 6
    cls = rng.integers(0, 3, n)
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(3, d))
    y = np.einsum("nd,nd->n", X, W[cls]) + cls * 10.0
    p = LinearRegressionProbe(per_class=True, n_permutations=2, n_bootstrap=50).fit(X, y, classes=cls)
    assert p.coef_.shape == (3, d)
    res = p.evaluate(X, y, classes=cls)
    assert res["mae"].value < 1e-8 and res["mae_std"].value < 1e-8
    assert LinearRegressionProbe(n_permutations=0, n_bootstrap=0).fit(X, y).evaluate(X, y)["mae"].value > 1.0
    with pytest.raises(DataError, match="needs classes="):
        p.predict(X)
    with pytest.raises(DataError, match="not seen in fit"):
        p.predict(X[:2], classes=[7, 0])


def test_same_seed_same_numbers():
    X, y = angle_data(noise=4.0)
    run = lambda: LinearRegressionProbe(bins=(0, 30), n_permutations=2, n_bootstrap=80, random_state=5).fit(X[:400], y[:400]).evaluate(X[400:], y[400:])  # noqa: E731
    assert run() == run()


def test_bad_input():
    X, y = angle_data(n=50, d=4)
    p = LinearRegressionProbe(n_permutations=0, n_bootstrap=0)
    with pytest.raises(DataError, match="aligned"):
        p.fit(X, y[:-2])
    with pytest.raises(DataError, match="NaN"):
        p.fit(X, np.r_[y[:-1], np.inf])
    with pytest.raises(DataError, match="alpha > 0"):
        p.fit(X[:, :4].repeat(20, axis=1)[:30], y[:30])
    with pytest.raises(DataError, match="fewer than 2 samples"):
        LinearRegressionProbe(per_class=True).fit(X, y, classes=np.r_[np.zeros(49), 1])
    with pytest.raises(InvalidParameterError, match="The 'alpha' parameter of LinearRegressionProbe must be a float in the range \\[0, inf\\). Got -1 instead."):
        LinearRegressionProbe(alpha=-1).fit(X, y)
    with pytest.raises(NotFittedError):
        p.predict(X)
    # constant feature: documented fallback, it gets a zero coefficient (minimum norm), like sklearn
    Xc = np.c_[X, np.full(len(X), 3.0)]
    assert p.fit(Xc, y).coef_[0, -1] == pytest.approx(0.0, abs=1e-9)
