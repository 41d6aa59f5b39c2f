"""§3.2's "non-linear probes": a one-hidden-layer MLP beside each linear probe.

The paper notes (§3.2) that non-linear regressors "could almost certainly" read more of a
factor than linear ones. :class:`MLPProbe` measures how much more, with the linear probes'
test split, bootstrap CI and chance level, so the two figures sit side by side.

Several target columns are trained at once as independent networks (weights stacked on
a leading axis and applied with one batched ``einsum``), so a real target and its
control task (``_control.py``), or 40 attributes, cost one training loop. The same code
runs on CPU and CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ._blas import one_torch_thread
from ._estimate import Estimate
from ._standardise import Standardiser
from ._validation import (Device, Interval, Options, ProbeMixin, check_features, check_lengths, resolve_device)
from .stats import bootstrap_ci


@dataclass
class MLPWeights:
    """Fitted parameters of T stacked networks: W1 [T, d, h], b1 [T, h], w2 [T, h], b2 [T]."""

    W1: Any
    b1: Any
    w2: Any
    b2: Any
    epochs: NDArray[np.int64]  # per column, the epoch (1-based) that ended its best round


#: Fewest optimiser steps between two validations (see fit_mlp).
MIN_ROUND_STEPS = 50


def _forward(p: MLPWeights | dict[str, Any], x: Any) -> Any:
    get = (lambda k: p[k]) if isinstance(p, dict) else (lambda k: getattr(p, k))  # noqa: E731
    h = (x @ get("W1") + get("b1")[:, None, :]).relu()  # [T, B, h]: x [B, d] broadcasts over T
    return (h * get("w2")[:, None, :]).sum(-1) + get("b2")[:, None]  # [T, B]


def _loss(out: Any, y: Any, w: Any, task: str) -> Any:
    import torch.nn.functional as tF

    if task == "regression":
        per = (out - y) ** 2
    else:
        per = tF.binary_cross_entropy_with_logits(out, y, reduction="none")
    return (per * w).sum() if task == "binary" else per.mean(1).sum()


def _val_score(out: Any, y: Any, task: str) -> Any:
    """Per column, lower is better: MSE (standardised units) or balanced error."""
    if task == "regression":
        return ((out - y) ** 2).mean(1)
    pred, pos = out > 0, y > 0.5
    fn = (pos & ~pred).sum(1) / pos.sum(1).clamp(min=1)
    fp = (~pos & pred).sum(1) / (~pos).sum(1).clamp(min=1)
    return (fn + fp) / 2


def fit_mlp(X: NDArray[np.floating], Y: NDArray[np.floating], val: NDArray[np.bool_], *, task: str, hidden: int,
            lr: float, weight_decay: float, batch_size: int, max_epochs: int, patience: int, device: str,
            seed: int) -> MLPWeights:
    """Train one MLP per column of ``Y`` [n, T] on the rows not in ``val``; keep each column's best epoch.

    ``X`` is expected standardised. Training runs in rounds of one epoch, or of as many
    epochs as make ``MIN_ROUND_STEPS`` optimiser steps; validation follows each round.
    Early stopping: a column's weights are those of the round with the lowest validation
    score (MSE, or balanced error for ``task="binary"``), and training stops when no
    column improved for ``patience`` rounds or after ``max_epochs`` rounds. Binary columns use
    class-balanced cross-entropy (each class weighs half), like the balanced linear SVMs.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32, device=device)
    Yt = torch.as_tensor(Y, dtype=torch.float32, device=device).T.contiguous()  # [T, n]
    tr_idx = torch.as_tensor(np.flatnonzero(~val), device=device)
    va_idx = torch.as_tensor(np.flatnonzero(val), device=device)
    T, d = Yt.shape[0], Xt.shape[1]
    # PyTorch's default Linear init (Kaiming-uniform bounds), drawn from the seeded generator.
    b1_, b2_ = 1 / d**0.5, 1 / hidden**0.5
    init = [torch.empty(s).uniform_(-b, b, generator=gen) for s, b in
            (((T, d, hidden), b1_), ((T, hidden), b1_), ((T, hidden), b2_), ((T,), b2_))]
    params = {k: v.to(device).requires_grad_() for k, v in zip(("W1", "b1", "w2", "b2"), init)}
    weights = None
    if task == "binary":  # each class weighs half of its column's loss
        pos = Yt[:, tr_idx].mean(1, keepdim=True)
        weights = lambda yb: torch.where(yb > 0.5, 0.5 / pos, 0.5 / (1 - pos)) / yb.shape[1]  # noqa: E731
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=weight_decay)
    best = {k: v.detach().clone() for k, v in params.items()}
    best_score = torch.full((T,), float("inf"), device=device)
    best_epoch = torch.zeros(T, dtype=torch.int64, device=device)
    stale = 0
    # A round is one epoch, or enough epochs for MIN_ROUND_STEPS optimiser steps: on a few
    # hundred rows an epoch is 1-4 steps, and validating after each stopped training after
    # ~20 steps, an underfitted probe that understated the leak (MAE 2.1 where 1.7 is reachable).
    per_round = -(-MIN_ROUND_STEPS // -(-len(tr_idx) // batch_size))
    for rnd in range(max_epochs):
        for _ in range(per_round):
            order = tr_idx[torch.randperm(len(tr_idx), generator=gen).to(device)]
            for s in range(0, len(order), batch_size):
                rows = order[s : s + batch_size]
                yb = Yt[:, rows]
                loss = _loss(_forward(params, Xt[rows]), yb, weights(yb) if weights else 1.0, task)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        epoch = (rnd + 1) * per_round - 1
        with torch.no_grad():
            score = _val_score(_forward(params, Xt[va_idx]), Yt[:, va_idx], task)
            better = score < best_score - 1e-6
            for k, v in params.items():
                best[k][better] = v[better]
            best_score = torch.where(better, score, best_score)
            best_epoch = torch.where(better, torch.full_like(best_epoch, epoch + 1), best_epoch)
        stale = 0 if bool(better.any()) else stale + 1
        if stale >= patience:
            break
    return MLPWeights(**best, epochs=best_epoch.cpu().numpy())


class MLPProbe(ProbeMixin):
    """One-hidden-layer ReLU MLP predicting a factor from embeddings; figures with CIs.

    Parameters
    ----------
    task : {"regression", "binary"}
        Regression is scored by MAE (chance: MAE of predicting the training mean, as
        :class:`LinearRegressionProbe`); binary by balanced error (chance 0.5, as
        :class:`AttributeSVMProbe`) and accuracy.
    hidden : int
        Hidden units.
    max_train : int or None
        Fit on at most this many training rows (seeded subset); None uses all. The MLP's
        cost grows with rows, the linear probes' hardly; the subset is in ``details``.
    val_fraction : float
        Share of the (subset) training rows held out for early stopping; with ``groups``
        at fit, whole groups (identities, source images) are held out.
    max_epochs, patience, lr, weight_decay, batch_size
        AdamW training in rounds (validation after each): a round is one epoch, or on few
        rows as many epochs as make 50 optimiser steps. Stops when validation has not
        improved for ``patience`` rounds, or after ``max_epochs`` rounds.
    device : str
        "cpu", "cuda", "cuda:N" or "auto".
    n_bootstrap, confidence, random_state
        Percentile bootstrap of the test figures; the seed also fixes the subset, the
        validation split, the initial weights and the batch order.

    Notes
    -----
    Inputs are standardised with the training mean and std, and clipped at prediction to
    the standardised range of the rows it was fitted on: a test value a feature never
    showed in training cannot be amplified without bound. With ``classes`` (the
    per-class mode of §4.1, one regressor per digit), the class enters as a one-hot input
    rather than as ten separate networks: one network shares what the classes share.
    A column of ``y`` [n, T] is one independent network; all train together.
    No permutation p-value: chance is the analytic baseline, so ``p_value`` is None.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(600, 4)); y = np.linalg.norm(X[:, :2], axis=1)
    >>> p = MLPProbe(n_bootstrap=50, max_epochs=60).fit(X[:500], y[:500])
    >>> e = p.evaluate(X[500:], y[500:])["mae"]
    >>> e.value < 0.5 * e.chance
    True
    """

    _parameter_constraints = {
        "task": [Options(("regression", "binary"))],
        "hidden": [Interval("int", 1, None, "left")],
        "max_train": [Options((None,)), Interval("int", 10, None, "left")],
        "val_fraction": [Interval("float", 0, 1)],
        "max_epochs": [Interval("int", 1, None, "left")],
        "patience": [Interval("int", 1, None, "left")],
        "lr": [Interval("float", 0, None)],
        "weight_decay": [Interval("float", 0, None, "left")],
        "batch_size": [Interval("int", 1, None, "left")],
        "device": [Device()],
        "n_bootstrap": [Interval("int", 0, None, "left")],
        "confidence": [Interval("float", 0, 1)],
        "random_state": [Interval("int", 0, None, "left")],
    }

    def __init__(self, *, task: str = "regression", hidden: int = 128, max_train: int | None = None,
                 val_fraction: float = 0.2, max_epochs: int = 40, patience: int = 4, lr: float = 1e-3,
                 weight_decay: float = 1e-4, batch_size: int = 256, device: str = "cpu", n_bootstrap: int = 1000,
                 confidence: float = 0.95, random_state: int = 0) -> None:
        self.task = task
        self.hidden = hidden
        self.max_train = max_train
        self.val_fraction = val_fraction
        self.max_epochs = max_epochs
        self.patience = patience
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.device = device
        self.n_bootstrap = n_bootstrap
        self.confidence = confidence
        self.random_state = random_state

    @property
    def higher_is_better(self) -> dict[str, bool]:
        return {"mae": False, "balanced_error": False, "accuracy": True}

    def _inputs(self, X: NDArray[Any], classes: Any, fitting: bool) -> NDArray[np.float64]:
        if fitting:
            self.classes_ = None if classes is None else np.unique(np.asarray(classes))
        elif (classes is None) != (self.classes_ is None):
            raise DataError("pass classes= to predict/evaluate exactly when it was passed to fit "
                            "(the class is an input of a per-class MLP probe).")
        if self.classes_ is None:
            return np.asarray(X, dtype=np.float64)
        c = np.asarray(classes)
        check_lengths(len(X), classes=c)
        unknown = ~np.isin(c, self.classes_)
        if unknown.any():
            raise DataError(f"classes {np.unique(c[unknown])[:5].tolist()} were not seen in fit; "
                            f"known classes: {self.classes_[:10].tolist()}.")
        # Features and one-hot class written into one float64 array (no second copy, as hstack makes).
        out = np.empty((len(X), X.shape[1] + len(self.classes_)))
        out[:, : X.shape[1]] = X
        out[:, X.shape[1]:] = np.eye(len(self.classes_))[np.searchsorted(self.classes_, c)]
        return out

    def _targets(self, y: Any) -> NDArray[np.float64]:
        Y = np.asarray(y, dtype=np.float64)
        Y = Y[:, None] if Y.ndim == 1 else Y
        if Y.ndim != 2 or not np.isfinite(Y).all():
            raise DataError(f"y must be finite, [n] or [n, targets]; got shape {np.shape(y)}.")
        if self.task == "binary" and not np.isin(Y, (0.0, 1.0)).all():
            raise DataError("task='binary' needs 0/1 or bool labels in y.")
        return Y

    def fit(self, X: Any, y: Any, classes: Any = None, groups: Any = None) -> "MLPProbe":
        """Fit on ``X`` [n, d] and ``y`` [n] or [n, T]; ``groups`` [n] keeps each group on one side of the validation split."""
        self._validate_params()
        self._device = resolve_device(self.device)
        X = check_features(X)
        Y = self._targets(y)
        check_lengths(len(X), y=Y, groups=groups)
        rng = np.random.default_rng(self.random_state)
        rows = np.arange(len(X))
        if self.max_train is not None and len(X) > self.max_train:
            rows = np.sort(rng.choice(len(X), self.max_train, replace=False))
        # The subset first, then float64: never a float64 copy of all rows (1.4 GB for rotated MNIST's).
        X, Y = self._inputs(X[rows], None if classes is None else np.asarray(classes)[rows], True), Y[rows]
        g = np.arange(len(rows)) if groups is None else np.unique(np.asarray(groups)[rows], return_inverse=True)[1]
        held = rng.permutation(g.max() + 1)[: max(1, int(round(self.val_fraction * (g.max() + 1))))]
        val = np.isin(g, held)
        if val.all() or not val.any():
            raise DataError(f"val_fraction={self.val_fraction} over {g.max() + 1} groups leaves no training or "
                            "no validation rows; pass more samples or groups.")
        if self.task == "binary":
            both = (Y[~val].min(0) < Y[~val].max(0)) & (Y[val].min(0) < Y[val].max(0))
            if not both.all():
                raise DataError(f"target columns {np.flatnonzero(~both)[:5].tolist()} lack one class in the training "
                                "or validation rows; an MLP needs both present and absent examples.")
        elif (np.ptp(Y[~val], axis=0) == 0).any():
            raise DataError("a target is constant in the training rows; there is no factor to predict.")
        self.n_features_in_ = X.shape[1] - (0 if self.classes_ is None else len(self.classes_))
        # Standardised, and clipped at prediction to the range the network saw (a feature
        # nearly flat on these rows but active on test gave an angle MAE of 7e10 degrees;
        # a per-feature cut on the std instead zeroed real features next to an outlier).
        self.standardiser_ = Standardiser.fit(X)
        X = self.standardiser_.transform(X, fitted=True)
        self.y_mean_ = Y[~val].mean(0)
        self.y_std_ = Y[~val].std(0) if self.task == "regression" else np.ones(Y.shape[1])
        Yn = (Y - self.y_mean_) / self.y_std_ if self.task == "regression" else Y
        with one_torch_thread():  # many small steps: a second thread costs more than it saves
            self.weights_ = fit_mlp(X, Yn, val, task=self.task, hidden=self.hidden,
                                    lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                                    max_epochs=self.max_epochs, patience=self.patience, device=self._device,
                                    seed=self.random_state)
        self.n_targets_, self.n_train_ = Y.shape[1], int((~val).sum())
        self._fit_details = {"hidden": self.hidden, "train_rows": self.n_train_, "val_rows": int(val.sum()),
                             "best_epoch": self.weights_.epochs.tolist()}
        if self.standardiser_.outlier_rows:
            self._fit_details["outlier_rows"] = self.standardiser_.outlier_rows
        return self

    def decision_function(self, X: Any, classes: Any = None) -> NDArray[np.float64]:
        """Raw outputs [n, T]: the factor in its units (regression) or logits (binary)."""
        import torch

        self._check_is_fitted("weights_")
        X = check_features(X)
        self._check_n_features(X)
        out = []
        with torch.no_grad():
            # Standardised in float64 a block at a time, as the whole would be (row-wise the same).
            for s in range(0, len(X), 8192):
                c = None if classes is None else np.asarray(classes)[s: s + 8192]
                Z = self.standardiser_.transform(self._inputs(X[s: s + 8192], c, False))
                out.append(_forward(self.weights_, torch.as_tensor(Z, dtype=torch.float32,
                                                                   device=self._device)).T.double().cpu().numpy())
        return np.concatenate(out) * self.y_std_ + (self.y_mean_ if self.task == "regression" else 0.0)  # type: ignore[no-any-return]

    def _extrapolated_rows(self, X: NDArray[Any], classes: Any) -> int:
        """:meth:`Standardiser.extrapolated_rows` of the inputs, a block at a time as predicted."""
        c = np.asarray(classes) if classes is not None else None
        return sum(self.standardiser_.extrapolated_rows(self._inputs(X[s: s + 8192], None if c is None else c[s: s + 8192],
                                                                     False)) for s in range(0, len(X), 8192))

    def predict(self, X: Any, classes: Any = None) -> NDArray[np.float64]:
        """[n] (or [n, T] for several targets): the factor, or 0/1 for binary."""
        out = self.decision_function(X, classes)
        out = (out > 0).astype(np.float64) if self.task == "binary" else out
        return out[:, 0] if self.n_targets_ == 1 else out

    def evaluate(self, X: Any, y: Any, classes: Any = None) -> dict[str, Any]:
        """Test figures. Regression: ``{"mae": Estimate}``; binary: ``{"balanced_error", "accuracy"}``.

        With several targets, each value is a list of Estimates, one per column.
        """
        pred = self.decision_function(X, classes)
        Y = self._targets(y)
        check_lengths(len(pred), y=Y)
        beyond = self._extrapolated_rows(check_features(X), classes)
        kw = dict(n_bootstrap=self.n_bootstrap, confidence=self.confidence, random_state=self.random_state)
        out: dict[str, list[Estimate]] = {}
        for t in range(Y.shape[1]):
            for name, est in self._column(pred[:, t], Y[:, t], t, kw).items():
                if beyond:
                    est.details["extrapolated_rows"] = beyond
                out.setdefault(name, []).append(est)
        return {k: v[0] if self.n_targets_ == 1 else v for k, v in out.items()}

    def _column(self, pred: NDArray[np.float64], y: NDArray[np.float64], t: int, kw: dict[str, Any]) -> dict[str, Estimate]:
        details = {**self._fit_details, "best_epoch": self._fit_details["best_epoch"][t]}
        n = len(y)
        if self.task == "regression":
            err = np.abs(pred - y)
            lo, hi, _ = bootstrap_ci(err, **kw)
            chance = float(np.abs(self.y_mean_[t] - y).mean())
            return {"mae": Estimate(float(err.mean()), float(lo), float(hi), chance=chance, n=n,
                                    confidence=self.confidence,
                                    details={**details, "chance_method": "MAE of predicting the training mean"})}
        pos = y > 0.5
        if pos.all() or not pos.any():
            raise DataError(f"target column {t} has one class only in the test rows; balanced error needs both.")
        wrong = ((pred > 0) != pos).astype(np.float64)
        # Balanced error as a weighted mean of rows: each class weighs half.
        w = np.where(pos, 0.5 / pos.mean(), 0.5 / (1 - pos.mean()))
        lo, hi, _ = bootstrap_ci(np.column_stack([w * wrong, 1 - wrong]), **kw)
        return {"balanced_error": Estimate(float((w * wrong).mean()), float(lo[0]), float(hi[0]), chance=0.5, n=n,
                                           confidence=self.confidence, details=details),
                "accuracy": Estimate(float(1 - wrong.mean()), float(lo[1]), float(hi[1]), n=n,
                                     chance=float(max(pos.mean(), 1 - pos.mean())), confidence=self.confidence,
                                     details={**details, "chance_method": "majority class"})}
