"""Per-feature standardisation of a probe's inputs, from each feature's typical values.

Every probe with a penalty (the SVMs, the multinomial and the MLP) fits on features
centred at their training mean and divided by their training std, so a fixed C grid means
the same for every feature whatever its units. Dividing the whole embedding by one number
(its RMS spread) made the penalty grow with the other features' spread: a binary factor
carried exactly by one dimension at 1/20 of the 63 others' scale was reported at chance
(balanced error 0.50, gate passed) where scikit-learn's ``LinearSVC`` on raw or
standardised features finds it perfectly (0.00).

A few extreme values set the std if every value counts: one training row at 1e6 on all 32
dimensions made every feature's std ~5e4 times the rest's, and planted binary, categorical
and continuous factors read at chance with their gates passed (scikit-learn's
``StandardScaler`` pipelines read the same); three values of 30 in the leaking dimension,
whose other values span -0.8..1.8, put its balanced error at 0.45 instead of 0.06. So a
feature's mean, std and range come from its values inside :func:`robust_band` (:data:`BAND`
robust SDs beyond its 1st / 99th percentile); the probes' details count the rows with a
value outside (``outlier_rows``). The band starts from the 1st / 99th percentiles, not the
median: a unit that is large on 10% of the rows (a logit, a one-hot-like ReLU unit) holds a
factor there. Outliers on more than about 1% of the rows are not caught.

The fitted rows are clipped to that range (an outlier to its edge, so it cannot lever the
fit); rows to predict to that range widened by :data:`MARGIN` times its width on each side,
so a test split may extrapolate (yaw to +-90 degrees from training's +-30: clipping to the
training range itself read MAE 21 where ridge reads 2.7) while a value a billion SDs out
cannot decide a prediction alone (the figures' details count the rows clipped:
``extrapolated_rows``). A feature whose training spread is below float32's
resolution of the median feature's (a unit dead on the training rows, or what LEACE left of
an erased direction) is held constant: divided by its std of 1e-9, a test row where it is
active gave an MLP an angle MAE of 7e10 degrees. A factor carried only by such a feature (at
1e-8 of the others' scale) is therefore not read.

The band and the clipping of the fitted rows are not linear maps of the features, so a probe
fitted through them is not a linear probe of the embedding. That matters after LEACE
(``--invariance-erase``), whose guarantee is linear: no linear predictor fitted on the erased
training rows beats the constant one. On a post-ReLU layer a unit active on one training row
is one the band leaves out; LEACE's edit of the other rows (a linear function of the other
units, which carries the factor) is what cancels that row, so with the row clipped the rest
read the factor again (the factors suite's ``mae_erased`` 15.97 degrees where chance and
scikit-learn read 21.80; before erasure 15.57). ``Standardiser.fit(X, robust=False)`` is the
plain, affine form for such rows: every value sets the mean and std and no fitted row is
clipped (rows to predict still are, beyond :data:`MARGIN` widths).
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
BAND = 10.0
# Rows to predict are clipped to the fitted values' range widened by this many times its
# width on each side: a test split may extrapolate (yaw to +-90 degrees from training's +-8),
# while a value a billion training SDs out cannot decide a prediction alone.
MARGIN = 10.0
# float32's relative resolution: a feature whose std is this small next to the median
# feature's holds only rounding (what an erasure leaves of a direction).
RESOLUTION = float(np.finfo(np.float32).eps)
# Rows the band's quantiles are read from (evenly spaced): a loose bound needs no more.
BAND_ROWS = 4096
# Class-mean contrasts within this many times the features' float rounding (at the rows'
# sampling scale) hold no linear signal (:func:`within_rounding`).
ROUNDING_FLOOR = 4.0


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
    banded = spread > 0  # a constant unit, or one with a single active value: no band
    reach = width * spread
    # the band always holds the median (a sparse unit's resting value)
    return (np.where(banded, np.minimum(med, qs[0] - reach), -np.inf),
            np.where(banded, np.maximum(med, qs[3] + reach), np.inf))


@dataclass(frozen=True)
class Standardiser:
    """``z = clip((x - mean) / std, lo, hi)``, each [d]; a constant feature has std 1.

    ``low``/``high``: the standardised range of the fitted values inside :func:`robust_band`
    (which alone set ``mean`` and ``std``, feature by feature); rows are clipped to that
    range widened by :data:`MARGIN` times its width on each side. ``outlier_rows`` counts
    the fitted rows with a value outside the band."""

    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    low: NDArray[np.float64]
    high: NDArray[np.float64]
    outlier_rows: int = 0

    @classmethod
    def fit(cls, X: NDArray[np.floating], block: int = 4096, robust: bool = True) -> "Standardiser":
        """From the training rows ``X`` [n, d] (any float dtype).

        Each feature's mean, std and range come from its values inside :func:`robust_band`
        (a value outside does not set them; a row's other values still do). They are
        accumulated in float64 a block of rows at a time (no float64 copy of a float16/32
        ``X``: 1.1 GB at CelebA's 162,770 x 832), in two passes.

        ``robust=False``: no band; every value sets the mean, std and range, so the fitted
        rows are only shifted and scaled (a linear map: the form a probe of LEACE-erased
        features needs, see the module notes).
        """
        from ._blas import map_threads

        n, d = X.shape
        starts = range(0, n, block)
        band_low, band_high = (robust_band(X) if n and robust else (np.full(d, -np.inf), np.full(d, np.inf)))

        def inside(a: int) -> NDArray[np.bool_] | None:
            rows = X[a:a + block]
            ok = (rows >= band_low) & (rows <= band_high)
            return None if ok.all() else ok  # None: every value counts (the arithmetic of no band)

        masks = map_threads(inside, starts)
        outlier_rows = sum(int((~m).any(1).sum()) for m in masks if m is not None)

        def first(i: int) -> tuple[Any, Any]:
            rows, m = X[starts[i]:starts[i] + block], masks[i]
            if m is None:
                return rows.sum(0, dtype=np.float64), len(rows)
            return np.where(m, rows, 0).sum(0, dtype=np.float64), m.sum(0)

        parts = map_threads(first, range(len(starts)))
        count = np.maximum(np.sum([p[1] * np.ones(d) for p in parts], axis=0), 1) if parts else np.ones(d)
        mean = np.sum([p[0] for p in parts], axis=0) / count if parts else np.zeros(d)

        def second(i: int) -> tuple[Any, Any, Any]:
            rows, m = np.subtract(X[starts[i]:starts[i] + block], mean, dtype=np.float64), masks[i]
            if m is None:
                return np.square(rows).sum(0), rows.min(0), rows.max(0)
            return (np.square(np.where(m, rows, 0)).sum(0), np.where(m, rows, np.inf).min(0),
                    np.where(m, rows, -np.inf).max(0))

        parts2 = map_threads(second, range(len(starts)))
        std = np.sqrt(np.sum([p[0] for p in parts2], axis=0) / count) if parts2 else np.ones(d)
        # A spread below float32's resolution of the embedding's scale is rounding (a unit dead
        # on the training rows, or what an erasure left): such a feature is held constant, or a
        # test row where it is active would be divided by ~1e-9 (an MLP read MAE 7e10 degrees).
        flat = std <= RESOLUTION * np.median(std)
        std[flat] = 1.0
        # The range in standardised units, as transform() computes a row: (x - mean) / std.
        low = np.where(flat, 0.0, np.min([p[1] for p in parts2], axis=0) / std) if parts2 else np.zeros(d)
        high = np.where(flat, 0.0, np.max([p[2] for p in parts2], axis=0) / std) if parts2 else np.zeros(d)
        return cls(mean, std, low, high, outlier_rows)

    def bounds(self, fitted: bool = False) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The standardised ``(lo, hi)`` [d] rows are clipped to: for the fitted rows
        (``fitted``), the range of their values inside the band (an outlier clipped to it);
        for rows to predict, that range widened by :data:`MARGIN` times its width on each
        side (a constant feature stays constant)."""
        reach = 0.0 if fitted else MARGIN * (self.high - self.low)
        return self.low - reach, self.high + reach

    def extrapolated_rows(self, X: NDArray[np.floating], block: int = 8192) -> int:
        """How many rows of ``X`` [n, d] (rows to predict) have a value that :meth:`transform`
        clips: beyond the fitted range by more than :data:`MARGIN` widths, or away from a
        feature held constant (dead on the fitted rows). Such a row's prediction is capped, so a
        figure's details report the count (``extrapolated_rows``) instead of clipping silently."""
        from ._linear_svm import shifted_scaled

        lo, hi = self.bounds()
        # a held-constant feature's range is one point: a value off it by float32 rounding of
        # the fitted rows' scale is not counted
        tol = np.where(self.high > self.low, 0.0, BAND * RESOLUTION * float(np.median(self.std)))
        return sum(int(((Z < lo - tol) | (Z > hi + tol)).any(1).sum())
                   for Z in (shifted_scaled(X[s:s + block], self.mean, self.std, np.float64)
                             for s in range(0, len(X), block)))

    def transform(self, X: NDArray[np.floating], dtype: Any = np.float64, fitted: bool = False) -> NDArray[Any]:
        """``X`` [n, d] standardised and clipped to :meth:`bounds`, as ``dtype`` (float64
        arithmetic); ``fitted``: ``X`` holds the rows the standardiser was fitted on."""
        from ._linear_svm import shifted_scaled

        Z = shifted_scaled(X, self.mean, self.std, dtype)
        lo, hi = self.bounds(fitted)
        return np.clip(Z, lo.astype(Z.dtype), hi.astype(Z.dtype), out=Z)  # type: ignore[no-any-return]

    def clip(self, X: NDArray[np.floating], fitted: bool = False) -> NDArray[np.float64]:
        """``X`` [n, d] as float64 in its own units, clipped to :meth:`bounds` (mapped back):
        what the probes fitted in the embedding's units see."""
        lo, hi = self.bounds(fitted)
        return np.clip(np.asarray(X, np.float64), self.mean + lo * self.std, self.mean + hi * self.std)


def within_rounding(Z: NDArray[np.floating], W: NDArray[np.float64], scale: NDArray[np.float64],
                    st: Standardiser, input_dtype: Any, block: int = 8192) -> NDArray[np.bool_]:
    """[T]: whether each contrast ``Z' W[:, t]`` of the standardised rows ``Z`` [n, d] (a
    difference of class means, ``W`` [n, T]) is within float rounding in every feature.

    A value ``v`` is stored to within ``eps |v|`` (``eps`` of ``input_dtype``, the rows
    before standardising, or of ``Z``'s, the coarser), so a class mean of feature ``j`` is off
    by about ``eps rms(x_j) / sqrt(rows)``; a contrast is within rounding when it is at most
    :data:`ROUNDING_FLOOR` ``* eps * rms(x_j) * scale[t]`` (``scale``: the contrast's
    ``sqrt(sum 1 / class rows)``), with ``rms(x_j)`` in standardised units ``sqrt((mean_j /
    std_j)^2 + mean(z_j^2))``. A difference that small is ``ROUNDING_FLOOR * eps * rms``
    sampling standard errors: no split could read it. LEACE leaves exactly such contrasts on
    the rows it was fitted on; a probe fitted to them reads rounding.
    """
    from ._blas import map_threads

    n, d = Z.shape

    def part(s: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        z = np.asarray(Z[s:s + block], np.float64)  # float64: a float32 sum is off by the floor itself
        return z.T @ W[s:s + block], np.square(z).sum(0)

    parts = map_threads(part, range(0, n, block))
    diff = np.sum([p[0] for p in parts], axis=0) if parts else np.zeros((d, W.shape[1]))
    msq = np.sum([p[1] for p in parts], axis=0) if parts else np.zeros(d)
    dt = np.dtype(input_dtype)
    eps = max(float(np.finfo(dt).eps) if np.issubdtype(dt, np.floating) else 0.0, float(np.finfo(Z.dtype).eps))
    rms = np.sqrt((st.mean / st.std) ** 2 + msq / max(n, 1))  # [d]
    return (np.abs(diff) <= ROUNDING_FLOOR * eps * rms[:, None] * np.asarray(scale)[None, :]).all(0)  # type: ignore[no-any-return]
