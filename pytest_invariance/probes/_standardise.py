"""Per-feature standardisation of a probe's inputs, clipped to the range of the fitted rows.

Every probe with a penalty (the SVMs, the multinomial and the MLP) fits on features
centred at their training mean and divided by their training std, so a fixed C grid means
the same for every feature whatever its units. Dividing the whole embedding by one number
(its RMS spread) made the penalty grow with the other features' spread: a binary factor
carried exactly by one dimension at 1/20 of the 63 others' scale was reported at chance
(balanced error 0.50, gate passed) where scikit-learn's ``LinearSVC`` on raw or
standardised features finds it perfectly (0.00).

Test rows are clipped to the standardised range the fitted rows spanned: a feature flat in
training (a unit dead on those rows, or one LEACE left at rounding residue, std 1e-9) but
active on test would otherwise be multiplied by up to 1e9 (an MLP gave an angle MAE of
7e10 degrees that way). Inside the training range the map is the plain affine one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Standardiser:
    """``z = clip((x - mean) / std, low, high)``, each [d]; a constant feature has std 1."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]

    @classmethod
    def fit(cls, X: NDArray[np.floating], block: int = 4096) -> "Standardiser":
        """From the training rows ``X`` [n, d] (any float dtype).

        Mean, std and range are accumulated in float64 a block of rows at a time (no float64
        copy of a float16/32 ``X``: 1.1 GB at CelebA's 162,770 x 832), in two passes.
        """
        from ._blas import map_threads

        n = len(X)
        starts = range(0, n, block)
        mean = np.sum(map_threads(lambda a: X[a:a + block].sum(0, dtype=np.float64), starts), axis=0) / max(n, 1)

        def second(a: int) -> tuple[Any, Any, Any]:
            rows = np.subtract(X[a:a + block], mean, dtype=np.float64)
            return np.square(rows).sum(0), rows.min(0), rows.max(0)

        parts = map_threads(second, starts)
        std = np.sqrt(np.sum([p[0] for p in parts], axis=0) / max(n, 1))
        std[std == 0] = 1.0
        # The range in standardised units, as transform() computes a row: (x - mean) / std.
        low = np.min([p[1] for p in parts], axis=0) / std
        high = np.max([p[2] for p in parts], axis=0) / std
        return cls(mean, std, low, high)

    def transform(self, X: NDArray[np.floating], dtype: Any = np.float64) -> NDArray[Any]:
        """``X`` [n, d] standardised and clipped to the fitted rows' range, as ``dtype``
        (float64 arithmetic; the fitted rows themselves are unchanged by the clip)."""
        from ._linear_svm import shifted_scaled

        Z = shifted_scaled(X, self.mean, self.std, dtype)
        return np.clip(Z, self.low.astype(Z.dtype), self.high.astype(Z.dtype), out=Z)  # type: ignore[no-any-return]
