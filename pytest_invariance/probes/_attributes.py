"""§3.1: many binary attributes probed at once with class-balanced linear SVMs."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, warn
from . import functional as F
from ._estimate import Estimate
from ._standardise import Standardiser, within_rounding
from ._validation import (Device, Grid, Interval, Options, ProbeMixin, check_features, check_lengths,
                          check_not_constant, resolve_device)
from .stats import bootstrap_ci, p_value, permutation_chance

METRICS = ("fn_rate", "fp_rate", "balanced_error", "accuracy")


def without_linear_signal(Z: NDArray[np.floating], Y: NDArray[np.floating], st: Standardiser,
                          input_dtype: Any) -> NDArray[np.bool_]:
    """[T]: the targets (``Y`` [n, T] in {-1, +1}) whose positive and negative training rows
    have the same mean in every standardised feature of ``Z`` [n, d] up to float rounding
    (:func:`~._standardise.within_rounding`).

    For such a target the balanced squared-hinge SVM's optimum is ``w = 0`` (the gradient at
    ``w = 0`` is ``n`` times the difference of the class means, and the balanced weights put
    the intercept at 0), so the probe is a constant. LEACE leaves exactly that on the
    training rows it was fitted on (zero cross-covariance with the concept); what the solver
    then finds is rounding, and with the intercept at 0 the sign of the rounding decided
    every prediction (the factors suite's ``balanced_error_erased`` read 0.36, CI 0.26-0.47,
    where chance is 0.5).
    """
    n, T = Y.shape
    pos = Y > 0
    n_pos = pos.sum(0)
    n_neg = n - n_pos
    if (n_pos == 0).any() or (n_neg == 0).any():
        return np.zeros(T, bool)
    wts = np.where(pos, 1.0 / n_pos, -1.0 / n_neg)  # [n, T]: class-mean difference weights
    return within_rounding(Z, wts, np.sqrt(1.0 / n_pos + 1.0 / n_neg), st, input_dtype)


class AttributeSVMProbe(ProbeMixin):
    """One class-balanced linear SVM per binary attribute, C chosen on a validation split.

    The objective is liblinear's (``LinearSVC(class_weight="balanced")``): squared hinge,
    L2 penalty, intercept as a regularised feature of value 1. All attributes x all C
    values are solved together by :func:`functional.fit_squared_hinge_svm` (batched
    preconditioned L-BFGS in torch; same code on CPU and CUDA).

    Parameters
    ----------
    C_grid : sequence of float > 0
        Candidate C values; per attribute the one with the best validation balanced
        accuracy wins (ties go to the smaller C).
    device : str
        "cpu", "cuda", "cuda:N" or "auto".
    max_iter : int
        Solver iterations per column (each costs two passes over the training data);
        converged columns stop early (typically 10-40 iterations).
    tol : float
        liblinear's relative gradient rule (see the solver).
    n_bootstrap : int
        Percentile-bootstrap resamples of the test predictions.
    n_permutations : int
        Chance level: the probe is refit ``n_permutations`` times on shuffled training
        labels, *only at each attribute's chosen C* (for speed), and scored on the real
        test labels; the mean is ``chance``, the runs give ``p_value``. 0 disables it.
    confidence : float
        CI level.
    random_state : int
        Seeds the bootstrap and the permutations.
    min_class_count : int
        An attribute with fewer present or absent examples in any split is not measured
        (see :meth:`not_measurable`); the others are.
    max_train_rows : int or None
        Fit on a seeded uniform subsample of at most this many training rows
        (``--invariance-max-rows``; rows drawn by ``random_state``, kept in order): bounds
        the solver's memory. The bootstrap CI covers the test rows only, not the choice
        of subsample; docs/scale.md measures how much the figures move with it.
    robust : bool
        True: a few extreme training values do not set the feature scaling and are clipped
        (:class:`~._standardise.Standardiser`). False: plain mean and std, no training row
        clipped, so the SVM is a linear probe of the features as given (LEACE-erased
        features: clipping re-creates what the erasure removed).

    Units: the SVM is fit on the training rows standardised feature by feature
    (:class:`~._standardise.Standardiser`), so C means the same for every feature and a
    figure does not change when a feature is scaled or shifted (on raw features a fixed C
    grid lands elsewhere on the bias-variance trade-off for each scale: an embedding scaled
    by 1e-3 got constant predictions; with one RMS spread for the whole embedding, a factor
    carried by one low-variance dimension was missed). Rows to predict are clipped to the
    training rows' standardised range. The objective is liblinear's on those rows;
    ``coef_`` and ``intercept_`` are mapped back to the embedding's units (exact inside
    the training range). A fit that stops at ``max_iter`` warns and is flagged
    ``converged = False`` in the figures' details.

    Attributes
    ----------
    coef_ : ndarray [T, d]
    intercept_, C_ : ndarray [T]
    standardiser_ : Standardiser
        The training rows' per-feature mean, std and standardised range (the SVM's units).
    names_ : list of str
    val_balanced_accuracy_ : ndarray [T, len(C_grid)]

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 5)); Y = (X[:, :2] > 0).astype(int)
    >>> probe = AttributeSVMProbe(n_permutations=0, n_bootstrap=50).fit(X[:200], Y[:200], X[200:250], Y[200:250])
    >>> probe.evaluate(X[250:], Y[250:])["attr_0"]["accuracy"].value > 0.8
    True
    """

    higher_is_better = {"fn_rate": False, "fp_rate": False, "balanced_error": False, "accuracy": True}
    _parameter_constraints = {
        "C_grid": [Grid(Interval("float", 0, None))],
        "device": [Device()],
        "max_iter": [Interval("int", 1, None, "left")],
        "tol": [Interval("float", 0, None)],
        "n_bootstrap": [Interval("int", 0, None, "left")],
        "n_permutations": [Interval("int", 0, None, "left")],
        "confidence": [Interval("float", 0, 1)],
        "random_state": [Interval("int", 0, None, "left")],
        "robust": [Options((True, False))],
        "min_class_count": [Interval("int", 1, None, "left")],
        "max_train_rows": [Options((None,)), Interval("int", 1, None, "left")],
    }

    def __init__(self, *, C_grid: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0), device: str = "cpu",
                 max_iter: int = 100, tol: float = 1e-4, n_bootstrap: int = 1000, n_permutations: int = 20,
                 confidence: float = 0.95, random_state: int = 0, min_class_count: int = 5,
                 max_train_rows: int | None = None, robust: bool = True) -> None:
        self.C_grid = C_grid
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.n_bootstrap = n_bootstrap
        self.n_permutations = n_permutations
        self.confidence = confidence
        self.random_state = random_state
        self.min_class_count = min_class_count
        self.max_train_rows = max_train_rows
        self.robust = robust

    def train_subsample(self, n: int) -> NDArray[np.int64]:
        """The training rows :meth:`fit` keeps of ``n`` (seeded, sorted): all of them unless
        ``max_train_rows`` is below ``n``."""
        if self.max_train_rows is None or n <= self.max_train_rows:
            return np.arange(n)
        return np.sort(np.random.default_rng(self.random_state).choice(n, self.max_train_rows, replace=False))

    def _class_counts(self, Y: NDArray[np.float32]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        n_pos = (Y > 0).sum(0)
        return n_pos, len(Y) - n_pos

    def _unmeasurable(self, Y: NDArray[np.float32], where: str) -> dict[int, str]:
        """Targets with fewer than ``min_class_count`` present or absent examples in ``Y``."""
        n_pos, n_neg = self._class_counts(Y)
        k = self.min_class_count
        return {int(t): f"{int(n_pos[t])} present / {int(n_neg[t])} absent in {where} (need >= {k} of each)"
                for t in np.flatnonzero((n_pos < k) | (n_neg < k))}

    def not_measurable(self, Y_test: Any = None) -> dict[str, str]:
        """Attributes that cannot be measured, name -> reason with the counts.

        Fit marks those with fewer than ``min_class_count`` present or absent examples in
        the training or validation split (no fit, or C chosen on an undefined validation
        score); ``Y_test`` adds those short in the test split (an undefined rate).
        """
        self._check_is_fitted("coef_")
        out = {self.names_[t]: r for t, r in self._not_measurable.items()}
        if Y_test is not None:
            for t, r in self._unmeasurable(F.to_plus_minus(Y_test, "Y_test"), "the test split").items():
                out.setdefault(self.names_[t], r)
        return out

    def _solve(self, Z: NDArray[Any], Y: NDArray[np.float32], C: NDArray[np.float64], tgt: NDArray[np.int64]) -> F.SVMSolution:
        """Fit on the standardised training rows ``Z``; weights in standardised units."""
        return F.fit_squared_hinge_svm(Z, Y, C, tgt, tol=self.tol, max_iter=self.max_iter, device=self._device)

    def fit(self, X_train: Any, Y_train: Any, X_val: Any, Y_val: Any, names: Sequence[str] | None = None) -> "AttributeSVMProbe":
        """Fit every measurable attribute at every C on the training split; keep the best C on validation."""
        self._validate_params()
        self._device = resolve_device(self.device)
        X = check_features(X_train, "X_train")
        Xv = check_features(X_val, "X_val")
        Y, Yv = F.to_plus_minus(Y_train, "Y_train"), F.to_plus_minus(Y_val, "Y_val")
        check_lengths(len(X), Y_train=Y)
        check_lengths(len(Xv), Y_val=Yv)
        self.train_rows_ = (len(X), len(X))  # (used, given)
        if self.max_train_rows is not None and len(X) > self.max_train_rows:
            keep = self.train_subsample(len(X))
            self.train_rows_ = (len(keep), len(X))
            X, Y = X[keep], Y[keep]
        if Xv.shape[1] != X.shape[1] or Yv.shape[1] != Y.shape[1]:
            raise DataError(f"validation split has {Xv.shape[1]} features / {Yv.shape[1]} targets but the "
                            f"training split has {X.shape[1]} / {Y.shape[1]}; pass splits of the same table.")
        T = Y.shape[1]
        self.names_ = list(names) if names is not None else [f"attr_{i}" for i in range(T)]
        if len(self.names_) != T:
            raise DataError(f"names has {len(self.names_)} entries but Y has {T} targets.")
        self._not_measurable = {**self._unmeasurable(Yv, "the validation split"),
                                **self._unmeasurable(Y, "the training split")}
        self.measurable_ = np.array([t not in self._not_measurable for t in range(T)])
        if not self.measurable_.any():
            raise DataError(f"no attribute has {self.min_class_count} present and absent examples in both the "
                            f"training and validation splits, e.g. {self.names_[0]}: {self._not_measurable[0]}; "
                            "add data or lower min_class_count.")
        check_not_constant(X, "X_train")
        if X.shape[1] >= X.shape[0]:
            warn(f"X_train has {X.shape[1]} features for {X.shape[0]} samples: a linear SVM can fit "
                 "any labelling; read the figures against the permutation chance level.")
        grid = np.asarray(self.C_grid, dtype=np.float64)
        self.n_features_in_ = X.shape[1]
        m = np.flatnonzero(self.measurable_)
        dtype = np.float64 if X.dtype == np.float64 else np.float32
        self.standardiser_ = Standardiser.fit(X, robust=self.robust)
        Z = self.standardiser_.transform(X, dtype, fitted=True)
        self._X_train, self._Y_train = Z, Y[:, m]  # kept for the permutation refits in evaluate
        sol = self._solve(Z, Y[:, m], np.tile(grid, len(m)), np.repeat(np.arange(len(m)), len(grid)))
        # no linear signal (LEACE-erased rows): the optimum at every C is w = 0, b = 0
        flat = np.repeat(without_linear_signal(Z, Y[:, m], self.standardiser_, X.dtype), len(grid))
        sol.coef[flat], sol.intercept[flat], sol.n_iter[flat], sol.converged[flat] = 0.0, 0.0, 0, True
        pred = np.where(self.standardiser_.transform(Xv) @ sol.coef.T + sol.intercept > 0, 1.0, -1.0)
        bal = 1.0 - F.binary_rates(np.repeat(Yv[:, m], len(grid), axis=1), pred)["balanced_error"]
        # Both classes are in validation (measurable), so every score is defined.
        self.val_balanced_accuracy_ = np.full((T, len(grid)), np.nan)
        self.val_balanced_accuracy_[m] = bal.reshape(len(m), len(grid))
        best = self.val_balanced_accuracy_[m].argmax(1)  # first maximum = smallest C on ties
        cols = np.arange(len(m)) * len(grid) + best
        self.C_ = np.full(T, np.nan)
        self._coef_z, self._intercept_z = np.zeros((T, X.shape[1])), np.zeros(T)
        self.n_iter_, self.converged_ = np.zeros(T, np.int64), np.zeros(T, bool)
        self.C_[m], self._coef_z[m], self._intercept_z[m] = grid[best], sol.coef[cols], sol.intercept[cols]
        self.coef_ = self._coef_z / self.standardiser_.std
        self.intercept_ = self._intercept_z - self.coef_ @ self.standardiser_.mean
        self.n_iter_[m], self.converged_[m] = sol.n_iter[cols], sol.converged[cols]
        if not self.converged_[m].all():
            bad = [self.names_[t] for t in m[~self.converged_[m]]]
            warn(f"the SVM solver stopped at max_iter={self.max_iter} before convergence for {len(bad)} "
                 f"attribute(s), e.g. {bad[:3]}; their figures are flagged (details.converged = False). "
                 "Raise max_iter.")
        return self

    def decision_function(self, X: Any) -> NDArray[np.float64]:
        self._check_is_fitted("coef_")
        X = check_features(X)
        self._check_n_features(X)
        return self.standardiser_.transform(X) @ self._coef_z.T + self._intercept_z  # type: ignore[no-any-return]

    def predict(self, X: Any) -> NDArray[np.int64]:
        """Predicted attributes as 0/1, [n, T]."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def _null_rates(self, Zt: NDArray[Any], Yt: NDArray[np.float32], keep: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
        """Permutation refits for the attributes ``keep`` (indices into names_), scored on the
        standardised test rows ``Zt`` and their labels ``Yt`` [n, len(keep)]."""
        T, k = len(keep), self.n_permutations
        train_col = np.searchsorted(np.flatnonzero(self.measurable_), keep)  # columns of self._Y_train
        Ytr = self._Y_train[:, train_col]

        def refit(Y_perm: NDArray[np.float32]) -> NDArray[np.float64]:  # [k, n, T] -> [k, 4, T]
            Yb = np.transpose(Y_perm, (1, 0, 2)).reshape(len(Ytr), k * T)
            # Column j * T + t: permutation j of attribute t, fitted on its own column of Yb.
            sol = self._solve(self._X_train, Yb, np.tile(self.C_[keep], k), np.arange(k * T))
            pred = np.where(Zt @ sol.coef.T + sol.intercept > 0, 1.0, -1.0)
            rates = F.binary_rates(np.tile(Yt, k), pred)
            return np.stack([rates[m].reshape(k, T) for m in METRICS], axis=1)

        _, values = permutation_chance(refit, Ytr, k, self.random_state, batched=True)
        return {m: values[:, i] for i, m in enumerate(METRICS)}

    def evaluate(self, X_test: Any, Y_test: Any, groups: Any = None) -> dict[str, dict[str, Estimate]]:
        """Test-set figures per measurable attribute: ``{name: {metric: Estimate}}``.

        Metrics: ``fn_rate`` (labelled present, predicted absent), ``fp_rate``,
        ``balanced_error`` and ``accuracy``. Details hold the chosen ``C``, the counts,
        ``converged`` and, for accuracy, the majority-class baseline. Attributes listed by
        :meth:`not_measurable` (``Y_test`` included) are left out. ``groups`` [n_test] (e.g.
        identities): the CI resamples whole groups (:func:`~.stats.bootstrap_ci`).
        """
        self._check_is_fitted("coef_")
        Xt = check_features(X_test, "X_test")
        self._check_n_features(Xt)
        Yt = F.to_plus_minus(Y_test, "Y_test")
        check_lengths(len(Xt), Y_test=Yt)
        if Yt.shape[1] != len(self.names_):
            raise DataError(f"Y_test has {Yt.shape[1]} targets but the probe was fit on {len(self.names_)}.")
        skip = self.not_measurable(Yt)
        keep = np.array([t for t, name in enumerate(self.names_) if name not in skip], dtype=np.int64)
        if not keep.size:
            raise DataError(f"no attribute can be measured on this test split: {skip}")
        Yt = Yt[:, keep]
        Zt = self.standardiser_.transform(Xt)
        beyond = self.standardiser_.extrapolated_rows(Xt)
        pred = np.where(Zt @ self._coef_z[keep].T + self._intercept_z[keep] > 0, 1.0, -1.0)
        rates = F.binary_rates(Yt, pred)
        pos, neg = (Yt > 0).astype(np.float64), (Yt < 0).astype(np.float64)
        fn, fp, ok = pos * (pred < 0), neg * (pred > 0), (Yt == pred).astype(np.float64)

        def stat(counts: NDArray[np.float64]) -> NDArray[np.float64]:  # [b, n] -> [b, 4, T]
            with np.errstate(invalid="ignore", divide="ignore"):
                fnr, fpr = (counts @ fn) / (counts @ pos), (counts @ fp) / (counts @ neg)
            return np.stack([fnr, fpr, (fnr + fpr) / 2, (counts @ ok) / len(Yt)], axis=1)

        lo, hi, _ = bootstrap_ci(stat, n=len(Yt), n_bootstrap=self.n_bootstrap, confidence=self.confidence,
                                 random_state=self.random_state, groups=groups)
        null = self._null_rates(Zt, Yt, keep) if self.n_permutations > 0 else None
        out: dict[str, dict[str, Estimate]] = {}
        for t, a in enumerate(keep):
            name = self.names_[a]
            base = {"C": float(self.C_[a]), "n_pos": int(pos[:, t].sum()), "n_neg": int(neg[:, t].sum()),
                    "converged": bool(self.converged_[a]), "n_iter": int(self.n_iter_[a])}
            if self.standardiser_.outlier_rows:
                base["outlier_rows"] = self.standardiser_.outlier_rows
            if beyond:
                base["extrapolated_rows"] = beyond
            if groups is not None:
                base["bootstrap"] = f"over {len(np.unique(np.asarray(groups)))} groups (cluster bootstrap)"
            if self.train_rows_[0] < self.train_rows_[1]:
                base["train_rows"], base["train_rows_given"] = self.train_rows_
                base["subsample"] = "seeded uniform (--invariance-max-rows); the CI does not cover it"
            out[name] = {}
            # A probe that knows nothing trades one rate for the other (fn + fp = 1) wherever its
            # threshold sits: the chance of each rate is that of a guess with the probe's own
            # positive share q, not 0.5 (a coin-flip attribute read fn 0.68, fp 0.37).
            q, p = float((pred[:, t] > 0).mean()), float(pos[:, t].mean())
            chance = {"fn_rate": 1 - q, "fp_rate": q, "balanced_error": 0.5, "accuracy": q * p + (1 - q) * (1 - p)}
            for i, m in enumerate(METRICS):
                details = {**base, "predicted_positive_share": q,
                           "chance_method": "a guess with the probe's positive share q: fn 1 - q, fp q, balanced "
                                            "error 0.5, accuracy q p + (1 - q)(1 - p)"}
                if m == "accuracy":
                    details["majority_baseline"] = float(max(pos[:, t].mean(), neg[:, t].mean()))
                pv = None
                if null is not None:
                    details["permutation_chance"] = float(null[m][:, t].mean())
                    pv = float(p_value(rates[m][t], null[m][:, t], self.higher_is_better[m]))
                out[name][m] = Estimate(float(rates[m][t]), float(lo[i, t]), float(hi[i, t]), chance=chance[m],
                                        n=len(Yt), p_value=pv, confidence=self.confidence, details=details)
        return out
