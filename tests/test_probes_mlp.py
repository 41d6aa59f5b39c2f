"""MLPProbe against planted factors, by-hand figures and sklearn's balanced accuracy."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
metrics = pytest.importorskip("sklearn.metrics")

from pytest_invariance.errors import DataError, InvalidParameterError, NotFittedError  # noqa: E402
from pytest_invariance.probes import LinearRegressionProbe, MLPProbe  # noqa: E402


def norm_factor(n=2400, d=16, seed=0):
    """A factor that is the norm of a 3-d feature subspace: no linear direction carries it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, np.linalg.norm(X[:, :3], axis=1)


def test_mlp_finds_a_norm_factor_that_linear_misses():
    X, y = norm_factor()
    tr, te = slice(0, 1800), slice(1800, None)
    lin = LinearRegressionProbe(n_permutations=0, n_bootstrap=300).fit(X[tr], y[tr]).evaluate(X[te], y[te])["mae"]
    mlp = MLPProbe(n_bootstrap=300, max_epochs=60).fit(X[tr], y[tr]).evaluate(X[te], y[te])["mae"]
    assert lin.ci_low <= lin.chance * 1.02 and lin.value > 0.95 * lin.chance  # linear: at chance
    assert mlp.value < 0.4 * mlp.chance and mlp.ci_high < lin.ci_low
    assert mlp.chance == pytest.approx(lin.chance, rel=0.02)  # both: MAE of the training mean


def test_mlp_mae_and_chance_by_hand():
    X, y = norm_factor(n=800)
    p = MLPProbe(n_bootstrap=100, max_epochs=5, val_fraction=0.25).fit(X[:600], y[:600])
    est = p.evaluate(X[600:], y[600:])["mae"]
    assert est.value == pytest.approx(np.abs(p.predict(X[600:]) - y[600:]).mean())
    assert est.chance == pytest.approx(np.abs(p.y_mean_[0] - y[600:]).mean())
    assert est.details["train_rows"] == 450 and est.details["val_rows"] == 150
    assert est.ci_low <= est.value <= est.ci_high


def test_mlp_stays_at_chance_on_noise():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(2000, 16)), rng.normal(size=2000)
    est = MLPProbe(n_bootstrap=300).fit(X[:1500], y[:1500]).evaluate(X[1500:], y[1500:])["mae"]
    assert est.ci_low <= est.chance * 1.02 and est.value > 0.97 * est.chance


def test_binary_balanced_error_matches_sklearn_and_columns_are_independent():
    X, _ = norm_factor(n=2000, seed=2)
    rng = np.random.default_rng(2)
    Y = np.column_stack([np.linalg.norm(X[:, :2], axis=1) > 1.6, rng.random(2000) < 0.3]).astype(int)
    p = MLPProbe(task="binary", n_bootstrap=200, max_epochs=60).fit(X[:1500], Y[:1500])
    res = p.evaluate(X[1500:], Y[1500:])
    pred = p.predict(X[1500:])
    for t in range(2):
        ref = 1 - metrics.balanced_accuracy_score(Y[1500:, t], pred[:, t])
        assert res["balanced_error"][t].value == pytest.approx(ref)
        assert res["accuracy"][t].value == pytest.approx(metrics.accuracy_score(Y[1500:, t], pred[:, t]))
    assert res["balanced_error"][0].value < 0.2  # the planted ring is read
    assert res["balanced_error"][1].ci_low <= 0.5 + 0.02  # the noise column is not
    # Column 0 alone gives the same network: the stacked columns do not interact.
    solo = MLPProbe(task="binary", n_bootstrap=0, max_epochs=60).fit(X[:1500], Y[:1500, :1])
    assert solo.weights_.epochs[0] > 0


def test_per_class_input_and_same_seed_same_numbers():
    X, y = norm_factor(n=900)
    classes = np.arange(900) % 3
    a = MLPProbe(n_bootstrap=50, max_epochs=3).fit(X[:600], y[:600], classes=classes[:600])
    b = MLPProbe(n_bootstrap=50, max_epochs=3).fit(X[:600], y[:600], classes=classes[:600])
    np.testing.assert_array_equal(a.predict(X[600:], classes[600:]), b.predict(X[600:], classes[600:]))
    with pytest.raises(DataError, match="classes="):
        a.predict(X[600:])
    with pytest.raises(DataError, match="not seen in fit"):
        a.predict(X[600:], classes[600:] + 5)


def test_groups_hold_out_whole_groups_and_subset_is_seeded():
    X, y = norm_factor(n=1000)
    groups = np.arange(1000) // 10
    p = MLPProbe(n_bootstrap=0, max_epochs=2, max_train=500, val_fraction=0.2).fit(X, y, groups=groups)
    assert p.n_train_ + p._fit_details["val_rows"] == 500


def test_bad_input():
    X, y = norm_factor(n=200)
    with pytest.raises(InvalidParameterError, match="'hidden' parameter of MLPProbe"):
        MLPProbe(hidden=0).fit(X, y)
    with pytest.raises(NotFittedError):
        MLPProbe().predict(X)
    with pytest.raises(DataError, match="0/1"):
        MLPProbe(task="binary").fit(X, y)
    with pytest.raises(DataError, match="constant"):
        MLPProbe().fit(X, np.ones(200))


@pytest.mark.parametrize("train_spread", [0.0, 1e-9])
def test_a_feature_flat_in_training_cannot_blow_up_test_predictions(train_spread):
    # A unit dead on the training rows (exactly, or up to rounding residue after an erasure)
    # but active on test: dividing by its training std gave an MAE of 7e10 degrees.
    rng = np.random.default_rng(0)
    X, Xte = rng.normal(size=(2000, 8)), rng.normal(size=(500, 8))
    y, yte = 10 * X[:, 0] + rng.normal(size=2000), 10 * Xte[:, 0]
    X[:, 5] = train_spread * rng.normal(size=2000)
    probe = MLPProbe(hidden=16, max_epochs=40, n_bootstrap=0, random_state=0).fit(X, y)
    active = Xte.copy()
    active[:, 5] = 0.5 * rng.normal(size=500)
    # its test values enter at most as far out as its training values did
    assert probe.evaluate(active, yte)["mae"].value < 0.5 * probe.evaluate(active, yte)["mae"].chance
    with_range = active.copy()
    with_range[:, 5] = np.clip(active[:, 5], X[:, 5].min(), X[:, 5].max())
    np.testing.assert_array_equal(probe.predict(active), probe.predict(with_range))


@pytest.mark.parametrize("case", ["outlier elsewhere", "tiny scale"])
def test_a_feature_that_varies_in_training_is_used_whatever_the_other_features_scales(case):
    # The factor lives in feature 0 alone. One huge value in another feature, or feature 0
    # at 1e-6 of the others' scale, must not hide it (a cut on small stds did: MAE = chance).
    rng = np.random.default_rng(1)
    X, Xte = rng.normal(size=(2000, 8)), rng.normal(size=(500, 8))
    y, yte = 10 * X[:, 0] + rng.normal(size=2000), 10 * Xte[:, 0]
    if case == "outlier elsewhere":
        X[3, 5] = 1e7
    else:
        X[:, 0] *= 1e-6
        Xte[:, 0] *= 1e-6
    mae = MLPProbe(hidden=16, max_epochs=40, n_bootstrap=0, random_state=0).fit(X, y).evaluate(Xte, yte)["mae"]
    assert mae.value < 0.3 * mae.chance


@pytest.mark.parametrize("n,d", [(300, 16), (1000, 8)])
def test_a_few_hundred_rows_are_fitted_as_well_as_sklearns_mlp_fits_them(n, d):
    # On few rows an epoch is 1-4 optimiser steps: validating after each stopped the probe
    # after ~20 steps at MAE 4.7 where sklearn's MLPRegressor reaches 1.3 (a leak understated).
    nn = pytest.importorskip("sklearn.neural_network")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    y = 10 * X[:, 0] + 3 * np.abs(X[:, 1]) + rng.normal(size=n)
    tr, te = slice(0, int(0.8 * n)), slice(int(0.8 * n), None)
    ours = MLPProbe(n_bootstrap=0).fit(X[tr], y[tr])
    mae = np.abs(ours.predict(X[te]) - y[te]).mean()
    # sklearn's reference trains on the rows ours trains on (ours holds out 20 % for early stopping).
    ref = nn.MLPRegressor(hidden_layer_sizes=(128,), max_iter=1000, random_state=0)
    ref.fit(X[tr][: int(0.8 * 0.8 * n)], y[tr][: int(0.8 * 0.8 * n)])
    ref_mae = np.abs(ref.predict(X[te]) - y[te]).mean()
    assert mae < 1.25 * ref_mae, (mae, ref_mae)
    assert ours.weights_.epochs[0] > 40  # trained past the 40 single-epoch rounds that stopped it before
