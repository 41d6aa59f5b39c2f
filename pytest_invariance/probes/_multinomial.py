"""A categorical factor (K levels) probed with one balanced multinomial linear model."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ._estimate import Estimate
from ._standardise import Standardiser, within_rounding
from ._validation import (Grid, Interval, Options, ProbeMixin, check_features, check_lengths, check_min_class_count,
                          check_not_constant)
from .stats import bootstrap_ci, p_value, permutation_chance


def balanced_accuracy(y: NDArray[Any], pred: NDArray[Any], counts: NDArray[np.float64] | None = None,
                      classes: NDArray[Any] | None = None) -> NDArray[np.float64]:
    """Mean per-class recall, for resample ``counts`` [b, n] (default: the sample itself once).

    Classes absent from a resample are left out of its mean (as sklearn's
    ``balanced_accuracy_score`` does for classes absent from ``y``).
    """
    classes = np.unique(y) if classes is None else classes
    counts = np.ones((1, len(y))) if counts is None else counts
    onehot = (np.asarray(y)[:, None] == classes[None, :]).astype(np.float64)  # [n, K]
    hit = onehot * (np.asarray(pred) == np.asarray(y))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (counts @ hit) / (counts @ onehot)  # [b, K]
    return np.nanmean(recall, axis=1)  # type: ignore[no-any-return]


class MultinomialProbe(ProbeMixin):
    """Balanced multinomial logistic regression on embeddings, C chosen on a validation split.

    The model is scikit-learn's ``LogisticRegression(class_weight="balanced")`` (softmax
    over K levels, L2 penalty, lbfgs) on features standardised one by one, test rows
    clipped to the training range (:class:`~._standardise.Standardiser`); the figure is the
    test balanced accuracy (mean per-level recall), whose chance level is exactly ``1/K``.

    Parameters
    ----------
    C_grid : sequence of float > 0
        Candidate inverse penalties; the best validation balanced accuracy wins (ties: smaller C).
    max_iter : int
        lbfgs iterations per fit.
    n_bootstrap : int
        Percentile-bootstrap resamples of the test predictions.
    n_permutations : int
        Refits on shuffled training labels at the chosen C for the p-value (0: none).
    confidence : float
    random_state : int
    robust : bool
        False: plain per-feature mean and std, no training row clipped (a linear probe of
        the features as given, as LEACE-erased features need); see :class:`AttributeSVMProbe`.

    Attributes
    ----------
    classes_ : ndarray [K]
    C_ : float
    val_balanced_accuracy_ : ndarray [len(C_grid)]
    model_ : sklearn.linear_model.LogisticRegression
    standardiser_ : Standardiser

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1, 2], 60); X = rng.normal(size=(180, 4)); X[:, 0] += 3 * y
    >>> p = MultinomialProbe(n_permutations=0, n_bootstrap=50).fit(X[::2], y[::2], X[1::4], y[1::4])
    >>> p.evaluate(X[3::4], y[3::4])["balanced_accuracy"].value > 0.8
    True
    """

    higher_is_better = True
    _parameter_constraints = {
        "C_grid": [Grid(Interval("float", 0, None))],
        "max_iter": [Interval("int", 1, None, "left")],
        "n_bootstrap": [Interval("int", 0, None, "left")],
        "n_permutations": [Interval("int", 0, None, "left")],
        "confidence": [Interval("float", 0, 1)],
        "random_state": [Interval("int", 0, None, "left")],
        "robust": [Options((True, False))],
    }

    def __init__(self, *, C_grid: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0), max_iter: int = 500,
                 n_bootstrap: int = 1000, n_permutations: int = 20, confidence: float = 0.95,
                 random_state: int = 0, robust: bool = True) -> None:
        self.C_grid = C_grid
        self.max_iter = max_iter
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations
        self.confidence = confidence
        self.random_state = random_state
        self.robust = robust

    def _new(self, C: float) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, class_weight="balanced", max_iter=self.max_iter)

    def _fit_one(self, X: NDArray[np.float64], y: NDArray[Any], C: float, start: Any = None) -> Any:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        model = self._new(C)
        if start is not None:
            model.set_params(warm_start=True)
            model.coef_, model.intercept_ = start.coef_.copy(), start.intercept_.copy()
        with warnings.catch_warnings():  # a C that has not converged in max_iter simply scores worse on val
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(X, y)

    def fit(self, X_train: Any, y_train: Any, X_val: Any, y_val: Any) -> "MultinomialProbe":
        """Fit at every C on train; keep the C with the best balanced accuracy on val."""
        self._validate_params()
        X, Xv = check_features(X_train, "X_train"), check_features(X_val, "X_val")
        y, yv = np.asarray(y_train), np.asarray(y_val)
        check_lengths(len(X), y_train=y)
        check_lengths(len(Xv), y_val=yv)
        check_min_class_count(y, "level")
        check_not_constant(X, "X_train")
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        self.standardiser_ = Standardiser.fit(X, robust=self.robust)
        Z = self.standardiser_.transform(X, fitted=True)
        Zv = self.standardiser_.transform(Xv)
        fits, start = [], None
        for C in sorted(self.C_grid):  # warm start along the path: each fit starts at the previous optimum
            fits.append(self._fit_one(Z, y, float(C), start))
            start = fits[-1]
        fits = [fits[i] for i in np.argsort(np.argsort(np.asarray(self.C_grid, float)))]
        if self._without_linear_signal(Z, y, X.dtype):  # the optimum at every C: w = 0, equal intercepts
            for m in fits:
                m.coef_[:], m.intercept_[:] = 0.0, 0.0
        self.val_balanced_accuracy_ = np.array([balanced_accuracy(yv, m.predict(Zv))[0] for m in fits])
        best = int(self.val_balanced_accuracy_.argmax())
        self.C_, self.model_ = float(self.C_grid[best]), fits[best]
        self._train = (Z, y)
        return self

    def _without_linear_signal(self, Z: NDArray[Any], y: NDArray[Any], input_dtype: Any) -> bool:
        """Whether every level's training rows have the balanced mean of all levels in every
        standardised feature, up to float rounding (:func:`~._standardise.within_rounding`).

        The balanced multinomial's gradient at ``w = 0`` (equal intercepts) is, for level
        ``k``, ``n / K`` times the mean of the level means minus level ``k``'s: zero for all
        ``k``, the optimum is ``w = 0`` and the prediction a constant (balanced accuracy
        ``1 / K``). LEACE of the one-hot levels leaves exactly that; fitted, the solver would
        decide the predictions by rounding."""
        codes = np.searchsorted(self.classes_, y)
        counts = np.bincount(codes, minlength=len(self.classes_)).astype(np.float64)
        K = len(counts)
        W = (codes[:, None] == np.arange(K)[None, :]) / counts[None, :] - 1.0 / (K * counts[codes])[:, None]
        scale = np.sqrt(1.0 / counts + (1.0 / counts).sum() / K**2)
        return bool(within_rounding(Z, W, scale, self.standardiser_, input_dtype).all())

    def predict(self, X: Any) -> NDArray[Any]:
        self._check_is_fitted("model_")
        X = check_features(X)
        self._check_n_features(X)
        return self.model_.predict(self.standardiser_.transform(X))  # type: ignore[no-any-return]

    def evaluate(self, X_test: Any, y_test: Any, groups: Any = None) -> dict[str, Estimate]:
        """``{"balanced_accuracy": Estimate}``; chance ``1/K``, p-value from refits on shuffled labels.
        ``groups`` [n_test] (e.g. identities): the CI resamples whole groups."""
        y = np.asarray(y_test)
        pred = self.predict(X_test)
        check_lengths(len(pred), y_test=y)
        value = float(balanced_accuracy(y, pred, classes=self.classes_)[0])
        lo, hi, _ = bootstrap_ci(lambda c: balanced_accuracy(y, pred, c, self.classes_), n=len(y),
                                 n_bootstrap=self.n_bootstrap, confidence=self.confidence,
                                 random_state=self.random_state, groups=groups)
        details: dict[str, Any] = {"C": self.C_, "levels": len(self.classes_),
                                   "per_level_count": {str(c): int((y == c).sum()) for c in self.classes_}}
        if groups is not None:
            details["bootstrap"] = f"over {len(np.unique(np.asarray(groups)))} groups (cluster bootstrap)"
        if self.standardiser_.outlier_rows:
            details["outlier_rows"] = self.standardiser_.outlier_rows
        if beyond := self.standardiser_.extrapolated_rows(check_features(X_test)):
            details["extrapolated_rows"] = beyond
        pv = None
        if self.n_permutations > 0:
            Z, ytr = self._train
            Zt = self.standardiser_.transform(check_features(X_test))

            def refit(yp: NDArray[Any]) -> float:
                return float(balanced_accuracy(y, self._fit_one(Z, yp, self.C_).predict(Zt), classes=self.classes_)[0])

            mean, null = permutation_chance(refit, ytr, self.n_permutations, self.random_state)
            details["permutation_balanced_accuracy"] = float(mean)
            pv = float(p_value(value, null, higher_is_better=True))
        return {"balanced_accuracy": Estimate(value, float(lo), float(hi), chance=1.0 / len(self.classes_),
                                              n=len(y), p_value=pv, confidence=self.confidence, details=details)}
