"""Feature-space structure of §4.3: scree spectrum (Fig. 6) and block diagonalisation (Eq. 1, Fig. 8)."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, InvalidParameterError
from ._blas import map_threads, one_blas_thread
from ._estimate import Estimate
from ._validation import check_features, check_lengths
from .stats import percentile_interval, resample_counts

BLOCK_EPS = 1e-12  # added to the in-class mean of Eq. 1 so a silent class cannot divide by zero


_GRAM_ROWS = 16384  # rows per partial Gram matrix: a fixed split, so the sum does not depend on the thread count
_ROWS = 8192  # rows per centred float64 block of the bootstrap pass (33 MB at d = 500)


def _column_mean(X: NDArray[Any]) -> NDArray[np.float64]:
    """The float64 column means of a checked ``X`` (as ``X.astype(float64).mean(0)``, without the copy)."""
    if X.shape[0] < 2:
        raise DataError("spectrum needs at least 2 samples to centre the data matrix.")
    return X.mean(0, dtype=np.float64)  # type: ignore[no-any-return]


def _centred_rows(X: NDArray[Any], mean: NDArray[np.float64], start: int, stop: int) -> NDArray[np.float64]:
    """``X[start:stop] - mean`` as a new float64 block (the rows of a centred float64 copy of X)."""
    xc = X[start:stop].astype(np.float64)
    xc -= mean
    return xc


def _centred_gram_parts(X: NDArray[Any], mean: NDArray[np.float64], stop: int | None = None) -> list[NDArray[np.float64]]:
    """The partial products ``xc^T xc`` of the centred 16,384-row blocks of ``X[:stop]``, in row
    order, on the cores in parallel (:func:`map_threads`); each block is centred in float64 by
    its thread, so no centred copy of X is made (280 MB for rotated MNIST's test set). numpy
    sends ``x^T x`` to BLAS syrk (one triangle): half the CPU time of torch's general product."""
    stop = len(X) if stop is None else stop

    def part(s: int) -> NDArray[np.float64]:
        xc = _centred_rows(X, mean, s, min(s + _GRAM_ROWS, stop))
        return xc.T @ xc  # type: ignore[no-any-return]

    return map_threads(part, range(0, stop, _GRAM_ROWS))


def _sum_in_order(parts: list[NDArray[np.float64]]) -> NDArray[np.float64]:
    G = parts[0].copy()
    for p in parts[1:]:
        G += p
    return G


def _gram(X: NDArray[np.float64]) -> NDArray[np.float64]:
    """``X^T X`` as the sum, in row order, of the partial products of 16,384-row blocks
    (:func:`_centred_gram_parts` with a zero mean)."""
    return _sum_in_order(_centred_gram_parts(X, np.zeros(X.shape[1])))


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
    70000 x 500 matrix costs one Gram product, over centred blocks of rows (no centred
    copy of X). With d > n the rank is at most n - 1.

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(200, 5)) * [10, 1, 1, 1, 1]
    >>> spectrum(X, k=1)["top_k_share"] > 0.9
    True
    """
    X = check_features(X)
    return _spectrum_of(_sum_in_order(_centred_gram_parts(X, _column_mean(X))), k)


def _spectrum_of(G: NDArray[np.float64], k: int | None) -> dict[str, Any]:
    """:func:`spectrum` from the scatter matrix ``G`` of the centred rows."""
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
    """``(spectrum(X, k), spectrum_estimate(X, k, ...))`` from shared passes over ``X``.

    No centred float64 copy of ``X`` is made, nor the ``[n, r(r+1)/2]`` products of the
    scores: every pass centres 8,192- or 16,384-row blocks in float64, and the bootstrap
    accumulates each resample's moments block by block of rows, all resamples at once (for
    rotated MNIST's 70,000 x 500 test set, 400 MB less at the study's peak, docs/performance.md).
    """
    X = check_features(X)
    mean = _column_mean(X)
    n, d = X.shape
    r = min(k + oversample, d)
    # The leading subspace of (at most) the first 20,000 rows, from their scatter matrix:
    # the right singular vectors of their centred rows at a quarter of an SVD's cost. Its
    # first 16,384-row product is the full scatter's first one.
    head = min(n, 20000)
    parts = _centred_gram_parts(X, mean) if full is None else _centred_gram_parts(X, mean, min(n, _GRAM_ROWS))
    if full is None:
        full = _spectrum_of(_sum_in_order(parts), k)
    head_parts = parts[:1] + (_centred_gram_parts(X[_GRAM_ROWS:], mean, head - _GRAM_ROWS) if head > _GRAM_ROWS else [])
    with one_blas_thread():
        _, V = np.linalg.eigh(_sum_in_order(head_parts))
    del parts, head_parts
    Vr = np.ascontiguousarray(V[:, ::-1][:, :r])
    iu = np.triu_indices(r)
    counts = resample_counts(n, n_bootstrap, random_state) if n_bootstrap > 0 else None

    def moments(s: int) -> tuple[NDArray[np.float64], ...]:
        # One block of centred rows: its scores P in the leading subspace, their pairwise
        # products, and the squared norms; then every resample's weighted sums over the block.
        xc = _centred_rows(X, mean, s, min(s + _ROWS, n))
        P = xc @ Vr
        c = counts[:, s: s + len(xc)].astype(np.float64)
        mx = c @ xc
        sq = np.square(xc, out=xc).sum(1)  # in place: no second [rows, d] block
        return mx, c @ P, c @ (P[:, iu[0]] * P[:, iu[1]]), c @ sq

    if counts is None:
        boot = np.empty(0)
        lo = hi = np.nan
    else:
        # Row blocks are independent: on the cores, summed in row order (no dependence on threads).
        sums = [_sum_in_order(list(m)) for m in zip(*map_threads(moments, range(0, n, _ROWS)))]
        mu_x, mu_p, pp, sq = (m / n for m in sums)
        total = sq - (mu_x**2).sum(1)
        cov = np.zeros((len(mu_p), r, r))
        cov[:, iu[0], iu[1]] = pp
        cov -= mu_p[:, :, None] * mu_p[:, None, :]
        # eigvalsh reads the lower triangle: mirror the upper one.
        cov = np.triu(cov) + np.swapaxes(np.triu(cov, 1), 1, 2)
        with one_blas_thread():
            ev = np.linalg.eigvalsh(cov)
        boot = ev[:, ::-1][:, :k].sum(1) / total
        lo, hi = percentile_interval(boot, confidence)
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
