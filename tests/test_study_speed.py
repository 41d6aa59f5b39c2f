"""The rotated-MNIST study's faster paths give the numbers of the plain ones (issue 14 goal 2).

Each helper is checked against a reference computed another way (numpy's own reductions,
the previous formula written out here, or the separate calls it replaces), bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest

from pytest_invariance._arrays import all_finite, zero_rows
from pytest_invariance.embeddings._cache import EmbeddingCache, mask_zeros, unpack_zeros
from pytest_invariance.errors import EmbeddingError, InvarianceWarning
from pytest_invariance.probes import LinearRegressionProbe, spectrum, spectrum_estimate, stats
from pytest_invariance.probes import functional as F
from pytest_invariance.probes._structure import spectrum_and_estimate
from pytest_invariance.probes._validation import assume_finite, check_features


def _relu(rng: np.random.Generator, n: int, d: int, dtype: type) -> np.ndarray:
    return np.maximum(rng.normal(size=(n, d)), 0).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_all_finite_agrees_with_isfinite(dtype, bad):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 7)).astype(dtype)
    X[0, 0] = -0.0
    X[1, 1] = np.finfo(dtype).max   # the largest finite value, one bit below Inf's pattern
    X[2, 2] = -np.finfo(dtype).max
    X[3, 3] = np.finfo(dtype).smallest_subnormal
    if bad is not None:
        X[250, 6] = bad
    want = bool(np.isfinite(X).all())
    assert all_finite(X) is want
    assert all_finite(X[:, ::2]) is bool(np.isfinite(X[:, ::2]).all())  # not contiguous: the min/max path
    assert all_finite(X.T) is want
    assert all_finite(np.arange(5)) is True


def test_all_finite_over_several_blocks(monkeypatch):
    import pytest_invariance._arrays as A

    monkeypatch.setattr(A, "_FINITE_BLOCK", 64)
    X = np.ones((100, 10), np.float16)
    assert A.all_finite(X)
    X[97, 9] = np.nan  # in the last block
    assert not A.all_finite(X)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_zero_rows_agree_with_numpy_any(dtype, monkeypatch):
    import pytest_invariance._arrays as A

    monkeypatch.setattr(A, "_FINITE_BLOCK", 50)  # several blocks of rows
    X = _relu(np.random.default_rng(1), 40, 6, dtype)
    X[[3, 17, 39]] = 0
    if dtype != np.int32:
        X[17, 2] = -0.0       # still an all-zero row
        X[20] = 0
        X[20, 5] = np.nan     # not zero
    np.testing.assert_array_equal(zero_rows(X), np.flatnonzero(~X.any(1)))


def test_check_features_refuses_nan_once_then_the_study_assumes_it():
    X = np.ones((5, 3), np.float16)
    X[2, 1] = np.inf
    with pytest.raises(EmbeddingError) as err:
        check_features(X)
    msg = str(err.value)
    assert msg == ("X contains NaN or Inf in 1 rows (first: [2]); drop or repair those embeddings before probing.")
    with assume_finite():
        assert check_features(X) is not None  # the caller has scanned it
    with pytest.raises(EmbeddingError, match="contains NaN or Inf"):
        check_features(X)  # the setting ends with the block


@pytest.mark.parametrize("where", ["Xte", "Xtr", "logits"])
def test_rotated_mnist_study_refuses_a_nan_input_in_one_line(where):
    from pytest_invariance.studies.mnist_rotation import Protocol, compute_study

    rng = np.random.default_rng(2)
    angles = (-45.0, 0.0, 45.0)
    yte, ytr = np.repeat(np.arange(10), 30), np.repeat(np.arange(10), 60)
    inputs = {"Xte": _relu(rng, len(yte), 8, np.float32), "yte": yte, "ate": rng.choice(angles, len(yte)),
              "logits": rng.normal(size=(len(yte), 10)).astype(np.float32),
              "train": [{"Xtr": _relu(rng, len(ytr), 8, np.float16), "ytr": ytr, "atr": rng.choice(angles, len(ytr))}]}
    arr = inputs["train"][0]["Xtr"] if where == "Xtr" else inputs[where]
    arr[7, 3] = np.nan
    with pytest.raises(EmbeddingError) as err:
        compute_study("m", inputs, Protocol(angles=angles, n_bootstrap=20, heatmap_per_cell=2), seed=0)
    assert str(err.value) == ("X contains NaN or Inf in 1 rows (first: [7]); drop or repair those embeddings "
                              "before probing.")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_masked_layout_round_trips_exactly(dtype, monkeypatch):
    import pytest_invariance.embeddings._cache as C

    monkeypatch.setattr(C, "_ROWS", 7)  # several blocks, the last one partial
    X = _relu(np.random.default_rng(3), 50, 13, dtype)  # d not a multiple of 8
    X[4] = 0
    mask, values = mask_zeros(X)
    out = unpack_zeros(mask, values, X.shape)
    assert out.dtype == X.dtype and np.array_equal(out.view(np.uint8), X.view(np.uint8))
    with pytest.raises(ValueError, match="values, .* stored|more values than"):
        unpack_zeros(mask, values[:-1], X.shape)
    bad = mask.copy()
    bad[8, -1] |= 1  # a padding bit (13 columns in 16 bits), with one more value to match the count
    with pytest.raises(ValueError, match="past the row width of 13 in rows 7-13"):
        unpack_zeros(bad, np.append(values, values[:1]), X.shape)


def test_a_cached_masked_entry_with_a_nan_value_is_rejected(tmp_path):
    cache = EmbeddingCache(tmp_path)
    X = _relu(np.random.default_rng(5), 40, 16, np.float16)
    X[9, 4] = np.nan  # stored among the masked layout's values
    cache.dir.mkdir(exist_ok=True)
    cache.store("k", X, {})
    assert (tmp_path / "k.npz").exists()
    with pytest.warns(InvarianceWarning, match=r"k.npz is damaged \(non-finite values\); recomputing it"):
        assert cache.load("k", rows=40) is None
    assert cache.rejected == 1 and not (tmp_path / "k.npz").exists()
    X[9, 4] = 1.0
    cache.store("k", X, {})
    np.testing.assert_array_equal(cache.load("k", rows=40), X)


def _draw_reference(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """The draw as it was written before (one bincount over offset indices per block of 128)."""
    rng, out = np.random.default_rng(seed), []
    for start in range(0, n_bootstrap, 128):
        b = min(128, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        out.append(np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n))
    return np.concatenate(out)


@pytest.mark.parametrize("n,big,small", [(1001, 300, 200), (1000, 257, 131), (999, 129, 1)])
def test_bootstrap_counts_equal_the_reference_and_a_smaller_draw_is_a_prefix(n, big, small, monkeypatch):
    monkeypatch.setattr(stats, "_RECENT", type(stats._RECENT)())
    direct = np.concatenate(list(stats.bootstrap_counts(n, small, 11)))
    np.testing.assert_array_equal(direct, _draw_reference(n, small, 11))
    stats._RECENT.clear()
    full = np.concatenate(list(stats.bootstrap_counts(n, big, 11)))
    np.testing.assert_array_equal(full, _draw_reference(n, big, 11))
    cut = np.concatenate(list(stats.bootstrap_counts(n, small, 11)))  # served from the kept larger draw
    assert stats._kept_draw(n, small, 11) is not None
    np.testing.assert_array_equal(cut, direct)
    assert stats._kept_draw(n, big + 1, 11) is None and stats._kept_draw(n + 1, small, 11) is None
    assert stats._kept_draw(n, small, 12) is None


def test_group_moments_cross_products_equal_a_separate_pass_and_the_kept_scatter(monkeypatch):
    monkeypatch.setattr(F, "_SCATTERS", type(F._SCATTERS)())
    monkeypatch.setattr(F, "_SCATTER_KEY_BYTES", 0)
    monkeypatch.setattr(F, "_BLOCK", 64)  # several blocks per group
    rng = np.random.default_rng(6)
    X, codes = _relu(rng, 1000, 9, np.float16), rng.integers(0, 4, 1000)
    Y = rng.normal(size=(1000, 2))
    first = F.group_moments(X, codes, 4, Y)
    for g, rows in enumerate(F._rows_of(codes, 4)):
        np.testing.assert_array_equal(first.cross[g], F.centred_cross(X, rows, first.means[g], Y[rows]))
        np.testing.assert_array_equal(first.means[g], X[rows].sum(0, dtype=np.float64) / len(rows))
        xc = X[rows].astype(np.float64) - first.means[g]
        np.testing.assert_allclose(first.scatter[g], xc.T @ xc, rtol=1e-12, atol=1e-12)
    again = F.group_moments(X, codes, 4, Y)  # the scatter is kept: only the cross-products are recomputed
    assert len(F._SCATTERS) == 1
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    A = rng.normal(size=(1000, 5))  # more targets in the same pass: as a separate pass computes them
    main, more = F.group_moments(X, codes, 4, Y, also=A)
    for a, b in zip(first, main):
        np.testing.assert_array_equal(a, b)
    for g, rows in enumerate(F._rows_of(codes, 4)):
        np.testing.assert_array_equal(more.cross[g], F.centred_cross(X, rows, first.means[g], A[rows]))
        np.testing.assert_array_equal(more.y_means[g], A[rows].mean(0))


def test_blocked_prediction_equals_one_einsum(monkeypatch):
    monkeypatch.setattr(F, "_BLOCK", 100)
    rng = np.random.default_rng(7)
    X, cls = rng.normal(size=(1050, 6)).astype(np.float32), rng.integers(0, 3, 1050)
    y = X @ rng.normal(size=6) + cls
    probe = LinearRegressionProbe(per_class=True, n_permutations=0, n_bootstrap=0).fit(X, y, classes=cls)
    want = np.einsum("nd,nd->n", X, probe.coef_[cls]) + probe.intercept_[cls]
    np.testing.assert_array_equal(probe.predict(X, classes=cls), want)


def test_spectrum_and_estimate_equal_the_two_separate_calls():
    X = np.random.default_rng(8).normal(size=(600, 12)) * np.linspace(5, 0.1, 12)
    full, est = spectrum_and_estimate(X, k=3, n_bootstrap=50, random_state=4)
    alone = spectrum(X, k=3)
    for key in ("singular_values", "explained_variance_ratio"):
        np.testing.assert_array_equal(full[key], alone[key])
    assert full["top_k_share"] == alone["top_k_share"]
    assert est == spectrum_estimate(X, k=3, n_bootstrap=50, random_state=4)


def test_pieces_on_threads_equal_the_same_pieces_on_one(monkeypatch):
    from pytest_invariance.probes import _blas

    rng = np.random.default_rng(9)
    blocks = [rng.normal(size=(3000, 40)) for _ in range(7)]
    many = _blas.map_threads(lambda x: x.T @ x, blocks)
    monkeypatch.setattr(_blas.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(_blas.os, "cpu_count", lambda: 1)
    one = _blas.map_threads(lambda x: x.T @ x, blocks)
    assert len(many) == 7 and all(np.array_equal(a, b) for a, b in zip(many, one))


def test_gram_of_row_blocks_equals_the_product(monkeypatch):
    from pytest_invariance.probes import _structure

    monkeypatch.setattr(_structure, "_GRAM_ROWS", 100)  # 5 partial products, the last one short
    X = np.random.default_rng(10).normal(size=(450, 30))
    G = _structure._gram(X)
    np.testing.assert_allclose(G, X.T @ X, rtol=1e-13, atol=1e-12)
    assert np.array_equal(G, G.T)  # syrk's triangle mirrored: exactly symmetric


def _spectrum_estimate_reference(X: np.ndarray, k: int, n_bootstrap: int, seed: int, oversample: int = 10):
    """The spectrum bootstrap written out plainly: a centred float64 copy, one resample at a time."""
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    n, d = Xc.shape
    r = min(k + oversample, d)
    head = Xc[:20000]
    V = np.linalg.eigh(head.T @ head)[1][:, ::-1][:, :r]
    P, sq = Xc @ V, (Xc**2).sum(1)
    ev = np.clip(np.linalg.eigvalsh(Xc.T @ Xc)[::-1], 0, None)
    share = ev[:k].sum() / ev.sum()
    boot = []
    for c in np.concatenate(list(stats.bootstrap_counts(n, n_bootstrap, seed))):
        w = c / n
        mu_p, mu_x = w @ P, w @ Xc
        cov = (P * w[:, None]).T @ P - np.outer(mu_p, mu_p)
        boot.append(np.linalg.eigvalsh(cov)[::-1][:k].sum() / (w @ sq - mu_x @ mu_x))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    bias = np.mean(boot) - share
    return share, lo - bias, hi - bias, bias


@pytest.mark.parametrize("n,d", [(3001, 17), (20500, 12)])  # the second: the subspace from the first 20,000 rows
def test_blockwise_spectrum_bootstrap_equals_the_plain_computation(n, d, monkeypatch):
    from pytest_invariance.probes import _structure

    monkeypatch.setattr(_structure, "_GRAM_ROWS", 1000)  # several partial products, the last one short
    monkeypatch.setattr(_structure, "_ROWS", 700)        # several row blocks of the bootstrap pass
    X = (np.random.default_rng(11).normal(size=(n, d)) * np.linspace(4, 0.2, d) + 3).astype(np.float32)
    share, lo, hi, bias = _spectrum_estimate_reference(X, 3, 40, 5)
    full, est = spectrum_and_estimate(X, k=3, n_bootstrap=40, random_state=5)
    assert est.value == full["top_k_share"]
    np.testing.assert_allclose([est.value, est.ci_low, est.ci_high, est.details["bootstrap_bias"]],
                               [share, lo, hi, bias], rtol=1e-10, atol=1e-12)
    assert est == spectrum_estimate(X, k=3, n_bootstrap=40, random_state=5, full=full)  # given the spectrum


def test_permutation_refits_from_the_fit_pass_equal_refits_on_shuffled_targets():
    """The refits' cross-products are taken while fitting; the null MAEs equal scikit-learn
    refits on the targets shuffled within class by permutation_chance's own row orders."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(12)
    X, cls = rng.normal(size=(900, 5)).astype(np.float16), rng.integers(0, 3, 900)
    y = X.astype(np.float64) @ [1.0, -2.0, 0.5, 0.0, 3.0] + 10 * cls + rng.normal(size=900)
    Xte, cte = rng.normal(size=(300, 5)).astype(np.float32), rng.integers(0, 3, 300)
    yte = Xte.astype(np.float64) @ [1.0, -2.0, 0.5, 0.0, 3.0] + 10 * cte
    probe = LinearRegressionProbe(per_class=True, n_permutations=7, n_bootstrap=0, random_state=3)
    mae = probe.fit(X, y, classes=cls).evaluate(Xte, yte, classes=cte)["mae"]
    keys = np.random.default_rng(3).random(len(y))

    def refit(k: np.ndarray) -> float:  # k: the random keys in one permutation's row order
        pred = np.empty(len(yte))
        for c in range(3):
            rows = np.flatnonzero(cls == c)
            yp = y[rows][np.argsort(k[rows])]
            fit = LinearRegression().fit(X[rows].astype(np.float64), yp)
            pred[cte == c] = fit.predict(Xte[cte == c].astype(np.float64))
        return float(np.abs(pred - yte).mean())

    mean, null = stats.permutation_chance(refit, keys, 7, random_state=3)
    assert mae.details["permutation_mae"] == pytest.approx(float(mean), rel=1e-9)
    assert mae.p_value == float(stats.p_value(mae.value, null, higher_is_better=False))


@pytest.mark.parametrize("per_class", [False, True])
def test_mlp_probe_inputs_built_in_place_equal_the_plain_standardised_stack(per_class):
    """MLPProbe writes features and one-hot class into one array and standardises it in place:
    the weights equal fit_mlp's on the inputs stacked and standardised the plain way."""
    from pytest_invariance.probes import MLPProbe
    from pytest_invariance.probes._mlp import fit_mlp

    rng = np.random.default_rng(13)
    X, cls = rng.normal(size=(400, 6)).astype(np.float16), rng.integers(0, 3, 400)
    y = X.astype(np.float64) @ rng.normal(size=6) + cls
    probe = MLPProbe(hidden=8, max_train=300, max_epochs=3, n_bootstrap=0, random_state=4)
    probe.fit(X, y, classes=cls if per_class else None)
    r = np.random.default_rng(4)
    rows = np.sort(r.choice(400, 300, replace=False))
    Z = X[rows].astype(np.float64)
    if per_class:
        Z = np.hstack([Z, np.eye(3)[cls[rows]]])
    held = r.permutation(300)[:60]  # val_fraction 0.2 of 300 groups (one row each)
    val = np.isin(np.arange(300), held)
    std = np.where(Z.std(0) > 0, Z.std(0), 1.0)
    Yn = (y[rows, None] - y[rows][~val].mean()) / y[rows][~val].std()
    from pytest_invariance.probes._standardise import Standardiser

    want = fit_mlp(Standardiser.fit(Z).transform(Z), Yn, val, task="regression", hidden=8, lr=probe.lr,
                   weight_decay=probe.weight_decay, batch_size=probe.batch_size, max_epochs=3,
                   patience=probe.patience, device="cpu", seed=4)
    for name in ("W1", "b1", "w2", "b2", "epochs"):
        np.testing.assert_array_equal(np.asarray(getattr(probe.weights_, name)), np.asarray(getattr(want, name)))
    np.testing.assert_allclose(probe.standardiser_.std, std, rtol=1e-12)


def test_rotated_mnist_training_rows_are_freed_before_the_spectrum(monkeypatch):
    """The study consumes its training rows: nothing (digests, probes, threads) holds them once
    the trained figures are computed, so they are not under the spectrum step's memory."""
    import gc
    import weakref

    from pytest_invariance.probes import _structure
    from pytest_invariance.studies.mnist_rotation import Protocol, compute_study, input_digests

    rng = np.random.default_rng(14)
    angles = (-45.0, 0.0, 45.0)
    yte, ytr = np.repeat(np.arange(10), 30), np.repeat(np.arange(10), 60)
    pos = lambda n, dtype: (np.abs(rng.normal(size=(n, 8))) + 0.1).astype(dtype)  # noqa: E731 (no all-zero row)
    inputs = {"Xte": pos(len(yte), np.float32), "yte": yte, "ate": rng.choice(angles, len(yte)),
              "logits": rng.normal(size=(len(yte), 10)).astype(np.float32),
              "train": [{"Xtr": pos(len(ytr), np.float16), "ytr": ytr, "atr": rng.choice(angles, len(ytr))}]}
    alive = weakref.ref(inputs["train"][0]["Xtr"])
    digests = input_digests(inputs)
    assert set(digests) == {"Xte", "yte", "ate", "logits", "train"} and set(digests["train"][0]) == {"Xtr", "ytr", "atr"}
    real = _structure.spectrum_and_estimate
    seen = []

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        gc.collect()
        seen.append(alive() is None)
        return real(*args, **kwargs)

    monkeypatch.setattr(_structure, "spectrum_and_estimate", spy)
    compute_study("m", inputs, Protocol(angles=angles, n_bootstrap=20, heatmap_per_cell=2), seed=0)
    assert seen == [True]
