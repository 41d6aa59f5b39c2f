"""Control tasks and selectivity (Hewitt & Liang, 2019, "Designing and Interpreting Probes
with Control Tasks").

A control task relabels the data at random while keeping two things: the label
distribution, and a fixed label per group (an identity, a source image, or a cluster of
inputs). A probe that scores well on it has memorised groups, not read the factor. The
*selectivity* of a probe is its real score minus its control score, signed so that
positive means "reads the factor better than it memorises".
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ._blas import one_blas_thread
from ._estimate import Estimate
from .stats import bootstrap_ci

_ASSIGN_BLOCK = 32_768  # rows assigned to their nearest k-means centre at a time


def control_labels(y_train: Any, groups_train: Any, groups_test: Any, *, random_state: int = 0
                   ) -> tuple[NDArray[Any], NDArray[Any]]:
    """Control-task labels: one random label per group, drawn from the training labels.

    Parameters
    ----------
    y_train : array [n_train] or [n_train, T]
        The real labels (classes, 0/1 attributes or continuous values); each group gets
        the label row of a training row drawn uniformly, so the control labels follow the
        real label distribution (row-weighted, in expectation).
    groups_train, groups_test : array [n_train], [n_test]
        Group of each row (identity, source image, :func:`input_clusters`). A group seen
        in both splits has the same control label in both.
    random_state : int
        Seed of the draw.

    Returns
    -------
    control_train, control_test : arrays shaped like ``y_train`` rows.

    Examples
    --------
    >>> tr, te = control_labels([0, 1, 1, 0], [7, 7, 8, 9], [8, 7])
    >>> bool(tr[0] == tr[1] == te[1])
    True
    """
    y = np.asarray(y_train)
    gtr, gte = np.asarray(groups_train), np.asarray(groups_test)
    if len(y) != len(gtr):
        raise DataError(f"groups_train has {len(gtr)} rows but y_train has {len(y)}; they must align row by row.")
    if len(y) == 0:
        raise DataError("y_train is empty; a control task needs training labels to draw from.")
    uniq, inv = np.unique(np.concatenate([gtr, gte]), return_inverse=True)
    draw = np.random.default_rng(random_state).integers(0, len(y), size=len(uniq))
    labels = y[draw][inv]
    return labels[: len(gtr)], labels[len(gtr):]


def input_clusters(X_train: Any, X_test: Any, *, n_clusters: int = 100, max_fit: int = 20_000,
                   random_state: int = 0) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """k-means clusters of the inputs, the groups of a control task when no identity is known.

    Fitted (scikit-learn ``KMeans``, one init) on at most ``max_fit`` seeded training rows;
    every row of both splits is assigned to its nearest centre, so a test row shares a
    control label with the training rows near it, which a memorising probe can exploit.
    Returns the cluster of each row, ``[n_train]`` and ``[n_test]``.
    """
    from sklearn.cluster import KMeans

    Xtr, Xte = np.asarray(X_train), np.asarray(X_test)
    if n_clusters < 2 or n_clusters > len(Xtr):
        raise DataError(f"n_clusters={n_clusters} must be in [2, {len(Xtr)}] (the training rows).")
    rng = np.random.default_rng(random_state)
    fit_rows = Xtr if len(Xtr) <= max_fit else Xtr[np.sort(rng.choice(len(Xtr), max_fit, replace=False))]
    with one_blas_thread():  # k-means++ seeding: many small products
        km = KMeans(n_clusters=n_clusters, n_init=1, random_state=random_state).fit(fit_rows.astype(np.float32))

    def assign(X: NDArray[Any]) -> NDArray[np.int64]:
        # In float32 blocks: a float32 copy of rotated MNIST's 350,000 float16 rows would be 700 MB.
        return np.concatenate([km.predict(X[s: s + _ASSIGN_BLOCK].astype(np.float32))
                               for s in range(0, len(X), _ASSIGN_BLOCK)]).astype(np.int64)

    return assign(Xtr), assign(Xte)


def row_scores_estimate(rows: Any, *, chance: float | None, groups: Any = None, n_bootstrap: int = 1000,
                        confidence: float = 0.95, random_state: int = 0, **details: Any) -> Estimate:
    """The mean of per-test-row scores (absolute errors, 0/1 hits) with its bootstrap CI.

    With ``groups`` [n], whole groups are resampled (a cluster bootstrap): rows of one
    identity or one control-label group are not independent, and resampling rows would
    give too narrow an interval.
    """
    r = np.asarray(rows, dtype=np.float64)
    kw = dict(n_bootstrap=n_bootstrap, confidence=confidence, random_state=random_state)
    if groups is not None:
        if len(groups) != len(r):
            raise DataError(f"groups has {len(groups)} rows but the scores have {len(r)}; they must align.")
        details = {**details, "bootstrap": f"over {len(np.unique(np.asarray(groups)))} groups"}
    lo, hi, _ = bootstrap_ci(r, **kw, groups=groups)
    return Estimate(float(r.mean()), float(lo), float(hi), chance=chance, n=len(r), confidence=confidence,
                    details=details)


def selectivity(real_rows: Any, control_rows: Any, *, higher_is_better: bool, groups: Any = None,
                n_bootstrap: int = 1000, confidence: float = 0.95, random_state: int = 0, **details: Any) -> Estimate:
    """Real score minus control score, with a paired bootstrap CI over the test rows.

    Parameters
    ----------
    real_rows, control_rows : array [n]
        Per-test-row scores of the probe on the real task and on the control task, on the
        same test rows (absolute errors for an MAE, 0/1 correctness for an accuracy).
    higher_is_better : bool
        False for errors: then selectivity = control MAE - real MAE, so that a positive
        selectivity always means the probe reads the factor more than it memorises groups.
    groups : array [n], optional
        The control task's groups of the test rows; the bootstrap then resamples groups,
        since a group's rows share one control label and their errors move together.

    Returns
    -------
    Estimate
        Chance 0: a probe on features that carry nothing of the factor scores the same on
        both tasks.

    Examples
    --------
    >>> round(selectivity([1, 1, 0, 1], [0, 1, 0, 0], higher_is_better=True, n_bootstrap=20).value, 2)
    0.5
    """
    real, ctrl = np.asarray(real_rows, dtype=np.float64), np.asarray(control_rows, dtype=np.float64)
    if real.shape != ctrl.shape or real.ndim != 1:
        raise DataError(f"real_rows {real.shape} and control_rows {ctrl.shape} must be 1-D over the same test rows.")
    diff = real - ctrl if higher_is_better else ctrl - real
    return row_scores_estimate(diff, chance=0.0, groups=groups, n_bootstrap=n_bootstrap, confidence=confidence,
                               random_state=random_state, **details,
                               definition="real - control" if higher_is_better else "control error - real error")
