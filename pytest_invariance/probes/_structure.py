"""Feature-space structure of §4.3: scree spectrum (Fig. 6) and block diagonalisation (Eq. 1, Fig. 8)."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, InvalidParameterError
from ._blas import map_threads, one_blas_thread
from ._estimate import Estimate
from ._validation import check_features, check_lengths
from .stats import bootstrap_ci

BLOCK_EPS = 1e-12  # added to the in-class mean of Eq. 1 so a silent class cannot divide by zero


_GRAM_ROWS = 16384  # rows per partial Gram matrix: a fixed split, so the sum does not depend on the thread count


def _gram(X: NDArray[np.float64]) -> NDArray[np.float64]:
    """``X^T X`` as the sum, in row order, of the partial products of 16,384-row blocks,
    computed on the cores in parallel (:func:`map_threads`). numpy sends ``x^T x`` to BLAS
    syrk (one triangle): half the CPU time of torch's general product (docs/performance.md)."""
    X = np.ascontiguousarray(X)
    parts = map_threads(lambda s: X[s: s + _GRAM_ROWS].T @ X[s: s + _GRAM_ROWS], range(0, len(X), _GRAM_ROWS))
    G = parts[0]
    for p in parts[1:]:
        G += p
    return G  # type: ignore[no-any-return]


def spectrum(X: Any, k: int | None = None) -> dict[str, Any]:
    """Singular values of the mean-centred data matrix (the scree diagram of Fig. 6).

    Parameters
    ----------
    X : array [n_samples, n_features]
    k : int, optional
        Number of classes: ``top_k_share`` is the share of variance in the first ``k``
        components (an ideal invariant representation of k classes has rank <= k).

    Returns
    -------
    dict
        ``singular_values`` (descending), ``explained_variance_ratio``, ``top_k_share``
        (None without k) and ``effective_rank``: Roy & Vetterli's entropy rank
        ``exp(H(p))`` with ``p_i = s_i / sum s``, from 1 (one direction) to min(n-1, d).

    Notes
    -----
    Computed from the eigenvalues of the d x d scatter matrix in float64, so a
    70000 x 500 matrix costs one Gram product. With d > n the rank is at most n - 1.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(200, 5)) * [10, 1, 1, 1, 1]
    >>> spectrum(X, k=1)["top_k_share"] > 0.9
    True
    """
    return _spectrum_of(_centred(X), k)


def _centred(X: Any) -> NDArray[np.float64]:
    """A float64 copy of ``X`` minus its column means."""
    Xc = check_features(X).astype(np.float64)
    if Xc.shape[0] < 2:
        raise DataError("spectrum needs at least 2 samples to centre the data matrix.")
    Xc -= Xc.mean(0)  # in place: one float64 copy of X, not two
    return Xc


def _spectrum_of(Xc: NDArray[np.float64], k: int | None) -> dict[str, Any]:
    """:func:`spectrum` of an already centred float64 matrix."""
    G = _gram(Xc)
    with one_blas_thread():  # LAPACK on a d x d matrix: threads cost more than they save
        ev = np.clip(np.linalg.eigvalsh(G)[::-1], 0.0, None)
    total = ev.sum()
    if total == 0:
        raise DataError("X is constant (zero variance in every feature); its spectrum is undefined.")
    s = np.sqrt(ev)
    ratio = ev / total
    p = s[s > 0] / s.sum()
    share = None
    if k is not None:
        if not (isinstance(k, (int, np.integer)) and 1 <= k):
            raise InvalidParameterError(f"k must be a positive int (the number of classes); got {k!r}.")
        share = float(ratio[:k].sum())
    return {
        "singular_values": s,
        "explained_variance_ratio": ratio,
        "top_k_share": share,
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
    }


def spectrum_estimate(X: Any, k: int, n_bootstrap: int = 200, random_state: int | None = 0,
                      confidence: float = 0.95, oversample: int = 10, full: dict[str, Any] | None = None) -> Estimate:
    """``top_k_share`` with a percentile-bootstrap CI over samples (rows).

    Each resample's share is the top-k eigenvalue sum of its covariance restricted to
    the full data's leading ``k + oversample`` principal subspace, over its exact total
    variance. By Ky Fan's principle this is a (tight) lower bound of the resample's exact
    share; it turns a d x d eigenproblem per resample into an r x r one. The percentile
    interval is shifted by the bootstrap bias (resampled eigenvalues spread out, so the
    resampled share is biased upward); ``details["bootstrap_bias"]`` reports it. ``chance`` is
    ``k / min(n - 1, d)``: the share of k components when variance is spread evenly.
    ``full`` is ``spectrum(X, k)`` when the caller already has it.
    """
    return spectrum_and_estimate(X, k, n_bootstrap, random_state, confidence, oversample, full)[1]


def spectrum_and_estimate(X: Any, k: int, n_bootstrap: int = 200, random_state: int | None = 0,
                          confidence: float = 0.95, oversample: int = 10,
                          full: dict[str, Any] | None = None) -> tuple[dict[str, Any], Estimate]:
    """``(spectrum(X, k), spectrum_estimate(X, k, ...))`` from one centred float64 copy of
    ``X`` (280 MB and a pass fewer for rotated MNIST's 70,000 x 500 test set)."""
    Xc = _centred(X)
    full = full if full is not None else _spectrum_of(Xc, k)
    n, d = Xc.shape
    r = min(k + oversample, d)
    # The leading subspace of (at most) the first 20,000 rows, from their scatter matrix:
    # the right singular vectors of Xc[:20000] at a quarter of an SVD's cost.
    head = Xc[: min(n, 20000)]
    G = _gram(head)
    with one_blas_thread():
        _, V = np.linalg.eigh(G)
    P = Xc @ V[:, ::-1][:, :r]  # [n, r] scores in the leading subspace
    import torch

    Xt = torch.from_numpy(Xc)  # the large float64 products in torch (MKL): ~1.7x less CPU than numpy's here
    sq = np.concatenate([(Xc[s: s + 8192] ** 2).sum(1) for s in range(0, n, 8192)])  # no [n, d] temporary
    iu = np.triu_indices(r)
    PP = P[:, iu[0]] * P[:, iu[1]]  # [n, r(r+1)/2]: every resample's second moments in one product

    def share(counts: NDArray[np.float64]) -> NDArray[np.float64]:
        w = counts
        w /= n  # in place (the block is bootstrap_counts' own float64 copy): no second [32, n] array
        mu_p, mu_x = w @ P, (torch.from_numpy(w) @ Xt).numpy()
        total = w @ sq - (mu_x**2).sum(1)
        cov = np.zeros((len(w), r, r))
        cov[:, iu[0], iu[1]] = w @ PP
        cov -= mu_p[:, :, None] * mu_p[:, None, :]
        # eigvalsh reads the lower triangle: mirror the upper one. One batched call per block.
        cov = np.triu(cov) + np.swapaxes(np.triu(cov, 1), 1, 2)
        with one_blas_thread():
            ev = np.linalg.eigvalsh(cov)
        return ev[:, ::-1][:, :k].sum(1) / total  # type: ignore[no-any-return]

    lo, hi, boot = bootstrap_ci(share, n=n, n_bootstrap=n_bootstrap, confidence=confidence, random_state=random_state)
    # Resampling duplicates rows, which spreads sample eigenvalues: the resampled top-k share is
    # biased upward (by ~0.02 on isotropic 500 x 30 data, more than the CI half-width). Shift the
    # percentile interval by the bootstrap bias so it is centred on the full-data estimate.
    bias = float(boot.mean() - full["top_k_share"]) if len(boot) else 0.0
    return full, Estimate(full["top_k_share"], float(lo) - bias, float(hi) - bias, chance=k / min(n - 1, d), n=n,
                          confidence=confidence,
                          details={"k": k, "effective_rank": full["effective_rank"], "bootstrap_bias": bias,
                                   "chance_method": "k / min(n - 1, d): variance spread evenly over all components"})


class BlockDiagonalization(NamedTuple):
    """Rows of D regrouped by the class they respond to (Fig. 8).

    permutation : [M] row order; assignment : [M] label assigned to each row (``-1`` for dead rows);
    reordered : D with rows permuted and columns sorted by label; error : E of Eq. 1, [M, L];
    labels : [L] the unique labels, in the order of E's columns.
    """

    permutation: NDArray[np.int64]
    assignment: NDArray[Any]
    reordered: NDArray[np.float64]
    error: NDArray[np.float64]
    labels: NDArray[Any]


def block_diagonalize(D: Any, labels: Any) -> BlockDiagonalization:
    """Assign each feature (row) to the class minimising Eq. 1, stack clusters by label.

    Eq. 1 as printed, ``sum_j D_ij (1 - I) / (D_ij I)``, divides by zero for every sample
    outside class l. We read it as the ratio of *class means*::

        E_il = mean_{j: y_j != l} D_ij / (mean_{j: y_j = l} D_ij + 1e-12)

    which is the printed out-of-class over in-class mass, normalised per class so big
    classes are not favoured. It needs D >= 0 (post-ReLU or min-max normalised features,
    as in the paper). Rows that are zero on every sample ("dead" units) get assignment -1
    and go last. Within a cluster rows are ordered by increasing E (most specific first);
    columns of ``reordered`` are sorted by label (stable).

    Examples
    --------
    >>> D = np.array([[0, 0, 5, 5], [5, 5, 0, 0]], dtype=float)
    >>> block_diagonalize(D, [0, 0, 1, 1]).permutation.tolist()
    [1, 0]
    """
    D = check_features(D, "D").astype(np.float64)
    y = np.asarray(labels)
    check_lengths(D.shape[1], labels=y)
    if (D < 0).any():
        raise DataError("block_diagonalize needs non-negative D (Eq. 1 is a ratio of activations); "
                        "pass post-ReLU features or shift them, e.g. D - D.min().")
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise DataError("block_diagonalize needs at least 2 distinct labels.")
    onehot = np.eye(len(classes))[codes]  # [N, L]
    counts = onehot.sum(0)
    inside = (D @ onehot) / counts
    outside = (D.sum(1, keepdims=True) - D @ onehot) / (len(y) - counts)
    E = outside / (inside + BLOCK_EPS)
    best = E.argmin(1)
    dead = ~D.any(1)
    best_key = np.where(dead, len(classes), best)
    perm = np.lexsort((E[np.arange(len(best)), best], best_key))
    assignment = np.where(dead, -1, best).astype(np.int64)
    assigned = np.array([classes[a] if a >= 0 else -1 for a in assignment], dtype=object) \
        if classes.dtype.kind not in "iuf" else np.where(dead, -1, classes[best])
    cols = np.argsort(codes, kind="stable")
    return BlockDiagonalization(perm, assigned, D[perm][:, cols], E, classes)
