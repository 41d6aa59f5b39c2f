"""The probes' math as pure functions (numpy in, numpy out; torch where it pays).

Classes in this package only validate input, hold fitted state and wrap these.
The structure analyses of §4.3 (``spectrum``, ``block_diagonalize``) live in
``_structure.py`` and the batched SVM solver in ``_linear_svm.py``; both are
re-exported here so that this module is the one place to look for the math.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, NamedTuple

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ._blas import map_threads, one_blas_thread
from ._linear_svm import SVMSolution, fit_squared_hinge_svm
from ._structure import BlockDiagonalization, block_diagonalize, spectrum, spectrum_estimate

__all__ = [
    "SVMSolution", "fit_squared_hinge_svm", "BlockDiagonalization", "block_diagonalize", "spectrum",
    "spectrum_estimate", "to_plus_minus", "binary_rates", "ridge_fit", "ridge_eig", "ridge_solve", "group_moments", "centred_cross",
    "Moments", "merge_moments", "class_sums", "class_means",
    "nearest_centroid", "bin_labels", "bin_index", "one_blas_thread",
]


def to_plus_minus(Y: Any, name: str = "Y") -> NDArray[np.float32]:
    """Binary labels {0,1}, bool or {-1,+1} as float32 {-1,+1}, 2-D [n, T]."""
    arr = np.asarray(Y)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"{name} must be [n_samples, n_targets]; got shape {arr.shape}.")
    if arr.dtype == bool:
        return np.where(arr, 1.0, -1.0).astype(np.float32)
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr.astype(np.float64)).all():
        raise DataError(f"{name} must hold 0/1, bool or -1/+1 labels without NaN.")
    values = set(np.unique(arr).tolist())
    if values <= {0, 1}:
        return np.where(arr > 0, 1.0, -1.0).astype(np.float32)
    if values <= {-1, 1}:
        return arr.astype(np.float32)
    raise DataError(f"{name} must hold binary labels as 0/1, bool or -1/+1; found values {sorted(values)[:6]}.")


def binary_rates(y: NDArray[np.floating], pred: NDArray[np.floating]) -> dict[str, NDArray[np.float64]]:
    """Per target: fn_rate (present predicted absent), fp_rate, balanced_error, accuracy."""
    pos, neg = y > 0, y < 0
    fn = (pos & (pred < 0)).sum(0) / np.maximum(pos.sum(0), 1)
    fp = (neg & (pred > 0)).sum(0) / np.maximum(neg.sum(0), 1)
    return {"fn_rate": fn, "fp_rate": fp, "balanced_error": (fn + fp) / 2, "accuracy": (y == pred).mean(0)}


_BLOCK = 8192  # rows per block: a float64 copy of a block stays small (33 MB at d=512)


class Moments(NamedTuple):
    """Sufficient statistics of a least-squares fit per group (float64, mergeable by group).

    counts : [k]; means : [k, d] feature means; scatter : [k, d, d] sum of
    (x - mean)(x - mean)^T; cross : [k, d, m] sum of (x - mean)(y - y_mean)^T; y_means : [k, m].
    """

    counts: NDArray[np.int64]
    means: NDArray[np.float64]
    scatter: NDArray[np.float64]
    cross: NDArray[np.float64]
    y_means: NDArray[np.float64]

    def pooled(self) -> "Moments":
        """The moments of all groups together (k = 1), exactly: within- plus between-group scatter."""
        n = self.counts.astype(np.float64)
        mean, y_mean = n @ self.means / n.sum(), n @ self.y_means / n.sum()
        dx, dy = self.means - mean, self.y_means - y_mean
        scatter = self.scatter.sum(0) + (dx * n[:, None]).T @ dx
        cross = self.cross.sum(0) + (dx * n[:, None]).T @ dy
        return Moments(np.array([self.counts.sum()]), mean[None], scatter[None], cross[None], y_mean[None])


def row_chunks(rows: NDArray[np.integer] | int, max_rows: int | None) -> Iterator[NDArray[np.int64]]:
    """Row indices of ``rows`` (an index array, or ``n`` for ``0..n-1``) in consecutive
    chunks of at most ``max_rows`` (all at once when None): how the studies feed the
    streamed fits under ``--invariance-max-rows``."""
    idx = np.arange(rows) if isinstance(rows, (int, np.integer)) else np.asarray(rows)
    step = max(1, int(max_rows or len(idx) or 1))
    for a in range(0, len(idx), step):
        yield idx[a:a + step]


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the rows of ``a`` and ``b`` together, group by group, exactly
    (Chan et al.'s pairwise update): what a streamed fit accumulates shard by shard."""
    na, nb = a.counts.astype(np.float64), b.counts.astype(np.float64)
    n = na + nb
    wb = np.divide(nb, n, out=np.zeros_like(n), where=n > 0)  # share of b in each group
    dx, dy = b.means - a.means, b.y_means - a.y_means
    between = np.divide(na * nb, n, out=np.zeros_like(n), where=n > 0)[:, None, None]
    return Moments(a.counts + b.counts, a.means + wb[:, None] * dx, a.scatter + b.scatter + between * (dx[:, :, None] * dx[:, None, :]),
                   a.cross + b.cross + between * (dx[:, :, None] * dy[:, None, :]), a.y_means + wb[:, None] * dy)


def _rows_of(codes: NDArray[np.integer], n_groups: int) -> list[NDArray[np.int64]]:
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes, minlength=n_groups))[:-1])


_SCATTERS: "OrderedDict[tuple[Any, ...], tuple[NDArray[np.float64], NDArray[np.float64]]]" = OrderedDict()
_SCATTER_KEEP, _SCATTER_KEY_BYTES = 2, 16 << 20


def group_moments(X: NDArray[np.floating], codes: NDArray[np.integer], n_groups: int, Y: NDArray[np.floating],
                  device: str = "cpu", also: NDArray[np.floating] | None = None) -> Any:
    """Per-group :class:`Moments` of features ``X [n, d]`` and targets ``Y [n, m]``.

    With ``also`` (more targets ``[n, m2]``, e.g. permuted copies of ``Y``), returns two
    Moments sharing counts, means and scatter, the second one's cross-products taken from the
    same centred blocks (one pass over ``X`` for both, the numbers of two separate fits).

    One pass in blocks of rows, each converted to float64 and centred on its group's
    mean before the product, so float32 ``X`` is never copied whole and the scatter keeps
    full precision (no ``sum x x^T - n mean mean^T`` cancellation). The cross-products
    are taken from the same blocks (as :func:`centred_cross` computes them).

    The means and scatter matrices (the ``n d^2`` part) of the last two large inputs are
    kept, keyed by the sha256 of ``X`` and ``codes``: another fit on the same rows with
    other targets (rotated MNIST's extras after its study) only computes cross-products,
    with the same numbers as a first fit.
    """
    import torch

    X, Y = np.asarray(X), np.asarray(Y, dtype=np.float64)
    codes = np.asarray(codes)
    d, m = X.shape[1], Y.shape[1]
    counts = np.bincount(codes, minlength=n_groups)
    groups = _rows_of(codes, n_groups)
    key = None
    if X.nbytes >= _SCATTER_KEY_BYTES:
        from .._figures import array_digest

        key = (array_digest(X), array_digest(codes), n_groups, str(device))
    cached, on_cpu = key in _SCATTERS, str(device) == "cpu"
    if cached:
        _SCATTERS.move_to_end(key)
        means, scatter = _SCATTERS[key]
    else:
        means, scatter = np.zeros((n_groups, d)), np.zeros((n_groups, d, d))
    y_means, cross = np.zeros((n_groups, m)), np.zeros((n_groups, d, m))
    A = None if also is None else np.asarray(also, dtype=np.float64)
    if A is not None:
        a_means, a_cross = np.zeros((n_groups, A.shape[1])), np.zeros((n_groups, d, A.shape[1]))

    def one_group(g: int) -> None:
        # One pass over the group's rows gives its scatter and cross-products (the same
        # centred float64 blocks as :func:`centred_cross`, so the numbers are those of a
        # separate pass); a kept scatter needs the cross-products only.
        rows = groups[g]
        if not cached:
            means[g] = X[rows].sum(0, dtype=np.float64) / len(rows)
        S = np.zeros((d, d)) if on_cpu else torch.zeros((d, d), dtype=torch.float64, device=device)
        y_means[g] = Y[rows].mean(0)
        Yc = Y[rows] - y_means[g]
        if A is not None:  # as centred_cross computes them
            a_means[g] = A[rows].mean(0)
            Ac = A[rows] - a_means[g]
        for s, xc in _centred_blocks(X, rows, means[g]):
            cross[g] += xc.T @ Yc[s: s + len(xc)]
            if A is not None:
                a_cross[g] += xc.T @ Ac[s: s + len(xc)]
            if not cached and on_cpu:
                # numpy sends x^T x to BLAS syrk (one triangle, mirrored): half the flops of
                # torch's general product, half its CPU time (docs/performance.md).
                S += xc.T @ xc
            elif not cached:
                xt = torch.as_tensor(xc, device=device)
                S += xt.T @ xt
        if not cached:
            scatter[g] = S if on_cpu else S.cpu().numpy()

    # Groups are independent: on CPU, one per thread (each computed as on one thread).
    nonempty = [g for g in range(n_groups) if len(groups[g])]
    if on_cpu:
        map_threads(one_group, nonempty)
    else:
        for g in nonempty:
            one_group(g)
    if key is not None and not cached:
        _SCATTERS[key] = (means, scatter)
        while len(_SCATTERS) > _SCATTER_KEEP:
            _SCATTERS.popitem(last=False)
    mo = Moments(counts, means.copy(), scatter.copy(), cross, y_means)
    return mo if A is None else (mo, mo._replace(cross=a_cross, y_means=a_means))


def _centred_blocks(X: NDArray[np.floating], rows: NDArray[np.int64],
                    mean: NDArray[np.float64]) -> Iterator[tuple[int, NDArray[np.float64]]]:
    """``(offset, X[rows][offset:offset + _BLOCK] - mean)`` in float64, block by block: no
    float64 copy of more than a block. numpy's cast (not torch's): ~1.5x faster from float16."""
    for s in range(0, len(rows), _BLOCK):
        xc = X[rows[s: s + _BLOCK]].astype(np.float64)
        xc -= mean
        yield s, xc


def centred_cross(X: NDArray[np.floating], rows: NDArray[np.int64], mean: NDArray[np.float64],
                  Y: NDArray[np.floating]) -> NDArray[np.float64]:
    """``sum (x - mean)(y - y_mean)^T`` over ``X[rows]`` for targets ``Y [len(rows), m]``, in blocks."""
    Y = np.asarray(Y, dtype=np.float64)
    Yc = Y - Y.mean(0)
    out = np.zeros((X.shape[1], Y.shape[1]))
    for s, xc in _centred_blocks(X, rows, mean):
        out += xc.T @ Yc[s: s + len(xc)]
    return out


def ridge_eig(scatter: NDArray[np.float64], alpha: float, rcond: float = 1e-10) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(inv [d], V [d, d])`` with ``(scatter + alpha I)^+ = V diag(inv) V^T``.

    With ``alpha=0``, eigenvalues below ``rcond * max`` count as zero: the minimum-norm
    least-squares solution (what ``sklearn.linear_model.LinearRegression`` returns for
    collinear or constant features).
    """
    with one_blas_thread():
        lam, V = np.linalg.eigh(scatter)
    inv = 1.0 / (lam + alpha) if alpha else np.zeros_like(lam)
    if alpha == 0:
        keep = lam > rcond * max(lam.max(), 1e-300)
        inv[keep] = 1.0 / lam[keep]
    return inv, V


def ridge_solve(inv: NDArray[np.float64], V: NDArray[np.float64], cross: NDArray[np.float64],
                x_mean: NDArray[np.float64], y_mean: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Coefficients ``[m, d]`` and intercepts ``[m]`` from :func:`ridge_eig` and the centred cross-products."""
    coef = V @ (inv[:, None] * (V.T @ cross))
    return coef.T, y_mean - x_mean @ coef


def ridge_fit(X: NDArray[np.floating], y: NDArray[np.floating], alpha: float, device: str = "cpu",
              rcond: float = 1e-10) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least squares with an unpenalised intercept: ``min ||y - Xw - b||^2 + alpha ||w||^2``.

    ``y`` may be [n] or [n, k]. Solved in float64 from the :func:`group_moments` of one
    group through the eigendecomposition of the centred scatter matrix (:func:`ridge_eig`).
    Returns ``(coef [d] or [k, d], intercept)``.
    """
    y = np.asarray(y, dtype=np.float64)
    one = y.ndim == 1
    mo = group_moments(X, np.zeros(len(y), dtype=np.int64), 1, y[:, None] if one else y, device)
    coef, b = ridge_solve(*ridge_eig(mo.scatter[0], alpha, rcond), mo.cross[0], mo.means[0], mo.y_means[0])
    return (coef[0], b[0]) if one else (coef, b)


def class_sums(X: NDArray[np.floating], codes: NDArray[np.integer], n_groups: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per-group feature sums (float64) and counts; mergeable across batches by addition."""
    X, codes = np.asarray(X), np.asarray(codes)
    counts = np.bincount(codes, minlength=n_groups)
    sums = np.zeros((n_groups, X.shape[1]))
    groups = _rows_of(codes, n_groups)

    def one_group(g: int) -> None:  # one gather per group, summed in float64 without a float64 copy of X
        sums[g] = X[groups[g]].sum(0, dtype=np.float64)

    map_threads(one_group, [g for g in range(n_groups) if len(groups[g])])
    return sums, counts


def class_means(X: NDArray[np.floating], codes: NDArray[np.integer], n_groups: int) -> NDArray[np.float64]:
    sums, counts = class_sums(X, codes, n_groups)
    return sums / np.maximum(counts, 1)[:, None]  # type: ignore[no-any-return]


def nearest_centroid(X: NDArray[np.floating], centroids: NDArray[np.floating], metric: str = "cosine") -> NDArray[np.float64]:
    """Similarity of each sample to each centroid [n, k] (higher = nearer): cosine or -euclidean.

    Computed in float64, ``_BLOCK`` rows at a time: no float64 copy of a large ``X``.
    """
    X = np.asarray(X)
    centroids = np.asarray(centroids)
    out = np.empty((len(X), len(centroids)))
    if metric == "cosine":
        C = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-300)
    for s in range(0, len(X), _BLOCK):
        x = np.array(X[s: s + _BLOCK], dtype=np.float64)  # a copy: normalised in place below
        if metric == "cosine":
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s: s + _BLOCK] = x @ C.T
        else:
            out[s: s + _BLOCK] = -((x**2).sum(1)[:, None] - 2 * x @ centroids.T + (centroids**2).sum(1)[None, :])
    return out


def bin_labels(edges: Any) -> list[str]:
    """Labels of left-closed bins from edges (0, 15, 30, 45): '0-15', '15-30', '30-45', '>45'."""
    e = [float(v) for v in edges]
    fmt = lambda v: f"{v:g}"  # noqa: E731
    return [f"{fmt(a)}-{fmt(b)}" for a, b in zip(e[:-1], e[1:])] + [f">{fmt(e[-1])}"]


def bin_index(values: NDArray[np.floating], edges: Any) -> NDArray[np.int64]:
    """Bin of each value: i for edges[i] <= v < edges[i+1], last bin for v >= edges[-1], -1 below edges[0]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") - 1  # type: ignore[no-any-return]
