"""The probes' math as pure functions (numpy in, numpy out; torch where it pays).

Classes in this package only validate input, hold fitted state and wrap these.
The structure analyses of §4.3 (``spectrum``, ``block_diagonalize``) live in
``_structure.py`` and the batched SVM solver in ``_linear_svm.py``; both are
re-exported here so that this module is the one place to look for the math.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ._linear_svm import SVMSolution, fit_squared_hinge_svm
from ._structure import BlockDiagonalization, block_diagonalize, spectrum, spectrum_estimate

__all__ = [
    "SVMSolution", "fit_squared_hinge_svm", "BlockDiagonalization", "block_diagonalize", "spectrum",
    "spectrum_estimate", "to_plus_minus", "binary_rates", "ridge_fit", "class_sums", "class_means",
    "nearest_centroid", "bin_labels", "bin_index",
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


def ridge_fit(X: NDArray[np.floating], y: NDArray[np.floating], alpha: float, device: str = "cpu",
              rcond: float = 1e-10) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Least squares with an unpenalised intercept: ``min ||y - Xw - b||^2 + alpha ||w||^2``.

    ``y`` may be [n] or [n, k]. Solved in float64 through the eigendecomposition of the
    centred Gram matrix; with ``alpha=0``, eigenvalues below ``rcond * max`` are treated
    as zero, giving the minimum-norm solution (what ``sklearn.linear_model.LinearRegression``
    returns for collinear or constant features). Returns ``(coef [d] or [k, d], intercept)``.
    """
    import torch

    Xt = torch.as_tensor(np.asarray(X), dtype=torch.float64, device=device)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.float64, device=device)
    one = yt.ndim == 1
    yt = yt[:, None] if one else yt
    xm, ym = Xt.mean(0), yt.mean(0)
    Xc = Xt - xm
    lam, V = torch.linalg.eigh(Xc.T @ Xc)
    inv = 1.0 / (lam + alpha)
    if alpha == 0:
        inv = torch.where(lam > rcond * lam.max().clamp(min=1e-300), inv, torch.zeros_like(inv))
    coef = V @ (inv[:, None] * (V.T @ (Xc.T @ (yt - ym))))
    intercept = ym - xm @ coef
    coef_np, b_np = coef.T.cpu().numpy(), intercept.cpu().numpy()
    return (coef_np[0], b_np[0]) if one else (coef_np, b_np)


def class_sums(X: NDArray[np.floating], codes: NDArray[np.integer], n_groups: int) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Per-group feature sums and counts; mergeable across batches by addition."""
    # Sort once and sum contiguous runs: np.add.at is unbuffered and ~10x slower here.
    codes = np.asarray(codes)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=n_groups)
    sums = np.zeros((n_groups, X.shape[1]))
    present = np.flatnonzero(counts)
    starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
    sums[present] = np.add.reduceat(np.asarray(X, dtype=np.float64)[order], starts, axis=0)
    return sums, counts


def class_means(X: NDArray[np.floating], codes: NDArray[np.integer], n_groups: int) -> NDArray[np.float64]:
    sums, counts = class_sums(X, codes, n_groups)
    return sums / np.maximum(counts, 1)[:, None]  # type: ignore[no-any-return]


def nearest_centroid(X: NDArray[np.floating], centroids: NDArray[np.floating], metric: str = "cosine") -> NDArray[np.float64]:
    """Similarity of each sample to each centroid [n, k] (higher = nearer): cosine or -euclidean."""
    X = np.asarray(X, dtype=np.float64)
    if metric == "cosine":
        xn = np.linalg.norm(X, axis=1, keepdims=True)
        cn = np.linalg.norm(centroids, axis=1, keepdims=True)
        return (X / xn) @ (centroids / np.maximum(cn, 1e-300)).T  # type: ignore[no-any-return]
    d2 = (X**2).sum(1)[:, None] - 2 * X @ centroids.T + (centroids**2).sum(1)[None, :]
    return -d2  # type: ignore[no-any-return]


def bin_labels(edges: Any) -> list[str]:
    """Labels of left-closed bins from edges (0, 15, 30, 45): '0-15', '15-30', '30-45', '>45'."""
    e = [float(v) for v in edges]
    fmt = lambda v: f"{v:g}"  # noqa: E731
    return [f"{fmt(a)}-{fmt(b)}" for a, b in zip(e[:-1], e[1:])] + [f">{fmt(e[-1])}"]


def bin_index(values: NDArray[np.floating], edges: Any) -> NDArray[np.int64]:
    """Bin of each value: i for edges[i] <= v < edges[i+1], last bin for v >= edges[-1], -1 below edges[0]."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") - 1  # type: ignore[no-any-return]
