"""Enrollment: rank-1 identification and verification TAR at a fixed FAR (paper Sec. 1).

A gallery holds one embedding per identity; each probe embedding is compared to every
gallery entry by cosine similarity. Its pair with its own identity is *genuine*, its
pairs with the other identities are *impostor*. TAR@FAR: the threshold is set on the
impostor scores so that at most a share ``far`` of them pass it, and TAR is the share
of genuine scores above it (the usual face-verification ROC operating point, e.g.
Labeled Faces in the Wild's protocol and NIST FRVT reports).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError
from ._estimate import Estimate
from ._validation import check_features, check_lengths
from .stats import bootstrap_counts


def far_threshold(impostor: NDArray[np.floating], far: float) -> float:
    """Score threshold at which at most ``floor(far * n)`` impostor scores are strictly above it.

    With fewer than ``1 / far`` impostor scores this is the largest impostor score (no
    impostor accepted), so the TAR read there is a lower bound of the TAR at ``far``.

    Examples
    --------
    >>> far_threshold(np.array([0.1, 0.9, 0.5, 0.3]), far=0.25)
    0.5
    """
    s = np.sort(np.asarray(impostor, np.float64).ravel())[::-1]
    return float(s[min(int(np.floor(far * len(s))), len(s) - 1)])


def tar_at_far(genuine: NDArray[np.floating], impostor: NDArray[np.floating], far: float) -> tuple[float, float]:
    """(TAR, threshold): share of genuine scores strictly above :func:`far_threshold`.

    Examples
    --------
    >>> tar_at_far(np.array([0.95, 0.6, 0.4]), np.array([0.1, 0.9, 0.5, 0.3]), far=0.25)
    (0.6666666666666666, 0.5)
    """
    t = far_threshold(impostor, far)
    return float((np.asarray(genuine) > t).mean()), t


def _unit(X: NDArray[np.floating]) -> NDArray[np.float64]:
    X = np.asarray(X, np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)  # type: ignore[no-any-return]


def _tar_resampled(gen: NDArray[np.float64], imp: NDArray[np.float64], counts: NDArray[np.float64],
                   far: float) -> NDArray[np.float64]:
    """TAR@FAR per resample of the probes ([b, n] counts): each probe brings its genuine score
    and its row of impostor scores, and the threshold is re-set on each resample."""
    order = np.argsort(-imp, axis=None)
    flat, owner = imp.ravel()[order], np.repeat(np.arange(len(imp)), imp.shape[1])[order]
    out = np.empty(len(counts))
    for b, c in enumerate(counts):
        w = c[owner]
        k = np.floor(far * w.sum())
        # the first score whose cumulative weight (counting itself) exceeds k is the threshold
        pos = min(int(np.searchsorted(np.cumsum(w), k, side="right")), len(flat) - 1)
        out[b] = (c * (gen > flat[pos])).sum() / c.sum()
    return out


def enrollment_figures(gallery: NDArray[np.floating], gallery_ids: NDArray[Any], probes: NDArray[np.floating],
                       probe_ids: NDArray[Any], *, far: float = 1e-3, n_bootstrap: int = 1000,
                       confidence: float = 0.95, random_state: int = 0) -> dict[str, Estimate]:
    """Rank-1 identification and TAR@FAR of ``probes`` against a one-per-identity gallery.

    Parameters
    ----------
    gallery : array [G, d]
        One embedding per identity (``gallery_ids`` unique).
    probes : array [n, d]
        Embeddings whose identity (``probe_ids``) is in the gallery.
    far : float
        False accept rate of the operating point, in (0, 1).

    Returns
    -------
    dict
        ``rank1`` (chance ``1/G``) and ``tar`` (chance ``far``: with scores that carry no
        identity, genuine pairs pass as often as impostors). Both CIs are percentile
        bootstraps over probes; the TAR's re-sets the threshold in each resample.
        ``tar.details`` holds the threshold, the pair counts and whether the impostor
        count resolves ``far`` (``far_resolved``: at least ``1/far`` impostor pairs).

    Raises
    ------
    DataError
        When gallery identities repeat, a probe's identity is not in the gallery, or the
        gallery has fewer than 2 identities.
    """
    G, P = _unit(check_features(gallery, "gallery")), _unit(check_features(probes, "probes"))
    gid, pid = np.asarray(gallery_ids), np.asarray(probe_ids)
    check_lengths(len(G), gallery_ids=gid)
    check_lengths(len(P), probe_ids=pid)
    if len(np.unique(gid)) != len(gid) or len(gid) < 2:
        raise DataError(f"the gallery needs one entry per identity and at least 2 identities; got {len(gid)} "
                        f"entries for {len(np.unique(gid))} identities")
    col = {g: i for i, g in enumerate(gid.tolist())}
    missing = [p for p in pid.tolist() if p not in col]
    if missing:
        raise DataError(f"probe identities {missing[:5]} are not in the gallery; enroll them first")
    S = P @ G.T  # [n, G]
    own = np.array([col[p] for p in pid.tolist()])
    genuine = S[np.arange(len(P)), own]
    mask = np.ones_like(S, dtype=bool)
    mask[np.arange(len(P)), own] = False
    impostor = S[mask].reshape(len(P), len(G) - 1)
    hit = (S.argmax(axis=1) == own).astype(np.float64)
    tar, thr = tar_at_far(genuine, impostor, far)
    # bootstrap_counts yields its blocks once; both figures read the same draw.
    counts = list(bootstrap_counts(len(P), n_bootstrap, random_state)) if n_bootstrap else []
    alpha = (1 - confidence) / 2

    def ci(samples: list[NDArray[np.float64]]) -> tuple[float, float]:
        if not samples:
            return float("nan"), float("nan")
        lo, hi = np.nanquantile(np.concatenate(samples), [alpha, 1 - alpha])
        return float(lo), float(hi)

    r_lo, r_hi = ci([(c @ hit) / c.sum(axis=1) for c in counts])
    t_lo, t_hi = ci([_tar_resampled(genuine, impostor, c, far) for c in counts])
    n_imp = impostor.size
    return {
        "rank1": Estimate(float(hit.mean()), r_lo, r_hi, chance=1.0 / len(G), n=len(P), confidence=confidence,
                          details={"gallery": len(G)}),
        "tar": Estimate(tar, t_lo, t_hi, chance=far, n=len(P), confidence=confidence, details={
            "far": far, "threshold": thr, "genuine_pairs": len(genuine), "impostor_pairs": int(n_imp),
            "far_resolved": bool(n_imp * far >= 1),
            "observed_far": float((impostor > thr).mean())}),
    }
