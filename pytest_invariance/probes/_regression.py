"""§3.2 / §4.1: linear regression of a continuous factor (|yaw|, rotation angle)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from . import functional as F
from ._blas import map_threads
from ._estimate import Estimate
from ._validation import (Device, Grid, Interval, Options, ProbeMixin, check_features, check_lengths,
                          check_min_class_count, check_target_vector, resolve_device)
from .stats import bootstrap_ci, p_value, permutations


class LinearRegressionProbe(ProbeMixin):
    """Predict a continuous factor from embeddings with least squares (optionally ridge).

    Parameters
    ----------
    per_class : bool
        One regressor per class (§4.1: "a linear regressor for each label"); each test
        sample is predicted by its own class's regressor, so ``classes`` is required.
    bins : sequence of float, optional
        Edges such as (0, 15, 30, 45) giving Table 1's bins 0-15, 15-30, 30-45, >45
        (left-closed, binned by the TRUE factor value) plus "total".
    alpha : float
        Ridge penalty on the weights (intercept unpenalised); 0 is ordinary least
        squares, solved as minimum norm (equal to ``sklearn.linear_model.LinearRegression``).
    n_permutations : int
        Refits on shuffled targets (shuffled within class in per-class mode) for ``p_value``.

    Notes
    -----
    ``chance`` of the MAE is the MAE of predicting the training mean (per class in
    per-class mode): what a probe reaches when the features hold no information. The
    permutation refits give the p-value and ``details["permutation_mae"]``; they are not
    used as chance because an overfit refit can be worse than the mean. ``mae_std`` is the
    standard deviation of the absolute error; in per-class mode the mean over classes of
    the per-class std, as the paper averages over the ten labels (Fig. 3).

    The fit is computed from sufficient statistics (:func:`functional.group_moments`, one
    blocked float64 pass over ``X``); they stay on the probe as ``moments_`` (one group per
    regressor), e.g. to pool them into the one-regressor fit (``moments_.pooled()``).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); y = X @ [1.0, 2.0, 0.0] + 5
    >>> probe = LinearRegressionProbe(n_permutations=0, n_bootstrap=50).fit(X, y)
    >>> round(probe.evaluate(X, y)["mae"].value, 6)
    0.0
    """

    higher_is_better = False
    _parameter_constraints = {
        "per_class": [Options((True, False))],
        "bins": [Options((None,)), Grid(Interval("float", None, None))],
        "alpha": [Interval("float", 0, None, "left")],
        "device": [Device()],
        "n_bootstrap": [Interval("int", 0, None, "left")],
        "n_permutations": [Interval("int", 0, None, "left")],
        "confidence": [Interval("float", 0, 1)],
        "random_state": [Interval("int", 0, None, "left")],
    }

    def __init__(self, *, per_class: bool = False, bins: Sequence[float] | None = None, alpha: float = 0.0,
                 device: str = "cpu", n_bootstrap: int = 1000, n_permutations: int = 20,
                 confidence: float = 0.95, random_state: int = 0) -> None:
        self.per_class = per_class
        self.bins = bins
        self.alpha = alpha
        self.device = device
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations
        self.confidence = confidence
        self.random_state = random_state

    def _groups(self, n: int, classes: Any, fitting: bool) -> NDArray[np.int64]:
        if not self.per_class:
            return np.zeros(n, dtype=np.int64)
        if classes is None:
            raise DataError("per_class=True needs classes= (the label of each sample) to pick its regressor.")
        c = np.asarray(classes)
        check_lengths(n, classes=c)
        if fitting:
            return np.unique(c, return_inverse=True)[1]  # type: ignore[no-any-return]
        unknown = ~np.isin(c, self.classes_)
        if unknown.any():
            raise DataError(f"classes {np.unique(c[unknown])[:5].tolist()} were not seen in fit; "
                            f"known classes: {self.classes_[:10].tolist()}.")
        return np.searchsorted(self.classes_, c)  # type: ignore[no-any-return]

    def _fit_groups(self, X: NDArray[Any], y: NDArray[np.float64], g: NDArray[np.int64], k: int) -> None:
        """One regressor per group from its moments; keeps each group's eigendecomposition
        so that the permutation refits only need new cross-products, which are taken in the
        same pass over ``X`` (their shuffles are seeded, so known before :meth:`evaluate`)."""
        if self.n_permutations > 0:
            mo, self._null_moments = F.group_moments(X, g, k, y[:, None], self._device,
                                                     also=self._permuted_targets(y, g, k))
        else:
            mo, self._null_moments = F.group_moments(X, g, k, y[:, None], self._device), None
        self._fit_moments(mo)

    def _permuted_targets(self, y: NDArray[np.float64], g: NDArray[np.int64], k: int) -> NDArray[np.float64]:
        """``[n, n_permutations]``: ``y`` shuffled within each group (per-class mode keeps each
        regressor's class, breaks the factor link), one seeded shuffle per column (the row
        orders of :func:`~.stats.permutation_chance` applied to seeded random keys)."""
        keys = np.random.default_rng(self.random_state).random(len(y))
        groups = [np.flatnonzero(g == c) for c in range(k)]
        Yp = np.empty((len(y), self.n_permutations))
        # One shuffle at a time: no [n_permutations, n] orders and keys beside Yp (110 MB for
        # rotated MNIST's 350,000 rows, at the study's peak).
        for j, order in enumerate(permutations(len(y), self.n_permutations, self.random_state)):
            shuffled = keys[order]
            for rows in groups:
                Yp[rows, j] = y[rows][np.argsort(shuffled[rows])]
        return Yp

    def _fit_moments(self, mo: F.Moments) -> None:
        k = len(mo.counts)
        self.moments_ = mo
        self._eig = [F.ridge_eig(mo.scatter[c], self.alpha) for c in range(k)]
        self._x_means = mo.means
        fits = [F.ridge_solve(*self._eig[c], mo.cross[c], mo.means[c], mo.y_means[c]) for c in range(k)]
        self.coef_ = np.stack([coef[0] for coef, _ in fits])  # [k, d]
        self.intercept_ = np.array([b[0] for _, b in fits])  # [k]

    def fit(self, X: Any, y: Any, classes: Any = None) -> "LinearRegressionProbe":
        self._validate_params()
        self._device = resolve_device(self.device)
        X = check_features(X)
        y = check_target_vector(y)
        check_lengths(len(X), y=y)
        if self.per_class:
            check_min_class_count(np.asarray(classes) if classes is not None else np.zeros(0), "class")
        self.classes_ = np.unique(np.asarray(classes)) if self.per_class else np.array([0])
        g = self._groups(len(X), classes, fitting=True)
        counts = np.bincount(g, minlength=len(self.classes_))
        if self.alpha == 0 and counts.min() <= X.shape[1]:
            raise DataError(f"least squares with {X.shape[1]} features needs more than {X.shape[1]} samples per "
                            f"regressor but one has {counts.min()}; the fit would interpolate. Set alpha > 0 (ridge) "
                            "or provide more samples.")
        if np.ptp(y) == 0:
            raise DataError("y is constant; there is no factor to predict. Check the factor labels.")
        self.n_features_in_ = X.shape[1]
        self._fit_groups(X, y, g, len(self.classes_))
        self.train_mean_ = np.bincount(g, weights=y) / counts
        return self

    def fit_stream(self, batches: Iterable[tuple[Any, ...]], *, classes: Any = None) -> "LinearRegressionProbe":
        """Fit from batches ``(X, y)`` (or ``(X, y, classes)`` with ``per_class``) that are
        never held together: their :class:`~.functional.Moments` are merged exactly
        (:func:`~.functional.merge_moments`), so the fit equals :meth:`fit` on all rows.
        ``classes``: every class that occurs (per-class mode). No rows are kept, so
        :meth:`evaluate` reports no permutation p-value after a streamed fit.
        """
        self._validate_params()
        self._device = resolve_device(self.device)
        if self.per_class and classes is None:
            raise DataError("fit_stream with per_class=True needs classes= (every class that occurs).")
        self.classes_ = np.unique(np.asarray(classes)) if self.per_class else np.array([0])
        mo: F.Moments | None = None
        for batch in batches:
            X, y = check_features(batch[0]), check_target_vector(batch[1])
            check_lengths(len(X), y=y)
            g = self._groups(len(X), batch[2] if self.per_class else None, fitting=False)
            part = F.group_moments(X, g, len(self.classes_), y[:, None], self._device)
            mo = part if mo is None else F.merge_moments(mo, part)
        if mo is None:
            raise DataError("fit_stream got no batches.")
        if self.alpha == 0 and mo.counts.min() <= mo.means.shape[1]:
            raise DataError(f"least squares with {mo.means.shape[1]} features needs more than {mo.means.shape[1]} "
                            f"samples per regressor but one has {mo.counts.min()}; set alpha > 0 (ridge).")
        self.n_features_in_ = mo.means.shape[1]
        self._fit_moments(mo)
        self._null_moments = None
        self.train_mean_ = mo.y_means[:, 0]
        return self

    def fit_rows(self, X: Any, y: Any, classes: Any = None, *, max_rows: int | None = None) -> "LinearRegressionProbe":
        """:meth:`fit` when ``max_rows`` is None, else :meth:`fit_stream` over chunks of at most
        ``max_rows`` rows of ``X`` (``--invariance-max-rows``): the same coefficients (exact
        merged moments), no float64 copy of more than a chunk, and no permutation p-value."""
        if not max_rows or len(X) <= max_rows:
            return self.fit(X, y, classes)
        y, c = np.asarray(y), None if classes is None else np.asarray(classes)
        chunks = F.row_chunks(len(X), max_rows)
        return self.fit_stream(((X[i], y[i]) if c is None else (X[i], y[i], c[i]) for i in chunks), classes=c)

    def predict(self, X: Any, classes: Any = None) -> NDArray[np.float64]:
        self._check_is_fitted("coef_")
        X = check_features(X)
        self._check_n_features(X)
        g = self._groups(len(X), classes, fitting=False)
        # In blocks of rows: the same per-row sums, without a float64 [n, d] copy of the coefficients.
        out = np.empty(len(X))
        for s in range(0, len(X), F._BLOCK):
            out[s: s + F._BLOCK] = np.einsum("nd,nd->n", X[s: s + F._BLOCK], self.coef_[g[s: s + F._BLOCK]])
        return out + self.intercept_[g]  # type: ignore[no-any-return]

    def _null_mae(self, X: Any, y: NDArray[np.float64], g: NDArray[np.int64]) -> NDArray[np.float64]:
        """Test MAE of each permutation refit ``[n_permutations]``: every refit of a group reuses
        its eigendecomposition and the cross-products taken at fit (:meth:`_fit_groups`)."""
        null = self._null_moments
        Xte = np.asarray(X)
        P = np.empty((len(Xte), null.cross.shape[2]))

        def one_class(c: int) -> None:  # classes are independent: one per thread
            coef, b = F.ridge_solve(*self._eig[c], null.cross[c], self._x_means[c], null.y_means[c])
            # float64 one class at a time: no float64 copy of the whole test set
            P[g == c] = Xte[g == c].astype(np.float64) @ coef.T + b

        map_threads(one_class, range(len(self.classes_)))
        return np.abs(P - y[:, None]).mean(0)  # type: ignore[no-any-return]

    def _mae_std(self, err: NDArray[np.float64],
                 g: NDArray[np.int64]) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
        """Std of |error| under resample counts [b, n], as a function of the counts; mean over
        classes of per-class std. The per-row terms are built once, not per block of resamples."""
        k = len(self.classes_)
        onehot = np.eye(k)[g]
        w1, w2 = onehot * err[:, None], onehot * err[:, None] ** 2

        def std_of(counts: NDArray[np.float64]) -> NDArray[np.float64]:
            n_c = counts @ onehot
            with np.errstate(invalid="ignore", divide="ignore"):
                m1 = (counts @ w1) / n_c
                m2 = (counts @ w2) / n_c
                std = np.sqrt(np.clip(m2 - m1**2, 0, None) * n_c / (n_c - 1))
            return np.nanmean(std, axis=1)  # type: ignore[no-any-return]

        return std_of

    def evaluate(self, X: Any, y: Any, classes: Any = None, groups: Any = None) -> dict[str, Any]:
        """``{"mae": Estimate, "mae_std": Estimate, "bins": [{"bin", "estimate", "count"}, ...]}``.
        ``groups`` [n] (e.g. identities): the MAE's CI resamples whole groups."""
        pred = self.predict(X, classes)
        y = check_target_vector(y)
        check_lengths(len(pred), y=y)
        g = self._groups(len(y), classes, fitting=False)
        err = np.abs(pred - y)
        n = len(y)
        kw = dict(n_bootstrap=self.n_bootstrap, confidence=self.confidence, random_state=self.random_state)
        lo, hi, _ = bootstrap_ci(err, **kw, groups=groups)
        chance = float(np.abs(self.train_mean_[g] - y).mean())
        details: dict[str, Any] = {"chance_method": "MAE of predicting the training mean", "alpha": self.alpha}
        if groups is not None:
            details["bootstrap"] = f"over {len(np.unique(np.asarray(groups)))} groups (cluster bootstrap)"
        pv = None
        if self.n_permutations > 0 and self._null_moments is None:
            details["permutation"] = "not run: streamed fit (training rows not kept)"
        elif self.n_permutations > 0:
            pvals = self._null_mae(X, y, g)
            details["permutation_mae"] = float(pvals.mean(0))
            pv = float(p_value(err.mean(), pvals, higher_is_better=False))
        out: dict[str, Any] = {"mae": Estimate(float(err.mean()), float(lo), float(hi), chance=chance, n=n,
                                               p_value=pv, confidence=self.confidence, details=details)}
        std_of = self._mae_std(err, g)
        slo, shi, _ = bootstrap_ci(std_of, n=n, **kw)
        ones = np.ones((1, n))
        out["mae_std"] = Estimate(float(std_of(ones)[0]), float(slo), float(shi), n=n,
                                  confidence=self.confidence, details={"per_class": self.per_class})
        if self.bins is not None:
            out["bins"] = self._bins(err, y, chance_pred=self.train_mean_[g], kw=kw)
        return out

    def _bins(self, err: NDArray[np.float64], y: NDArray[np.float64], chance_pred: NDArray[np.float64],
              kw: dict[str, Any]) -> list[dict[str, Any]]:
        labels = F.bin_labels(self.bins)
        idx = F.bin_index(y, self.bins)
        rows = []
        if (idx < 0).any():
            labels, idx = [f"<{float(self.bins[0]):g}"] + labels, idx + 1  # type: ignore[index]
        for b, label in enumerate(labels):
            sel = idx == b
            if not sel.any():
                rows.append({"bin": label, "estimate": None, "count": 0})
                continue
            lo, hi, _ = bootstrap_ci(err[sel], **kw)
            est = Estimate(float(err[sel].mean()), float(lo), float(hi),
                           chance=float(np.abs(chance_pred[sel] - y[sel]).mean()), n=int(sel.sum()),
                           confidence=self.confidence)
            rows.append({"bin": label, "estimate": est, "count": int(sel.sum())})
        lo, hi, _ = bootstrap_ci(err, **kw)
        rows.append({"bin": "total", "count": len(err), "estimate": Estimate(
            float(err.mean()), float(lo), float(hi), chance=float(np.abs(chance_pred - y).mean()), n=len(err),
            confidence=self.confidence)})
        return rows
