"""Streamed probes: sufficient statistics merged over Parquet shards equal the in-memory fit.

Data: scikit-learn's bundled 8x8 digits (1,797 real scans, offline). The 64 pixels are
the "embedding"; the continuous target is each scan's ink in its upper half (a real
property of the image), the classes are the digits. References: scikit-learn's
LinearRegression / Ridge / NearestCentroid and the probes' own in-memory ``fit``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.neighbors import NearestCentroid

from pytest_invariance.embeddings._parquet import ParquetEmbeddings, ShardMeta, write_shard
from pytest_invariance.probes import LinearRegressionProbe, MAVProbe
from pytest_invariance.probes import functional as F


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    ink_top = d.images[:, :4].sum((1, 2)) / 16.0
    ids = [f"digit{i:04d}.png" for i in range(len(X))]
    return X, ink_top, d.target, ids


@pytest.fixture(scope="module")
def shards(digits, tmp_path_factory):
    X, _, _, ids = digits
    root = tmp_path_factory.mktemp("digits")
    order = np.random.default_rng(0).permutation(len(X))
    for k, part in enumerate(np.array_split(order, 5)):
        write_shard(root / f"p{k}.parquet", [ids[i] for i in part], {"pixels": X[part]},
                    ShardMeta("00" * 32, ("pixels",), "auto", None))
    return ParquetEmbeddings(root)


def _labelled(src, table, column, max_rows):
    for ids, X in src.iter_batches("pixels", max_rows=max_rows):
        yield X, table.loc[ids, column].to_numpy()


def test_merged_moments_equal_one_pass(digits):
    X, y, c, _ = digits
    whole = F.group_moments(X, c, 10, y[:, None])
    parts = [F.group_moments(X[s], c[s], 10, y[s, None]) for s in np.array_split(np.arange(len(X)), 7)]
    merged = parts[0]
    for p in parts[1:]:
        merged = F.merge_moments(merged, p)
    for a, b in zip(merged, whole):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_streamed_regression_equals_in_memory_and_sklearn(digits, shards, alpha):
    X, y, c, ids = digits
    table = pd.DataFrame({"ink": y, "digit": c}, index=ids)
    kw = dict(alpha=alpha, n_permutations=0, n_bootstrap=50)
    streamed = LinearRegressionProbe(**kw).fit_stream(_labelled(shards, table, "ink", 97))
    memory = LinearRegressionProbe(**kw).fit(X, y)
    ref = (LinearRegression() if alpha == 0 else Ridge(alpha=alpha)).fit(X.astype(np.float64), y)
    np.testing.assert_allclose(streamed.coef_, memory.coef_, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(streamed.predict(X), ref.predict(X), rtol=1e-7, atol=1e-7)
    a, b = streamed.evaluate(X, y)["mae"], memory.evaluate(X, y)["mae"]
    assert (a.value, a.ci_low, a.ci_high, a.chance) == pytest.approx((b.value, b.ci_low, b.ci_high, b.chance), abs=1e-9)


def test_streamed_per_class_regression_equals_in_memory(digits, shards):
    X, y, c, ids = digits
    table = pd.DataFrame({"ink": y, "digit": c}, index=ids)
    batches = ((Xb, table.loc[i, "ink"].to_numpy(), table.loc[i, "digit"].to_numpy())
               for i, Xb in shards.iter_batches("pixels", max_rows=200))
    streamed = LinearRegressionProbe(per_class=True, alpha=0.5, n_permutations=0).fit_stream(batches, classes=c)
    memory = LinearRegressionProbe(per_class=True, alpha=0.5, n_permutations=0).fit(X, y, classes=c)
    np.testing.assert_allclose(streamed.predict(X, c), memory.predict(X, c), rtol=1e-9, atol=1e-9)
    assert streamed.evaluate(X, y, c)["mae"].p_value is None


def test_streamed_class_means_equal_in_memory_and_sklearn(digits, shards):
    X, _, c, ids = digits
    table = pd.DataFrame({"digit": c}, index=ids)
    streamed = MAVProbe(n_bootstrap=50).fit_stream(_labelled(shards, table, "digit", 64), classes=np.arange(10))
    memory = MAVProbe(n_bootstrap=50).fit(X, c)
    np.testing.assert_allclose(streamed.centroids_, memory.centroids_, rtol=1e-12)
    np.testing.assert_allclose(streamed.centroids_, NearestCentroid().fit(X, c).centroids_, rtol=1e-6)
    assert streamed.evaluate(X, c)["accuracy"].value == memory.evaluate(X, c)["accuracy"].value
    assert max(len(b) for _, b in shards.iter_batches("pixels", max_rows=64)) <= 64


def test_svm_subsample_is_the_seeded_rows_and_is_reported(digits):
    from pytest_invariance.probes import AttributeSVMProbe

    X, _, c, _ = digits
    Y = (c >= 5)[:, None].astype(int)
    tr, va, te = np.arange(0, 1000), np.arange(1000, 1400), np.arange(1400, len(X))
    kw = dict(n_permutations=0, n_bootstrap=50, random_state=3)
    sub = AttributeSVMProbe(max_train_rows=300, **kw).fit(X[tr], Y[tr], X[va], Y[va])
    keep = np.sort(np.random.default_rng(3).choice(1000, 300, replace=False))
    ref = AttributeSVMProbe(**kw).fit(X[tr][keep], Y[tr][keep], X[va], Y[va])
    np.testing.assert_array_equal(sub.coef_, ref.coef_)
    again = AttributeSVMProbe(max_train_rows=300, **kw).fit(X[tr], Y[tr], X[va], Y[va])
    np.testing.assert_array_equal(sub.coef_, again.coef_)  # same seed, same rows, same numbers
    d = sub.evaluate(X[te], Y[te])["attr_0"]["balanced_error"].details
    assert (d["train_rows"], d["train_rows_given"]) == (300, 1000) and "seeded" in d["subsample"]
    with pytest.raises(Exception, match="'max_train_rows' parameter of AttributeSVMProbe"):
        AttributeSVMProbe(max_train_rows=0).fit(X[tr], Y[tr], X[va], Y[va])
