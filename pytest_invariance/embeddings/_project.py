"""Bounded memory: a layer wider than ``--invariance-max-dim`` is reduced by a seeded random projection.

A pooled conv map or a flattened layer can have tens of thousands of features per
image; a sweep over many such layers would hold them all. Above the cap the layer is
multiplied by a sparse random matrix (Li, Hastie & Church 2006, "Very sparse random
projections": entries ``+-sqrt(s/k)`` with probability ``1/(2s)``, ``s = sqrt(D)``) as
scikit-learn's :class:`~sklearn.random_projection.SparseRandomProjection` draws it from
the seed. Distances and inner products are kept up to a relative error of order
``1/sqrt(k)`` (Johnson-Lindenstrauss), so linear probes read nearly the same figures;
the change measured at the default cap is in docs/models.md. The seed and the input
and output widths are recorded in every check's ``details.projection``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

OPT_MAX_DIM = "--invariance-max-dim"
DEFAULT_MAX_DIM = 2048


class LayerProjection:
    """The seeded ``[D_in] -> [D_out]`` map of one layer; ``D_in <= max_dim`` is left as is.

    Parameters
    ----------
    in_dim : int
        Width of the pooled layer.
    max_dim : int
        The cap; 0 turns projection off.
    seed : int
        Draws the matrix; the same (seed, in_dim, max_dim) gives the same matrix.

    Examples
    --------
    >>> p = LayerProjection(5000, max_dim=64, seed=0)
    >>> p.active, p(np.ones((2, 5000), np.float32)).shape, p.record()["out_dim"]
    (True, (2, 64), 64)
    """

    def __init__(self, in_dim: int, *, max_dim: int, seed: int):
        self.in_dim, self.max_dim, self.seed = int(in_dim), int(max_dim), int(seed)
        self.active = bool(self.max_dim) and self.in_dim > self.max_dim
        self._rp: Any = None
        if self.active:
            from sklearn.random_projection import SparseRandomProjection

            self._rp = SparseRandomProjection(n_components=self.max_dim, random_state=self.seed)
            self._rp.fit(np.zeros((1, self.in_dim), dtype=np.float32))  # only the width is read

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``float32[N, D_in]`` -> ``float32[N, D_out]``."""
        if not self.active:
            return x
        return np.ascontiguousarray(self._rp.transform(x), dtype=np.float32)

    def record(self) -> dict[str, Any] | None:
        """What results.json records (``details.projection``), or None when not projected."""
        if not self.active:
            return None
        return {"method": "sparse random projection (sklearn SparseRandomProjection, density 1/sqrt(D))",
                "seed": self.seed, "in_dim": self.in_dim, "out_dim": self.max_dim}
