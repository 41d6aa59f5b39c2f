"""Concept erasure with LEACE (Belrose et al., 2023, "LEACE: Perfect linear concept erasure
in closed form"), through the ``concept-erasure`` package.

LEACE finds the least-squares edit of the features that zeroes their cross-covariance with
the concept, so that no linear predictor of the concept beats a constant one (on the data
it was fitted on). Fitted on the training split and applied to the test split, it answers
two questions an audit leaves open: what is left to a *non-linear* probe once the linear
leak is gone, and what removing the leak costs the task.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._optional import require
from ..errors import DataError
from ._estimate import Estimate
from ._validation import Device, Interval, Options, ProbeMixin, check_features, check_lengths, resolve_device
from .stats import bootstrap_ci

_CHUNK = 65536  # rows per float64 block


def concept_matrix(z: Any, kind: str) -> NDArray[np.float64]:
    """The concept as LEACE's ``z`` [n, k]: the value itself, or one-hot columns of its levels.

    ``kind="continuous"`` erases what a linear *regressor* reads (the MAE probes);
    ``kind="categorical"`` erases what any linear *classifier* of the levels reads, a
    stronger edit when a factor takes few values.
    """
    v = np.asarray(z)
    if kind == "categorical":
        if v.ndim != 1:
            raise DataError(f"a categorical concept must be 1-D [n]; got shape {v.shape}.")
        levels, codes = np.unique(v, return_inverse=True)
        if len(levels) < 2:
            raise DataError("the concept takes a single value; there is nothing to erase.")
        return np.eye(len(levels))[codes]  # type: ignore[no-any-return]
    m = np.asarray(v, dtype=np.float64)
    m = m[:, None] if m.ndim == 1 else m
    if m.ndim != 2 or not np.isfinite(m).all():
        raise DataError(f"a continuous concept must be finite, [n] or [n, k]; got shape {v.shape}.")
    if (np.ptp(m, axis=0) == 0).any():
        raise DataError("a concept column is constant; there is nothing to erase.")
    return m


class LeaceErasure(ProbeMixin):
    """Fit a LEACE eraser of a concept on training embeddings; apply it to any split.

    Parameters
    ----------
    kind : {"continuous", "categorical"}
        How the concept is given to LEACE (see :func:`concept_matrix`).
    svd_tol : float
        Singular values of the whitened cross-covariance below this are not erased
        (``concept-erasure``'s default, 0.01, keeps weakly correlated concept columns such
        as single levels of a one-hot factor; a tiny value erases every column exactly).
    device : str
        "cpu", "cuda", "cuda:N" or "auto"; the edit is computed in float64.

    Attributes
    ----------
    eraser_ : concept_erasure.LeaceEraser
    rank_ : int
        Number of directions removed (at most the concept's columns).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(500, 5)); z = X[:, 0] + 0.1 * rng.normal(size=500)
    >>> Xe = LeaceErasure().fit(X, z).transform(X)
    >>> bool(abs(np.corrcoef(Xe[:, 0], z)[0, 1]) < 1e-6)
    True
    """

    _parameter_constraints = {"kind": [Options(("continuous", "categorical"))],
                              "svd_tol": [Interval("float", 0, None)], "device": [Device()]}

    def __init__(self, *, kind: str = "continuous", svd_tol: float = 1e-9, device: str = "cpu") -> None:
        self.kind = kind
        self.svd_tol = svd_tol
        self.device = device

    def fit(self, X: Any, z: Any) -> "LeaceErasure":
        """``X`` [n, d] training embeddings, ``z`` [n] (or [n, k]) the concept to erase."""
        import torch

        self._validate_params()
        self._device = resolve_device(self.device)
        ce = require("concept_erasure", "concept erasure (LEACE)")
        X = check_features(X)
        Z = concept_matrix(z, self.kind)
        check_lengths(len(X), z=Z)
        fitter = ce.LeaceFitter(X.shape[1], Z.shape[1], device=self._device, dtype=torch.float64,
                                svd_tol=self.svd_tol)
        for s in range(0, len(X), _CHUNK):  # streamed moments: no float64 copy of a large X
            fitter.update(torch.as_tensor(X[s : s + _CHUNK], dtype=torch.float64, device=self._device),
                          torch.as_tensor(Z[s : s + _CHUNK], dtype=torch.float64, device=self._device))
        self.eraser_ = fitter.eraser
        self.rank_ = int((self.eraser_.proj_left.abs().sum(0) > 0).sum())
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: Any, out: NDArray[np.floating] | None = None) -> NDArray[np.floating]:
        """The erased embeddings, [n, d], in X's float dtype (computed in float64).

        ``out``: an array of X's shape to write them to; it may be ``X`` itself (a float
        array), which is then erased in place, block by block, with no second copy of it.
        """
        import torch

        self._check_is_fitted("eraser_")
        X = check_features(X)
        self._check_n_features(X)
        if out is None:
            out = np.empty(X.shape, X.dtype if np.issubdtype(X.dtype, np.floating) else np.float64)
        elif out.shape != X.shape or not np.issubdtype(out.dtype, np.floating):
            raise DataError(f"out must be a float array of X's shape {X.shape}; got {out.dtype} {out.shape}.")
        for s in range(0, len(X), _CHUNK):
            x = torch.as_tensor(X[s : s + _CHUNK], dtype=torch.float64, device=self._device)
            out[s : s + _CHUNK] = self.eraser_(x).cpu().numpy()
        return out


def erasure_cost(before_rows: Any, after_rows: Any, *, scale: float = 100.0, n_bootstrap: int = 1000,
                 confidence: float = 0.95, random_state: int = 0, **details: Any) -> Estimate:
    """What erasure costs the task: score before minus score after, paired over the test rows.

    Parameters
    ----------
    before_rows, after_rows : array [n]
        Per-row task scores on the same rows (0/1 hits of MAV classification, rank-1
        identification, ...) without and with erasure.
    scale : float
        100 reports percentage points.

    Returns
    -------
    Estimate
        Positive = the task got worse. Chance 0: an edit that removes nothing the task
        uses costs nothing.

    Examples
    --------
    >>> erasure_cost([1, 1, 1, 0], [1, 0, 1, 0], n_bootstrap=20).value
    25.0
    """
    b, a = np.asarray(before_rows, dtype=np.float64), np.asarray(after_rows, dtype=np.float64)
    if b.shape != a.shape or b.ndim != 1:
        raise DataError(f"before_rows {b.shape} and after_rows {a.shape} must be 1-D over the same test rows.")
    diff = scale * (b - a)
    lo, hi, _ = bootstrap_ci(diff, n_bootstrap=n_bootstrap, confidence=confidence, random_state=random_state)
    return Estimate(float(diff.mean()), float(lo), float(hi), chance=0.0, n=len(diff), confidence=confidence,
                    details={"unit": "percentage points" if scale == 100 else f"score x {scale:g}",
                             "before": float(b.mean()), "after": float(a.mean()), **details})
