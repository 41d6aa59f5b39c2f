"""MAVProbe against a cosine nearest-centroid reference."""
from __future__ import annotations

import numpy as np
import pytest

from pytest_invariance.errors import DataError, InvalidParameterError, NotFittedError
from pytest_invariance.probes import MAVProbe


def clusters(n=600, d=8, k=4, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centers = np.abs(rng.normal(size=(k, d))) * 2
    y = rng.integers(0, k, n)
    return centers[y] + spread * rng.normal(size=(n, d)), y


def test_matches_cosine_nearest_centroid_reference():
    X, y = clusters()
    mav = np.stack([X[y == c].mean(0) for c in range(4)])
    ref = np.argmax((X / np.linalg.norm(X, axis=1, keepdims=True)) @ (mav / np.linalg.norm(mav, axis=1, keepdims=True)).T, axis=1)
    p = MAVProbe(n_bootstrap=100).fit(X, y)
    np.testing.assert_allclose(p.centroids_, mav)
    np.testing.assert_array_equal(p.predict(X), ref)
    acc = p.evaluate(X, y)["accuracy"]
    assert acc.value == pytest.approx((ref == y).mean()) and acc.chance == 0.25
    assert set(acc.details["per_class_error"]) == {"0", "1", "2", "3"}
    # scoring predictions made once gives the same figure, interval and details
    assert p.evaluate_predictions(ref, y)["accuracy"] == acc
    with pytest.raises(DataError):
        p.evaluate_predictions(ref[:-1], y)


def test_euclidean_matches_sklearn_nearest_centroid():
    neighbors = pytest.importorskip("sklearn.neighbors")
    X, y = clusters(seed=3, spread=2.0)
    ref = neighbors.NearestCentroid().fit(X, y).predict(X)
    np.testing.assert_array_equal(MAVProbe(metric="euclidean", n_bootstrap=0).fit(X, y).predict(X), ref)


def test_per_factor_mavs_use_the_given_level():
    # The class signal flips sign with the factor: one MAV per class cannot separate, per-level MAVs can.
    rng = np.random.default_rng(0)
    n = 800
    y, f = rng.integers(0, 2, n), rng.choice([-45.0, 45.0], n)
    X = np.c_[np.where((y == 1) == (f > 0), 1.0, -1.0), np.ones(n), f / 45] + 0.1 * rng.normal(size=(n, 3))
    plain = MAVProbe(n_bootstrap=0).fit(X, y).evaluate(X, y)["accuracy"].value
    per = MAVProbe(n_bootstrap=0).fit(X, y, factor=f)
    assert per.centroids_.shape == (2, 2, 3)
    assert per.evaluate(X, y, factor=f + 3.0)["accuracy"].value > 0.95 > plain + 0.3  # 48 snaps to 45
    assert per.evaluate(X, y)["accuracy"].value > 0.95  # level estimated from the nearest MAV


def test_noise_gives_chance_accuracy_with_covering_ci():
    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(1000, 6)) + 5, rng.integers(0, 2, 1000)
    acc = MAVProbe(n_bootstrap=300).fit(X[:500], y[:500]).evaluate(X[500:], y[500:])["accuracy"]
    assert acc.ci_low <= acc.chance <= acc.ci_high


def test_seed_reproducible_and_errors():
    X, y = clusters()
    assert MAVProbe(random_state=1).fit(X, y).evaluate(X, y) == MAVProbe(random_state=1).fit(X, y).evaluate(X, y)
    with pytest.raises(DataError, match="all-zero"):
        MAVProbe().fit(np.r_[X, np.zeros((1, 8))], np.r_[y, 0])
    with pytest.raises(DataError, match="fewer than 2 samples"):
        MAVProbe().fit(X[:50], np.r_[y[:49], 9])
    with pytest.raises(DataError, match="at least 2 classes"):
        MAVProbe().fit(X, np.zeros(len(X)))
    with pytest.raises(DataError, match="aligned"):
        MAVProbe().fit(X, y[:-1])
    with pytest.raises(InvalidParameterError, match="'metric' parameter of MAVProbe"):
        MAVProbe(metric="manhattan").fit(X, y)
    with pytest.raises(NotFittedError):
        MAVProbe().predict(X)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_similarities_in_blocks_equal_the_whole_matrix_by_hand(monkeypatch, metric):
    # nearest_centroid works through float64 blocks of rows (no float64 copy of a large X);
    # 5 blocks here must give what numpy gives on the whole float64 matrix.
    from pytest_invariance.probes import functional as F

    monkeypatch.setattr(F, "_BLOCK", 7)
    rng = np.random.default_rng(0)
    X = np.abs(rng.normal(size=(31, 6))).astype(np.float16)
    C = rng.normal(size=(4, 6))
    X64 = X.astype(np.float64)
    if metric == "cosine":
        hand = (X64 / np.linalg.norm(X64, axis=1, keepdims=True)) @ (C / np.linalg.norm(C, axis=1, keepdims=True)).T
    else:
        hand = -((X64[:, None, :] - C[None]) ** 2).sum(2)
    got = F.nearest_centroid(X, C, metric)
    np.testing.assert_allclose(got, hand, rtol=1e-12, atol=1e-12)
    assert (got.argmax(1) == hand.argmax(1)).all()
