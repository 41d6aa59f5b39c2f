"""Bootstrap confidence intervals, permutation baselines and p-values.

All three are deterministic given ``random_state``: the same seed gives bit-identical
numbers run after run. The bootstrap resamples the *test predictions* (no refit per
resample): each resample is a vector of multinomial counts over the test rows, and a
statistic is evaluated on all resamples at once as a weighted sum.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    from ._estimate import Estimate

_CHUNK = 128  # resamples drawn per call of the generator (the stream depends on it: keep it)
# Resamples per float64 block handed out: 18 MB at n = 70,000, which malloc reuses; a 72 MB
# block was mapped afresh each time (2x the conversion's CPU time).
_YIELD = 32


_RECENT: "OrderedDict[tuple[int, int, int], list[NDArray[np.unsignedinteger]]]" = OrderedDict()
_RECENT_SIZE = 2  # a study draws the same (n, n_bootstrap, seed) for each of its figures
_DRAWING = threading.Lock()


def _draw_counts(n: int, n_bootstrap: int, random_state: int | None) -> "list[NDArray[np.unsignedinteger]]":
    rng = np.random.default_rng(random_state)
    blocks = []
    for start in range(0, n_bootstrap, _CHUNK):
        b = min(_CHUNK, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        # One bincount per resample: its n counts stay in cache (one bincount over b * n offset
        # indices cost 2.5x more). The smallest unsigned type that holds them, as before.
        rows = [np.bincount(r, minlength=n) for r in idx]
        block = np.empty((b, n), dtype=np.min_scalar_type(max(int(r.max()) for r in rows)))
        for i, r in enumerate(rows):
            block[i] = r
        blocks.append(block)
    return blocks


def _kept_draw(n: int, n_bootstrap: int, random_state: int) -> "list[NDArray[np.unsignedinteger]] | None":
    """A kept draw of the same ``n`` and seed with at least ``n_bootstrap`` resamples, cut to
    the first ``n_bootstrap``: the generator draws block by block, each block's indices in
    stream order, so a smaller draw is the first rows of a larger one (rotated MNIST's
    spectrum takes 200 resamples of the 1,000 its other figures use; test_probes_stats)."""
    for (kn, kb, ks), blocks in reversed(_RECENT.items()):
        if kn == n and ks == random_state and kb >= n_bootstrap:
            return [blk[: n_bootstrap - i * _CHUNK] for i, blk in enumerate(blocks) if i * _CHUNK < n_bootstrap]
    return None


def bootstrap_counts(n: int, n_bootstrap: int, random_state: int | None) -> "Iterator[NDArray[np.float64]]":
    """Resample counts, as blocks of shape [<=32, n]: row b says how often each test row is drawn.

    A seeded draw is kept (as small unsigned ints, 70 MB for 1,000 x 70,000) for the next
    call with the same arguments, or with the same ``n`` and seed and fewer resamples, so
    the figures of one study share one draw, bit for bit.
    """
    return (blk[s: s + _YIELD].astype(np.float64) for blk in _draw(n, n_bootstrap, random_state)
            for s in range(0, len(blk), _YIELD))


def resample_counts(n: int, n_bootstrap: int, random_state: int | None) -> NDArray[np.unsignedinteger]:
    """The draw of :func:`bootstrap_counts` as one ``[n_bootstrap, n]`` array of small unsigned
    ints (the same counts, kept the same way), for a statistic that is accumulated over blocks
    of rows rather than of resamples (:func:`~._structure.spectrum_and_estimate`)."""
    blocks = _draw(n, n_bootstrap, random_state)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def draw_ahead(n: int, n_bootstrap: int, random_state: int) -> None:
    """Draw and keep the seeded counts that :func:`bootstrap_counts` will hand out, e.g. in a
    thread while the caller fits its probes (the same counts as drawn on first use)."""
    _draw(n, n_bootstrap, random_state)


def _draw(n: int, n_bootstrap: int, random_state: int | None) -> "list[NDArray[np.unsignedinteger]]":
    key = (n, n_bootstrap, random_state)
    if random_state is None:
        return _draw_counts(n, n_bootstrap, None)
    with _DRAWING:  # one draw per key, also when a study draws it ahead in a thread
        return _kept_or_drawn(key)


def _kept_or_drawn(key: tuple[int, int, int]) -> "list[NDArray[np.unsignedinteger]]":
    n, n_bootstrap, random_state = key
    if key in _RECENT:
        _RECENT.move_to_end(key)
        blocks = _RECENT[key]
    else:
        blocks = _kept_draw(n, n_bootstrap, random_state) or _draw_counts(n, n_bootstrap, random_state)
        _RECENT[key] = blocks
        while len(_RECENT) > _RECENT_SIZE:
            _RECENT.popitem(last=False)
    return blocks


def percentile_interval(samples: NDArray[np.floating], confidence: float = 0.95) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(low, high)``: the two-sided percentile interval of bootstrap ``samples [b, ...]``
    along the first axis, NaN resamples (a ratio undefined in a resample) left out."""
    alpha = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(samples, [alpha, 1.0 - alpha], axis=0)
    return low, high


def bootstrap_ci(
    values: NDArray[np.floating] | Callable[[NDArray[np.float64]], NDArray[np.floating]],
    *,
    n: int | None = None,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    random_state: int | None = 0,
    groups: NDArray[np.generic] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Percentile bootstrap CI of a statistic of the test predictions.

    Parameters
    ----------
    values : array of shape [n] or [n, k], or callable
        Per-sample values whose mean is the statistic (e.g. 0/1 correctness), or a
        function ``fn(counts) -> [b, ...]`` of a block of resample counts ``[b, n]``
        (then ``n`` is required), for ratio statistics such as a false-negative rate.
    n_bootstrap : int
        Number of resamples (0 gives NaN bounds).
    confidence : float
        Two-sided level in (0, 1).
    groups : array of shape [n], optional
        The group of each test row (e.g. the identity): whole groups are resampled (a
        cluster bootstrap), so rows of one person, which are not independent, do not narrow
        the CI as if they were (Field and Welsh, 2007). A row's count is its group's.

    Returns
    -------
    low, high, samples : ndarray
        Bounds with the statistic's trailing shape, and the ``[n_bootstrap, ...]`` resampled statistics.

    Examples
    --------
    >>> lo, hi, _ = bootstrap_ci(np.r_[np.ones(80), np.zeros(20)], n_bootstrap=200)
    >>> bool(lo < 0.8 < hi)
    True
    """
    if not 0.0 < confidence < 1.0:
        raise InvalidParameterError(f"confidence must be in (0, 1); got {confidence!r}.")
    if callable(values):
        if n is None:
            raise InvalidParameterError("bootstrap_ci needs n= when values is a callable.")
        fn = values
    else:
        arr = np.asarray(values, dtype=np.float64)
        n = arr.shape[0]

        def fn(counts: NDArray[np.float64]) -> NDArray[np.float64]:
            return (counts @ arr) / n  # type: ignore[no-any-return]

    if n_bootstrap <= 0 or n == 0:
        shape = np.shape(fn(np.ones((1, n or 1))))[1:]
        nan = np.full(shape, np.nan)
        return nan, nan.copy(), np.empty((0, *shape))
    if groups is None:
        blocks = bootstrap_counts(n, n_bootstrap, random_state)
    else:
        inv = np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
        if len(inv) != n:
            raise InvalidParameterError(f"groups has {len(inv)} rows but the statistic has {n}; they must align.")
        k = int(inv.max()) + 1
        if callable(values):  # a statistic of the rows: each row counted as often as its group
            blocks = (c[:, inv] for c in bootstrap_counts(k, n_bootstrap, random_state))
        else:
            # a mean over a resample of groups: its rows' sum over its row count (groups differ
            # in size, so not over n), from per-group sums
            if arr.ndim == 1:
                sums = np.bincount(inv, weights=arr, minlength=k)
            else:
                sums = np.zeros((k, *arr.shape[1:]))
                np.add.at(sums, inv, arr)
            sizes = np.bincount(inv, minlength=k).astype(np.float64)

            def fn(counts: NDArray[np.float64]) -> NDArray[np.float64]:
                rows = counts @ sizes
                return (counts @ sums) / (rows if sums.ndim == 1 else rows[:, None])  # type: ignore[no-any-return]

            blocks = bootstrap_counts(k, n_bootstrap, random_state)
    samples = np.concatenate([np.asarray(fn(c), dtype=np.float64) for c in blocks])
    # nanquantile: a ratio statistic can be undefined in a resample that drew no positives.
    low, high = percentile_interval(samples, confidence)
    return low, high, samples


def permutation_chance(
    fit_score_fn: Callable[[NDArray[np.generic]], float | NDArray[np.floating]],
    y: NDArray[np.generic],
    k: int,
    random_state: int | None = 0,
    *,
    batched: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Chance level as the mean score of a probe refit on shuffled labels.

    Parameters
    ----------
    fit_score_fn : callable
        ``fit_score_fn(y_perm) -> score`` refits the probe on permuted training labels
        and scores it on the untouched test set. With ``batched=True`` it receives all
        ``k`` permutations stacked as ``[k, n, ...]`` and returns ``[k, ...]``.
    y : array
        Training labels; rows are permuted (all columns of a row move together).
    k : int
        Number of permutations (>= 1).

    Returns
    -------
    mean, values : ndarray
        Mean over permutations and the ``[k, ...]`` individual null scores.

    Examples
    --------
    >>> m, v = permutation_chance(lambda yp: float(yp[0]), np.arange(10), k=5)
    >>> v.shape
    (5,)
    """
    y = np.asarray(y)
    perms = np.stack(list(permutations(len(y), k, random_state)))
    if batched:
        values = np.asarray(fit_score_fn(y[perms]), dtype=np.float64)
    else:
        values = np.stack([np.asarray(fit_score_fn(y[p]), dtype=np.float64) for p in perms])
    return values.mean(axis=0), values


def permutations(n: int, k: int, random_state: int | None = 0) -> Iterator[NDArray[np.int64]]:
    """The ``k`` row orders ``[n]`` that :func:`permutation_chance` refits on, seeded, one at a
    time: for a probe that computes its refits' statistics in advance without holding all."""
    if k < 1:
        raise InvalidParameterError(f"k must be >= 1 permutations; got {k!r}.")
    rng = np.random.default_rng(random_state)
    return (rng.permutation(n) for _ in range(k))


def p_value(
    observed: float | NDArray[np.floating],
    null_values: NDArray[np.floating],
    higher_is_better: bool = True,
) -> NDArray[np.float64]:
    """One-sided permutation p-value with the +1 correction, ``(1 + #as-extreme) / (k + 1)``.

    Examples
    --------
    >>> float(p_value(0.9, np.array([0.5, 0.52, 0.49])))
    0.25
    """
    null = np.asarray(null_values, dtype=np.float64)
    obs = np.asarray(observed, dtype=np.float64)
    extreme = null >= obs if higher_is_better else null <= obs
    return (1.0 + extreme.sum(axis=0)) / (null.shape[0] + 1.0)  # type: ignore[no-any-return]


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` of a figure measured under ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def repeated_estimate(estimates: "Sequence[Estimate]", *, confidence: float = 0.95,
                      alternative: str | None = None,
                      bounds: tuple[float, float] = (-np.inf, np.inf)) -> "Estimate":
    """One figure from ``R`` measurements on seeded splits or subsets, its CI covering the seed.

    A figure whose train/test split or training subset is drawn from the seed moves with the
    seed by more than its test-set bootstrap CI says. Measuring it on ``R`` seeded draws and
    reporting the mean removes most of that movement; the CI adds the two sources:

    ``low = mean - sqrt(w_low^2 + (t_{R-1} * s / sqrt(R))^2)`` (``high`` likewise), where
    ``w_low = mean(value_r - ci_low_r)`` is the mean bootstrap half-width (test sampling,
    conservative for a mean over R draws) and ``s`` the standard deviation of the R values
    (the draw), with Student's t quantile for the estimated ``s``.

    Parameters
    ----------
    estimates : sequence of Estimate
        The same figure on each draw (R >= 1); ``chance`` is averaged when all have one.
    alternative : {"less", "greater"} or None
        Direction in which the figure departing from chance is the finding; gives a
        one-sided normal ``p_value`` from the combined spread (None: no p-value).
    bounds : (low, high)
        The values the figure can take (``(0, inf)`` for an MAE or a std, ``(0, 1)`` for an
        accuracy); the CI is clipped to them. The t interval of a mean of 2 draws is wide
        enough to reach below 0 (a std of 12.2 with CI -16.1..40.6).

    Returns
    -------
    Estimate
        ``details``: the first draw's details plus ``n_repeats``, ``repeat_values``,
        ``repeat_sd`` and ``ci_method``.

    Examples
    --------
    >>> from pytest_invariance.probes import Estimate
    >>> e = repeated_estimate([Estimate(v, v - 1, v + 1) for v in (10.0, 12.0, 14.0)])
    >>> e.value, round(e.ci_high - e.value, 2)
    (12.0, 5.07)
    """
    from scipy import stats as st

    from ._estimate import Estimate

    if not estimates:
        raise InvalidParameterError("repeated_estimate needs at least one estimate.")
    v = np.array([e.value for e in estimates], dtype=np.float64)
    lo = np.array([e.ci_low for e in estimates], dtype=np.float64)
    hi = np.array([e.ci_high for e in estimates], dtype=np.float64)
    R, point = len(v), float(v.mean())
    sd = float(v.std(ddof=1)) if R > 1 else 0.0
    draw = float(st.t.ppf((1 + confidence) / 2, R - 1)) * sd / np.sqrt(R) if R > 1 else 0.0
    w_lo, w_hi = float(np.nanmean(v - lo)) if np.isfinite(lo).any() else 0.0, \
        float(np.nanmean(hi - v)) if np.isfinite(hi).any() else 0.0
    low, high = point - float(np.hypot(w_lo, draw)), point + float(np.hypot(w_hi, draw))
    low, high = max(low, bounds[0]), min(high, bounds[1])
    chances = [e.chance for e in estimates]
    chance = float(np.mean(chances)) if all(c is not None for c in chances) else None
    p = None
    if alternative is not None and chance is not None:
        z = st.norm.ppf((1 + confidence) / 2)
        spread = max((high - low) / (2 * z), 1e-12)
        p = float(st.norm.cdf((point - chance) / spread) if alternative == "less"
                  else st.norm.sf((point - chance) / spread))
    details = {**estimates[0].details, "n_repeats": R, "repeat_values": [round(float(x), 6) for x in v],
               "repeat_sd": sd, "ci_method": "mean of seeded draws; CI = bootstrap half-width (+) t * sd / sqrt(R)"}
    return Estimate(point, low, high, chance=chance, n=estimates[0].n, p_value=p, confidence=confidence,
                    details=details)
