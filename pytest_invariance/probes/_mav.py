"""§4.1: mean activation vector (MAV) classification, optionally one MAV per factor level."""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from . import functional as F
from ._estimate import Estimate
from ._validation import (Interval, Options, ProbeMixin, check_features, check_lengths, check_min_class_count,
                          check_target_vector, zero_rows)
from .stats import bootstrap_ci


class MAVProbe(ProbeMixin):
    """Nearest mean-activation-vector classifier (cosine by default).

    Parameters
    ----------
    metric : {"cosine", "euclidean"}
        Similarity to the class MAVs; the paper uses cosine.
    n_bootstrap, confidence, random_state
        Percentile bootstrap of the test accuracy.

    Notes
    -----
    With ``factor`` at fit (e.g. the rotation angle), one MAV per (level, class) is kept,
    ``centroids_`` is then [n_levels, n_classes, D]. At predict, each sample is compared
    only with the MAVs of its level: the given (true or estimated, e.g. by
    :class:`LinearRegressionProbe`) factor snapped to the nearest trained level. Without
    a factor at predict, the level is estimated as that of the most similar MAV over all
    levels. A (level, class) pair absent from training is never predicted. Samples whose
    embedding is all zeros have no cosine similarity and are rejected.

    Examples
    --------
    >>> X = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 1.0], [0.1, 0.8]])
    >>> MAVProbe(n_bootstrap=10).fit(X, [0, 0, 1, 1]).predict([[1.0, 0.2]]).tolist()
    [0]
    """

    higher_is_better = True
    _parameter_constraints = {
        "metric": [Options(("cosine", "euclidean"))],
        "n_bootstrap": [Interval("int", 0, None, "left")],
        "confidence": [Interval("float", 0, 1)],
        "random_state": [Interval("int", 0, None, "left")],
    }

    def __init__(self, *, metric: str = "cosine", n_bootstrap: int = 1000, confidence: float = 0.95,
                 random_state: int = 0) -> None:
        self.metric = metric
        self.n_bootstrap = n_bootstrap
        self.confidence = confidence
        self.random_state = random_state

    def _check_X(self, X: Any) -> NDArray[Any]:
        # Kept in its dtype: sums are taken in float64 (F.class_sums), no float64 copy of X.
        X = check_features(X)
        if self.metric == "cosine":
            zero = zero_rows(X)
            if zero.size:
                raise DataError(f"{zero.size} samples are all-zero embeddings (first: {zero[:5].tolist()}); cosine "
                                "similarity is undefined for them: drop them or use metric='euclidean'.")
        return X

    def fit(self, X: Any, y: Any, factor: Any = None) -> "MAVProbe":
        self._validate_params()
        X = self._check_X(X)
        y = np.asarray(y)
        check_lengths(len(X), y=y)
        check_min_class_count(y, "class")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise DataError("MAVProbe needs at least 2 classes to classify; got one.")
        self.n_features_in_ = X.shape[1]
        k = len(self.classes_)
        if factor is None:
            self.levels_ = None
            self.centroids_ = F.class_means(X, codes, k)
            self.counts_ = np.bincount(codes, minlength=k)
        else:
            f = check_target_vector(factor, "factor")
            check_lengths(len(X), factor=f)
            self.levels_, lev = np.unique(f, return_inverse=True)
            sums, counts = F.class_sums(X, lev * k + codes, len(self.levels_) * k)
            self.counts_ = counts.reshape(len(self.levels_), k)
            self.centroids_ = (sums / np.maximum(counts, 1)[:, None]).reshape(len(self.levels_), k, -1)
        self.majority_ = float(np.bincount(codes).max() / len(codes))
        return self

    def fit_stream(self, batches: Iterable[tuple[Any, Any]], *, classes: Any) -> "MAVProbe":
        """Fit from batches ``(X, y)`` never held together: per-class sums and counts
        (:func:`~.functional.class_sums`) add up exactly, so the MAVs equal :meth:`fit`'s.
        ``classes``: every class that occurs. (Per-level MAVs, ``factor=``, need :meth:`fit`.)
        """
        self._validate_params()
        self.classes_ = np.unique(np.asarray(classes))
        k = len(self.classes_)
        if k < 2:
            raise DataError("MAVProbe needs at least 2 classes to classify; got one.")
        sums, counts = None, np.zeros(k, dtype=np.int64)
        for X, y in batches:
            X, y = self._check_X(X), np.asarray(y)
            check_lengths(len(X), y=y)
            unknown = ~np.isin(y, self.classes_)
            if unknown.any():
                raise DataError(f"labels {np.unique(y[unknown])[:5].tolist()} are not in classes=.")
            s, c = F.class_sums(X, np.searchsorted(self.classes_, y), k)
            sums, counts = (s if sums is None else sums + s), counts + c
        if sums is None:
            raise DataError("fit_stream got no batches.")
        self.n_features_in_, self.levels_, self.counts_ = sums.shape[1], None, counts
        self.centroids_ = sums / np.maximum(counts, 1)[:, None]
        self.majority_ = float(counts.max() / counts.sum())
        return self

    def fit_rows(self, X: Any, y: Any, *, max_rows: int | None = None) -> "MAVProbe":
        """:meth:`fit` when ``max_rows`` is None, else :meth:`fit_stream` over chunks of at
        most ``max_rows`` rows (``--invariance-max-rows``): the same MAVs (exact sums)."""
        if not max_rows or len(X) <= max_rows:
            return self.fit(X, y)
        y = np.asarray(y)
        return self.fit_stream(((X[i], y[i]) for i in F.row_chunks(len(X), max_rows)), classes=np.unique(y))

    def _scores(self, X: NDArray[np.float64], factor: Any) -> NDArray[np.float64]:
        """[n, n_classes] similarities to the MAVs of each sample's level."""
        if self.levels_ is None:
            return F.nearest_centroid(X, self.centroids_, self.metric)
        L, k = self.counts_.shape
        sim = F.nearest_centroid(X, self.centroids_.reshape(L * k, -1), self.metric).reshape(len(X), L, k)
        sim = np.where(self.counts_[None] > 0, sim, -np.inf)
        if factor is None:
            level = sim.max(2).argmax(1)
        else:
            f = check_target_vector(factor, "factor")
            check_lengths(len(X), factor=f)
            level = np.abs(f[:, None] - self.levels_[None, :]).argmin(1)
        return sim[np.arange(len(X)), level]  # type: ignore[no-any-return]

    def predict(self, X: Any, factor: Any = None) -> NDArray[Any]:
        self._check_is_fitted("centroids_")
        X = self._check_X(X)
        self._check_n_features(X)
        return self.classes_[self._scores(X, factor).argmax(1)]  # type: ignore[no-any-return]

    def evaluate(self, X: Any, y: Any, factor: Any = None) -> dict[str, Any]:
        """``{"accuracy": Estimate}``; chance = 1 / n_classes, details: majority baseline, per-class error."""
        return self.evaluate_predictions(self.predict(X, factor), y)

    def evaluate_predictions(self, pred: Any, y: Any) -> dict[str, Any]:
        """:meth:`evaluate` from predictions ``[n]`` already made by :meth:`predict` (a caller
        that needs them too need not score the test set twice)."""
        self._check_is_fitted("centroids_")
        pred, y = np.asarray(pred), np.asarray(y)
        check_lengths(len(pred), y=y)
        ok = (pred == y).astype(np.float64)
        lo, hi, _ = bootstrap_ci(ok, n_bootstrap=self.n_bootstrap, confidence=self.confidence,
                                 random_state=self.random_state)
        per_class = {str(c): float(1.0 - ok[y == c].mean()) for c in self.classes_ if (y == c).any()}
        details = {"majority_baseline": self.majority_, "per_class_error": per_class, "metric": self.metric,
                   "per_factor_level": self.levels_ is not None,
                   "chance_method": "uniform guess over the trained classes (1 / n_classes)"}
        return {"accuracy": Estimate(float(ok.mean()), float(lo), float(hi), chance=1.0 / len(self.classes_),
                                     n=len(y), confidence=self.confidence, details=details)}
