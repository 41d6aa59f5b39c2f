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

One extreme row set every feature's std: a row at 1e6 on all 32 dimensions of 600 made
the std ~5e4 times the rest's, and a planted binary, categorical and continuous factor all
read at chance with their gates passed (scikit-learn's ``StandardScaler`` pipelines read
the same). So rows with a value more than :data:`BAND` robust standard deviations beyond
a feature's 1st / 99th percentile do not set the mean, std and range; like rows to
predict, they are clipped to the other rows' range (the probes' details give
``outlier_rows``). On that data the SVM reads balanced error 0.115 again, as without the
row. The bound is wide, and starts from the 1st / 99th percentiles rather than the median,
on purpose: a unit that is large on 10% of the rows (a logit, a one-hot-like ReLU unit)
lies 10-20 robust SDs from its median and holds a factor there. So outliers on more than
about 1% of the rows are not caught.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray


# Rows with a value farther than this many robust standard deviations (IQR / 1.349) beyond a
# feature's 1st / 99th percentile do not set the scaling: never reached by Gaussian or
# exponential features, so their figures do not change, while one corrupt row no longer
# sets every feature's scale.
BAND = 50.0
# Rows the band's quantiles are read from (evenly spaced): a loose bound needs no more.
BAND_ROWS = 4096


def robust_band(X: NDArray[np.floating], width: float = BAND, max_rows: int = BAND_ROWS
                ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-feature ``(low, high)`` [d]: ``width`` robust standard deviations beyond the 1st and
    99th percentiles, read from up to ``max_rows`` evenly spaced rows of ``X`` [n, d].

    The robust std is the interquartile range / 1.349. Extending from the 1st and 99th
    percentiles rather than the median keeps any mode holding 1% of the rows inside (a unit
    that is large on 10% of the rows holds a factor there). A feature whose quartiles
    coincide (a sparse post-ReLU unit at rest on most rows) is read from its values that
    differ from the median; one whose active values have no spread either gets no band.
    """
    S = np.asarray(X[:: max(1, -(-len(X) // max_rows))], np.float64)
    med = np.median(S, axis=0)
    qs = np.quantile(S, [0.01, 0.25, 0.75, 0.99], axis=0)
    flat = np.flatnonzero(qs[1] == qs[2])
    if len(flat):
        active = np.where(S[:, flat] != med[flat], S[:, flat], np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns: no active values
            qs[:, flat] = np.nanquantile(active, [0.01, 0.25, 0.75, 0.99], axis=0)
    spread = np.nan_to_num((qs[2] - qs[1]) / 1.349, nan=0.0)
    reach = np.where(spread > 0, width * spread, np.inf)
    # the band always holds the median (a sparse unit's resting value)
    return np.minimum(med, qs[0] - reach), np.maximum(med, qs[3] + reach)


@dataclass(frozen=True)
class Standardiser:
    """``z = clip((x - mean) / std, low, high)``, each [d]; a constant feature has std 1.

    ``outlier_rows`` counts the fitted rows with a value outside :func:`robust_band`: they
    did not set the mean, std and range, and are clipped like rows to predict."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    outlier_rows: int = 0

    @classmethod
    def fit(cls, X: NDArray[np.floating], block: int = 4096) -> "Standardiser":
        """From the training rows ``X`` [n, d] (any float dtype).

        Rows with a value outside :func:`robust_band` (``outlier_rows``) do not set the mean,
        std and range: like rows to predict, they are clipped to the others' range. Mean,
        std and range are accumulated in float64 a block of rows at a time (no float64 copy
        of a float16/32 ``X``: 1.1 GB at CelebA's 162,770 x 832), in two passes.
        """
        from ._blas import map_threads

        n = len(X)
        starts = range(0, n, block)
        band_low, band_high = robust_band(X) if n else (np.full(X.shape[1], -np.inf), np.full(X.shape[1], np.inf))

        far = dict(zip(starts, map_threads(
            lambda a: ((X[a:a + block] < band_low) | (X[a:a + block] > band_high)).any(1), starts)))
        far_rows = int(sum(f.sum() for f in far.values()))
        if far_rows == n:  # nothing inside the band: keep every row rather than none
            far, far_rows = {a: np.zeros(0, bool) for a in starts}, 0

        def inside(a: int) -> NDArray[Any]:
            # without a far row, the plain block (the same arithmetic as before the band)
            return X[a:a + block] if not far[a].any() else X[a:a + block][~far[a]]

        kept = max(n - far_rows, 1)
        mean = np.sum(map_threads(lambda a: inside(a).sum(0, dtype=np.float64), starts), axis=0) / kept

        def second(a: int) -> tuple[Any, Any, Any]:
            rows = np.subtract(inside(a), mean, dtype=np.float64)
            if not len(rows):
                return np.zeros(len(mean)), np.full(len(mean), np.inf), np.full(len(mean), -np.inf)
            return np.square(rows).sum(0), rows.min(0), rows.max(0)

        parts = map_threads(second, starts)
        std = np.sqrt(np.sum([p[0] for p in parts], axis=0) / kept)
        std[std == 0] = 1.0
        # The range in standardised units, as transform() computes a row: (x - mean) / std.
        low = np.min([p[1] for p in parts], axis=0) / std
        high = np.max([p[2] for p in parts], axis=0) / std
        return cls(mean, std, low, high, far_rows)

    def transform(self, X: NDArray[np.floating], dtype: Any = np.float64) -> NDArray[Any]:
        """``X`` [n, d] standardised and clipped to the fitted rows' range, as ``dtype``
        (float64 arithmetic; the fitted rows themselves are unchanged by the clip)."""
        from ._linear_svm import shifted_scaled

        Z = shifted_scaled(X, self.mean, self.std, dtype)
        return np.clip(Z, self.low.astype(Z.dtype), self.high.astype(Z.dtype), out=Z)  # type: ignore[no-any-return]
