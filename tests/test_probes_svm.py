"""AttributeSVMProbe and the batched solver against sklearn's LinearSVC."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
svm = pytest.importorskip("sklearn.svm")
preprocessing = pytest.importorskip("sklearn.preprocessing")

from pytest_invariance.errors import DataError, EmbeddingError, InvalidParameterError, NotFittedError  # noqa: E402
from pytest_invariance.probes import AttributeSVMProbe  # noqa: E402
from pytest_invariance.probes.functional import fit_squared_hinge_svm  # noqa: E402


def planted(n=1500, d=20, T=3, seed=0, noise=0.8):
    rng = np.random.default_rng(seed)
    X = np.abs(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)) + 0.2
    s = X @ rng.normal(size=(d, T))
    s = (s - s.mean(0)) / s.std(0) + noise * rng.normal(size=(n, T))
    rates = np.linspace(0.1, 0.5, T)
    Y = (s > np.array([np.quantile(s[:, t], 1 - rates[t]) for t in range(T)])).astype(int)
    return X, Y


def bal_acc(y, pred):
    return ((pred[y > 0] > 0).mean() + (pred[y <= 0] <= 0).mean()) / 2


@pytest.mark.parametrize("C", [0.01, 1.0])
def test_solver_matches_linearsvc_coefficients(C):
    X, Y = planted(n=800, d=10, T=2)
    sol = fit_squared_hinge_svm(X, np.where(Y > 0, 1.0, -1.0), np.array([C, C]), np.array([0, 1]), tol=1e-6, max_iter=100)
    for t in range(2):
        ref = svm.LinearSVC(C=C, class_weight="balanced", tol=1e-8, max_iter=10000).fit(X, Y[:, t])
        np.testing.assert_allclose(sol.coef[t], ref.coef_[0], rtol=2e-3, atol=2e-3 * np.abs(ref.coef_).max())
        assert sol.intercept[t] == pytest.approx(ref.intercept_[0], abs=2e-3 * max(1, abs(ref.intercept_[0])))


def test_probe_within_half_point_of_linearsvc_balanced_accuracy():
    X, Y = planted(n=2400, d=20, T=3)
    tr, va, te = slice(0, 1400), slice(1400, 1900), slice(1900, None)
    grid = (0.001, 0.01, 0.1, 1.0)
    probe = AttributeSVMProbe(C_grid=grid, n_permutations=0, n_bootstrap=0).fit(X[tr], Y[tr], X[va], Y[va])
    res = probe.evaluate(X[te], Y[te])
    Z = preprocessing.StandardScaler().fit(X[tr]).transform(X)  # the probe's units
    for t in range(3):
        best = max(grid, key=lambda C: bal_acc(Y[va, t], svm.LinearSVC(C=C, class_weight="balanced").fit(Z[tr], Y[tr, t]).decision_function(Z[va])))
        ref = bal_acc(Y[te, t], svm.LinearSVC(C=best, class_weight="balanced").fit(Z[tr], Y[tr, t]).decision_function(Z[te]))
        ours = 1 - res[f"attr_{t}"]["balanced_error"].value
        assert ours >= ref - 0.005, (t, ours, ref)
        assert res[f"attr_{t}"]["accuracy"].details["C"] == probe.C_[t]


def test_metrics_are_consistent_and_reproducible():
    X, Y = planted(n=900, T=2)
    kw = dict(n_permutations=3, n_bootstrap=100, random_state=3)
    r1 = AttributeSVMProbe(**kw).fit(X[:500], Y[:500], X[500:700], Y[500:700]).evaluate(X[700:], Y[700:])
    r2 = AttributeSVMProbe(**kw).fit(X[:500], Y[:500], X[500:700], Y[500:700]).evaluate(X[700:], Y[700:])
    assert r1 == r2
    e = r1["attr_0"]
    assert e["balanced_error"].value == pytest.approx((e["fn_rate"].value + e["fp_rate"].value) / 2)
    for m in e.values():
        assert m.ci_low <= m.value <= m.ci_high and m.p_value is not None and m.n == 200
    assert e["balanced_error"].value < e["balanced_error"].chance
    assert 0.5 <= e["accuracy"].details["majority_baseline"] <= 1


def test_pure_noise_is_at_chance():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(1200, 10)), rng.integers(0, 2, size=(1200, 1))
    res = AttributeSVMProbe(n_permutations=5, n_bootstrap=200).fit(X[:600], Y[:600], X[600:900], Y[600:900]).evaluate(X[900:], Y[900:])
    be = res["attr_0"]["balanced_error"]
    assert be.ci_low <= 0.5 <= be.ci_high
    assert abs(be.chance - 0.5) < 0.06 and be.p_value > 0.05


def test_bool_and_plus_minus_labels_agree():
    X, Y = planted(n=600, T=1)
    a = AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(X[:400], Y[:400], X[400:], Y[400:])
    b = AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(X[:400], Y[:400] * 2 - 1, X[400:], Y[400:].astype(bool))
    np.testing.assert_array_equal(a.coef_, b.coef_)


def test_parameter_errors_are_sklearn_style():
    X, Y = planted(n=100, T=1)
    with pytest.raises(InvalidParameterError, match=r"The 'C_grid' parameter of AttributeSVMProbe must be .*\(0, inf\).*Got \(-1,\) instead"):
        AttributeSVMProbe(C_grid=(-1,)).fit(X, Y, X, Y)
    with pytest.raises(InvalidParameterError, match="'n_bootstrap'"):
        AttributeSVMProbe(n_bootstrap=-1).fit(X, Y, X, Y)
    with pytest.raises(NotFittedError, match="not fitted"):
        AttributeSVMProbe().predict(X)


def test_bad_input_errors():
    X, Y = planted(n=200, T=2)
    p = AttributeSVMProbe(n_permutations=0, n_bootstrap=0)
    with pytest.raises(DataError, match="aligned row by row"):
        p.fit(X, Y[:-1], X, Y)
    Xn = X.copy(); Xn[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        p.fit(Xn, Y, X, Y)
    Y1 = Y.copy(); Y1[:, :] = 1
    with pytest.raises(DataError, match="no attribute has 5 present and absent examples"):
        p.fit(X, Y1, X, Y)
    with pytest.raises(EmbeddingError, match="every feature of X_train is constant, .* another layer with --layer"):
        p.fit(np.ones_like(X), Y, X, Y)
    with pytest.raises(ValueError, match="expecting 20 features"):
        p.fit(X, Y, X, Y).predict(X[:, :5])


def test_more_features_than_samples_warns_and_still_fits():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 60)), rng.integers(0, 2, size=(40, 1))
    with pytest.warns(Warning, match="can fit any labelling"):
        p = AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(X, Y, X, Y)
    assert np.isfinite(p.coef_).all()


@pytest.mark.parametrize("case", ["one positive in test", "none in validation", "absent everywhere"])
def test_degenerate_attribute_is_not_measurable_and_the_others_are_measured(case):
    X, Y = planted(n=1200, T=3)
    tr, va, te = slice(0, 700), slice(700, 900), slice(900, 1200)
    Y = Y.copy()
    if case == "one positive in test":
        Y[te, 1] = 0; Y[900, 1] = 1
    elif case == "none in validation":
        Y[va, 1] = 0
    else:
        Y[:, 1] = 0
    p = AttributeSVMProbe(n_permutations=3, n_bootstrap=50).fit(X[tr], Y[tr], X[va], Y[va])
    if case != "one positive in test":  # C is never chosen on an undefined validation score
        assert np.isnan(p.C_[1]) and np.isnan(p.val_balanced_accuracy_[1]).all()
    reasons = p.not_measurable(Y[te])
    n_pos = {"one positive in test": 1, "none in validation": 0, "absent everywhere": 0}[case]
    assert list(reasons) == ["attr_1"] and f"{n_pos} present" in reasons["attr_1"], reasons
    out = p.evaluate(X[te], Y[te])
    assert set(out) == {"attr_0", "attr_2"}
    ref = svm.LinearSVC(C=p.C_[0], class_weight="balanced").fit(X[tr], Y[tr, 0])
    assert out["attr_0"]["balanced_error"].value == pytest.approx(1 - bal_acc(Y[te, 0], ref.predict(X[te])), abs=0.01)


def _liblinear_objective(X, y, w, b, C):
    Y = np.where(y > 0, 1.0, -1.0)
    s = np.where(Y > 0, len(Y) / (2 * (Y > 0).sum()), len(Y) / (2 * (Y < 0).sum()))
    return 0.5 * (w @ w + b * b) + C * (s * np.maximum(0, 1 - Y * (X @ w + b)) ** 2).sum()


@pytest.mark.parametrize("transform", ["offset by 1000", "scaled by 100"])
def test_unscaled_post_relu_features_match_liblinear(transform):
    """VGG-fc7-like features: 512-d, post-ReLU, sparse, with a large offset or scale."""
    rng = np.random.default_rng(0)
    n, d = 2000, 512
    Z = np.maximum(rng.normal(size=(n, 64)) @ rng.normal(size=(64, d)) / 8, 0)
    score = Z[:, :5].sum(1) + rng.normal(size=n) * 2
    y = ((score > np.quantile(score, 0.7)) | (rng.random(n) < 0.05)).astype(int)
    X = Z + 1000 if transform == "offset by 1000" else Z * 100
    tr, te = slice(0, 1500), slice(1500, n)
    for C in (0.01, 1.0):
        # the solver alone, on the raw features: liblinear's optimum
        sol = fit_squared_hinge_svm(X[tr], np.where(y[tr, None] > 0, 1.0, -1.0), np.array([C]), np.array([0]),
                                    tol=1e-4, max_iter=100)  # the probe's defaults
        raw = svm.LinearSVC(C=C, class_weight="balanced", tol=1e-6, max_iter=50_000).fit(X[tr], y[tr])
        ours = _liblinear_objective(X[tr], y[tr], sol.coef[0], sol.intercept[0], C)
        theirs = _liblinear_objective(X[tr], y[tr], raw.coef_[0], raw.intercept_[0], C)
        # The optimum, not the stopping flag: on raw features offset by 1000 the flag depends on
        # torch's thread count (C=1: converged in 35 iterations on 2 threads, not within 100 on
        # 1, at an objective equal to liblinear's to 4e-13). The probe standardises first, and
        # its own fit below must converge.
        assert abs(ours - theirs) / theirs < 1e-3, (C, ours, theirs)
        # the probe: liblinear's optimum on the standardised rows (sklearn's StandardScaler,
        # constant features left at 0), weights mapped back; test rows clipped to the training range
        p = AttributeSVMProbe(C_grid=(C,), n_permutations=0, n_bootstrap=0).fit(X[tr], y[tr, None], X[tr], y[tr, None])
        scaler = preprocessing.StandardScaler().fit(X[tr])
        Z = scaler.transform(X)
        np.testing.assert_allclose(p.standardiser_.mean, scaler.mean_, rtol=1e-9, atol=1e-9)
        ref = svm.LinearSVC(C=C, class_weight="balanced", tol=1e-6, max_iter=50_000).fit(Z[tr], y[tr])
        assert p.converged_.all()
        std = p.standardiser_.std
        ours = _liblinear_objective(Z[tr], y[tr], p.coef_[0] * std, p.intercept_[0] + p.standardiser_.mean @ p.coef_[0], C)
        theirs = _liblinear_objective(Z[tr], y[tr], ref.coef_[0], ref.intercept_[0], C)
        assert abs(ours - theirs) / theirs < 1e-3, (C, ours, theirs)
        got = 1 - p.evaluate(X[te], y[te, None])["attr_0"]["balanced_error"].value
        Zte = np.clip(Z[te], Z[tr].min(0), Z[tr].max(0))
        assert got == pytest.approx(bal_acc(y[te], ref.predict(Zte)), abs=0.005)


@pytest.mark.parametrize("copies", [1, 5])
def test_narrow_and_wide_data_passes_reach_liblinears_solution(copies):
    """3 columns take the narrow products (GEMVs for X p, (R' X)' for X' R), 15 the wide GEMMs."""
    X, Y = planted(n=700, d=12, T=3)
    tgt = np.tile(np.arange(3), copies)
    sol = fit_squared_hinge_svm(X, np.where(Y > 0, 1.0, -1.0), np.full(len(tgt), 1.0), tgt, tol=1e-6, max_iter=100)
    assert sol.converged.all()
    for c, t in enumerate(tgt):
        ref = svm.LinearSVC(C=1.0, class_weight="balanced", tol=1e-8, max_iter=10000).fit(X, Y[:, t])
        np.testing.assert_allclose(sol.coef[c], ref.coef_[0], rtol=2e-3, atol=2e-3 * np.abs(ref.coef_).max())
        assert sol.intercept[c] == pytest.approx(ref.intercept_[0], abs=2e-3 * max(1, abs(ref.intercept_[0])))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blockwise_shift_and_scale_equals_the_whole_matrix_form(dtype):
    from pytest_invariance.probes._linear_svm import _standardised, shifted_scaled

    rng = np.random.default_rng(1)
    X = (rng.normal(size=(9000, 7)) * 30 + 1000).astype(dtype)  # 3 blocks of 4096, the last one partial
    X[:, 3] = 5.0  # a constant feature
    center, scale = X.astype(np.float64).mean(0), 7.5
    Z = shifted_scaled(X, center, scale, dtype)
    np.testing.assert_array_equal(Z, ((X - center) / scale).astype(dtype))
    Zs, mu, sd = _standardised(X)
    X64 = X.astype(np.float64)
    np.testing.assert_allclose(mu, X64.mean(0), rtol=1e-14)
    ref_sd = X64.std(0)
    ref_sd[ref_sd == 0] = 1.0
    np.testing.assert_allclose(sd, ref_sd, rtol=1e-9)
    np.testing.assert_allclose(Zs, (X64 - X64.mean(0)) / ref_sd, atol=1e-5)


def test_each_permutation_refit_fits_its_own_shuffled_labels():
    # Every null value must come from its own shuffle: before, all k refits of an attribute
    # fitted the first shuffle, so p-values were 1/(k+1) or 1 and the chance level one draw.
    from pytest_invariance.probes.functional import binary_rates
    from pytest_invariance.probes.stats import permutations

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(300, 24)), rng.integers(0, 2, (300, 3))
    k = 6
    probe = AttributeSVMProbe(n_permutations=k, n_bootstrap=0, random_state=2).fit(X[:180], Y[:180], X[180:240], Y[180:240])
    Yt = np.where(Y[240:] > 0, 1.0, -1.0)
    null = probe._null_rates(X[240:], Yt.astype(np.float32), np.arange(3))["balanced_error"]  # [k, T]
    Ytr = np.where(Y[:180] > 0, 1.0, -1.0)
    for j, order in enumerate(permutations(180, k, 2)):  # the shuffles permutation_chance draws
        for t in range(3):  # each one refitted alone, at the attribute's chosen C
            sol = probe._solve(probe._X_train, Ytr[order][:, [t]].astype(np.float32), probe.C_[[t]], np.array([0]))
            pred = np.where(X[240:] @ sol.coef[0] + sol.intercept[0] > 0, 1.0, -1.0)
            assert null[j, t] == pytest.approx(binary_rates(Yt[:, [t]], pred[:, None])["balanced_error"][0], abs=0.02)
    assert all(len(np.unique(null[:, t])) > k // 2 for t in range(3))
    res = probe.evaluate(X[240:], Y[240:])
    assert len({round(res[f"attr_{t}"]["balanced_error"].p_value, 6) for t in range(3)} - {1 / (k + 1), 1.0}) > 0


@pytest.mark.parametrize("scale", [0.05, 1e-3, 1e-6])
def test_a_factor_in_one_low_variance_dimension_is_found_as_a_standardised_linear_svc_finds_it(scale):
    # One RMS spread for the whole embedding made C too small for one dimension at 1/20 of
    # the 63 others' scale: balanced error 0.50 (gate passed) where LinearSVC finds 0.00.
    rng = np.random.default_rng(1)
    n = 600
    t = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 64))
    X[:, 0] = scale * t + scale * 0.2 * rng.normal(size=n)
    tr, va, te = slice(0, 360), slice(360, 480), slice(480, n)
    p = AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(X[tr], t[tr, None], X[va], t[va, None])
    got = p.evaluate(X[te], t[te, None])["attr_0"]["balanced_error"].value
    scaler = preprocessing.StandardScaler().fit(X[tr])
    Z = scaler.transform(X)
    best = max((bal_acc(t[va], svm.LinearSVC(C=c, class_weight="balanced").fit(Z[tr], t[tr]).predict(Z[va])), c)
               for c in p.C_grid)[1]
    ref = 1 - bal_acc(t[te], svm.LinearSVC(C=best, class_weight="balanced").fit(Z[tr], t[tr]).predict(Z[te]))
    assert ref < 0.05 and got == pytest.approx(ref, abs=0.02), (got, ref)


def test_a_feature_flat_in_training_but_active_on_test_cannot_swamp_the_prediction():
    # A unit dead on the training rows (LEACE leaves rounding residue, std 1e-9) but active on
    # test: standardising divides it by 1e-9. Test rows are clipped to the training range.
    rng = np.random.default_rng(2)
    n = 600
    t = rng.integers(0, 2, n)
    X = rng.normal(size=(n, 16))
    X[:, 1] += 2 * t
    X[:, 5] = 1e-9 * rng.normal(size=n)
    tr, va, te = slice(0, 360), slice(360, 480), slice(480, n)
    p = AttributeSVMProbe(n_permutations=0, n_bootstrap=0).fit(X[tr], t[tr, None], X[va], t[va, None])
    active = X[te].copy()
    active[:, 5] = rng.normal(size=n - 480)
    base = p.evaluate(X[te], t[te, None])["attr_0"]["balanced_error"].value
    assert p.evaluate(active, t[te, None])["attr_0"]["balanced_error"].value == pytest.approx(base, abs=0.03)
