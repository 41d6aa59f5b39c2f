"""Control tasks, selectivity and LEACE erasure against by-hand references."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("concept_erasure")

from pytest_invariance.errors import DataError  # noqa: E402
from pytest_invariance.probes import (LeaceErasure, LinearRegressionProbe, MAVProbe, MLPProbe,  # noqa: E402
                                      concept_matrix, control_labels, erasure_cost, input_clusters, selectivity)


# ----------------------------------------------------------------------------- control tasks


def test_control_labels_fixed_per_group_and_keep_the_distribution():
    rng = np.random.default_rng(0)
    y = rng.choice([0, 1, 2], size=20000, p=[0.6, 0.3, 0.1])
    groups = rng.integers(0, 4000, size=20000)
    tr, te = control_labels(y, groups, groups[:50], random_state=3)
    for g in np.unique(groups)[:200]:
        assert len(np.unique(tr[groups == g])) == 1
    np.testing.assert_array_equal(te, tr[:50])  # a group seen in both splits keeps its label
    per_group = np.array([tr[groups == g][0] for g in np.unique(groups)])
    np.testing.assert_allclose(np.bincount(per_group) / len(per_group), [0.6, 0.3, 0.1], atol=0.03)
    tr2, _ = control_labels(y, groups, groups[:50], random_state=3)
    np.testing.assert_array_equal(tr, tr2)


def _probe_rows(X, y, Xte, yte, probe):
    return np.abs(probe.fit(X, y).predict(Xte) - yte)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_selectivity_is_near_zero_on_random_features(kind):
    # Random features carry neither the factor nor the identity: real and control are both at chance.
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(300), 8)
    X, y = rng.normal(size=(2400, 12)), rng.normal(size=2400)
    tr = ids < 220
    ctr, cte = control_labels(y[tr], ids[tr], ids[~tr], random_state=0)
    make = (lambda: LinearRegressionProbe(n_permutations=0, n_bootstrap=0)) if kind == "linear" else \
        (lambda: MLPProbe(n_bootstrap=0))
    real = _probe_rows(X[tr], y[tr], X[~tr], y[~tr], make())
    ctrl = _probe_rows(X[tr], ctr, X[~tr], cte, make())
    sel = selectivity(real, ctrl, higher_is_better=False, groups=ids[~tr], n_bootstrap=500)
    assert sel.ci_low <= 0 <= sel.ci_high and abs(sel.value) < 0.15 and sel.chance == 0.0
    assert sel.details["bootstrap"] == "over 80 groups"
    np.testing.assert_allclose(sel.value, (ctrl - real).mean())


def test_selectivity_positive_when_features_hold_the_factor_not_the_group():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(300), 8)
    y = rng.normal(size=2400)
    X = rng.normal(size=(2400, 12))
    X[:, 0] = y
    tr = ids < 220
    ctr, cte = control_labels(y[tr], ids[tr], ids[~tr], random_state=0)
    make = lambda: LinearRegressionProbe(n_permutations=0, n_bootstrap=0)  # noqa: E731
    sel = selectivity(_probe_rows(X[tr], y[tr], X[~tr], y[~tr], make()),
                      _probe_rows(X[tr], ctr, X[~tr], cte, make()), higher_is_better=False, n_bootstrap=300)
    assert sel.ci_low > 0.5


def test_input_clusters_assign_both_splits_and_reject_bad_k():
    rng = np.random.default_rng(0)
    centres = 20 * np.eye(5)
    X = centres[np.arange(500) % 5] + rng.normal(size=(500, 5))
    gtr, gte = input_clusters(X[:400], X[400:], n_clusters=5)
    # Rows from the same centre share a cluster in both splits.
    assert all(len(np.unique(np.r_[gtr[np.arange(400) % 5 == c], gte[np.arange(100) % 5 == c]])) == 1
               for c in range(5))
    with pytest.raises(DataError, match="n_clusters"):
        input_clusters(X[:3], X[3:], n_clusters=5)


# ----------------------------------------------------------------------------- erasure


def planted_linear(n=3000, d=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    angle = rng.choice(np.arange(-45, 46, 15), size=n).astype(float)
    X[:, :3] += np.outer(angle / 15, [3.0, -1.5, 1.0])
    return X, angle


@pytest.mark.parametrize("kind", ["continuous", "categorical"])
def test_linear_probe_at_chance_after_leace(kind):
    X, a = planted_linear()
    tr, te = slice(0, 2000), slice(2000, None)
    before = LinearRegressionProbe(n_permutations=0, n_bootstrap=500).fit(X[tr], a[tr]).evaluate(X[te], a[te])["mae"]
    eraser = LeaceErasure(kind=kind).fit(X[tr], a[tr])
    Xe_tr, Xe_te = eraser.transform(X[tr]), eraser.transform(X[te])
    after = LinearRegressionProbe(n_permutations=0, n_bootstrap=500).fit(Xe_tr, a[tr]).evaluate(Xe_te, a[te])["mae"]
    assert before.value < 0.2 * before.chance
    assert after.ci_low <= after.chance <= after.ci_high
    # On the training split the erased features have exactly zero cross-covariance with the concept.
    Z = concept_matrix(a[tr], kind)
    cross = (Xe_tr - Xe_tr.mean(0)).T @ (Z - Z.mean(0)) / len(Z)
    assert np.abs(cross).max() < 1e-8
    assert eraser.rank_ == (1 if kind == "continuous" else 6)


def test_mlp_still_reads_a_nonlinear_leak_after_leace():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(3000, 8))
    y = np.abs(X[:, 0]) * 2 + X[:, 1]  # |x0| is invisible to a linear probe, x1 is not
    e = LeaceErasure().fit(X[:2200], y[:2200])
    Xtr, Xte = e.transform(X[:2200]), e.transform(X[2200:])
    lin = LinearRegressionProbe(n_permutations=0, n_bootstrap=300).fit(Xtr, y[:2200]).evaluate(Xte, y[2200:])["mae"]
    mlp = MLPProbe(n_bootstrap=300, max_epochs=60).fit(Xtr, y[:2200]).evaluate(Xte, y[2200:])["mae"]
    assert lin.ci_low <= lin.chance <= lin.ci_high
    assert mlp.ci_high < 0.9 * mlp.chance


def test_erasure_cost_equals_a_hand_computation():
    # Two exactly uncorrelated columns; the concept is column 1, so LEACE must set column 1
    # to its training mean and leave column 0 alone. Classes depend on both columns.
    rng = np.random.default_rng(5)
    a = rng.normal(size=400)
    b = rng.normal(size=400)
    a, b = a - a.mean(), b - b.mean()
    b -= (a @ b) / (a @ a) * a
    X = np.column_stack([a + 3.0, b])
    classes = (np.arctan2(X[:, 1], X[:, 0]) > 0).astype(int) + 2 * (X[:, 0] > 3.0)
    Xe = LeaceErasure().fit(X, b).transform(X)
    np.testing.assert_allclose(Xe, np.column_stack([X[:, 0], np.full(400, X[:, 1].mean())]), atol=1e-9)

    def mav_hits(F):  # cosine nearest class mean, by hand
        M = np.stack([F[classes == c].mean(0) for c in range(4)])
        sim = (F / np.linalg.norm(F, axis=1, keepdims=True)) @ (M / np.linalg.norm(M, axis=1, keepdims=True)).T
        return (sim.argmax(1) == classes).astype(float)

    hand = 100 * (mav_hits(X).mean() - mav_hits(np.column_stack([X[:, 0], np.full(400, b.mean())])).mean())
    before = MAVProbe(n_bootstrap=0).fit(X, classes).predict(X) == classes
    after = MAVProbe(n_bootstrap=0).fit(Xe, classes).predict(Xe) == classes
    cost = erasure_cost(before, after, n_bootstrap=200)
    assert cost.value == pytest.approx(hand) and hand > 10
    assert cost.ci_low <= cost.value <= cost.ci_high and cost.details["unit"] == "percentage points"


def test_erasure_bad_input():
    X, a = planted_linear(n=50)
    with pytest.raises(DataError, match="nothing to erase"):
        LeaceErasure().fit(X, np.ones(50))
    with pytest.raises(DataError, match="same test rows"):
        erasure_cost([1, 0], [1, 0, 1])


def test_transform_in_place_equals_a_copy_across_blocks(monkeypatch):
    # Erasing a large training set in place (out=X) must give the same numbers as a copy,
    # block boundaries included (the block size is shrunk so that 3 blocks are written).
    from pytest_invariance.probes import _erasure

    monkeypatch.setattr(_erasure, "_CHUNK", 700)
    X, a = planted_linear()
    X32 = X.astype(np.float32)
    eraser = LeaceErasure().fit(X32, a)
    copy = eraser.transform(X32)
    inplace = X32.copy()
    assert eraser.transform(inplace, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, copy)
    with pytest.raises(DataError, match="out must be a float array"):
        eraser.transform(X32, out=np.empty((3, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_features_with_a_non_finite_value_are_refused_in_any_block(monkeypatch, bad):
    from pytest_invariance import _arrays
    from pytest_invariance.probes import _validation

    monkeypatch.setattr(_arrays, "_FINITE_BLOCK", 64)  # 8 rows of 8 per block
    X = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float16)
    assert _validation.check_features(X) is not None
    X[93, 5] = bad
    with pytest.raises(Exception, match=r"NaN or Inf in 1 rows \(first: \[93\]\)"):
        _validation.check_features(X)
