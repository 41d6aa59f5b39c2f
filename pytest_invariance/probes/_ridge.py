"""Ridge predictions for every candidate penalty at once, in two feature scalings.

The regression probes of the face suites (yaw, perturbation levels), the factors suite's
continuous factors and LEACE's before/after rows fit ridge on a few hundred to a few
hundred thousand rows and choose the penalty on held-out rows. Penalties are relative to
the fitted rows' mean squared distance to their mean (:func:`penalty_unit`), so they do
not change when the features are scaled as a whole.

Neither scaling of the features is always the more sensitive probe, so the validation
chooses it as it chooses the penalty (:data:`PENALTIES`):

- ``"embedding"``: the embedding's own units. A factor carried by one dimension at 1e-3 of
  the 63 others' scale reads at chance here (MAE 0.206, chance 0.216), since one
  penalty for all features shrinks the small one away.
- ``"standardised"``: each feature centred and divided by its training std
  (:class:`~._standardise.Standardiser`), which finds that factor (MAE 0.044, as
  scikit-learn's standardised ``RidgeCV``), but amplifies noise dimensions: on FaceNet's
  embeddings of 280 rotated LFW faces it read rotation MAE 19.4 degrees where the
  embedding's units read 13.7 (chance 25.7).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._standardise import Standardiser

# Relative penalties: 1e-6 is least squares in all but name, 1e4 predicts the training mean.
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-6, 5))
SCALINGS = ("embedding", "standardised")
# Every candidate the validation chooses from, scaling-major (alphas ascend within a scaling).
PENALTIES = tuple((s, a) for s in SCALINGS for a in ALPHAS)
ALPHA_UNIT = "mean squared distance of the scaled training rows to their mean"

Scaler = Callable[..., NDArray[np.float64]]  # (X, fitted=False): fitted for the training rows


def scalers(st: "Standardiser") -> dict[str, Scaler]:
    """The two feature maps of :data:`SCALINGS` from a :class:`~._standardise.Standardiser`
    fitted on the training rows; both clip rows to its bounds (one extreme row levers neither fit)."""
    return {"embedding": st.clip, "standardised": st.transform}


def penalty_unit(singular_values: NDArray[np.float64], n: int) -> float:
    """``rms**2`` (mean squared distance of ``n`` rows to their mean) from the centred rows'
    singular values: the unit of a relative ridge penalty (1 if the rows are constant)."""
    unit = float((singular_values ** 2).sum()) / max(n, 1)
    return unit if unit > 0 else 1.0


def ridge_predict(Xtr: NDArray[np.floating], Ytr: NDArray[np.floating], Xte: NDArray[np.floating],
                  maps: Mapping[str, Scaler] | None = None, robust: bool = True
                  ) -> tuple[NDArray[np.float64], dict[str, float]]:
    """Predictions ``[len(PENALTIES), len(Xte), k]`` of ridge fits of ``Ytr`` [n, k] on ``Xtr`` [n, d],
    and each scaling's penalty unit (:func:`penalty_unit`: a relative penalty times it is the
    absolute one, for a final fit on the scaled rows).

    One SVD of the centred training rows per scaling (``maps``: :func:`scalers` of ``Xtr``
    unless given; ``robust``: of ``Standardiser.fit(Xtr, robust=robust)``, False for rows a
    linear fit must see unclipped, such as LEACE-erased ones) gives every penalty's
    predictions; the intercept is not penalised.
    """
    maps = scalers(Standardiser.fit(Xtr, robust=robust)) if maps is None else maps
    my = Ytr.mean(axis=0)
    out, units = [], {}
    for name in SCALINGS:
        Ztr, Zte = maps[name](Xtr, fitted=True), maps[name](Xte)
        mx = Ztr.mean(axis=0)
        U, s, Vt = np.linalg.svd(Ztr - mx, full_matrices=False)
        units[name] = penalty_unit(s, len(Ztr))
        shrink = s / (s**2 + np.asarray(ALPHAS)[:, None] * units[name])  # [A, r]
        out.append(((Zte - mx) @ Vt.T)[None] * shrink[:, None, :] @ (U.T @ (Ytr - my)) + my)
    return np.concatenate(out), units


def ridge_predict_streamed(chunks: Callable[[], Iterable[tuple[NDArray[Any], NDArray[Any]]]],
                           Xte: NDArray[np.floating], maps: Mapping[str, Scaler]
                           ) -> tuple[NDArray[np.float64], dict[str, float]]:
    """:func:`ridge_predict` for one target from training rows too many to hold at once.

    ``chunks()`` yields ``(X, y)`` blocks of the training rows (called once per scaling);
    their moments are merged exactly and ``(S + a I)^-1 c`` is solved through one
    eigendecomposition of the centred scatter ``S``. Returns the predictions
    ``[len(PENALTIES), len(Xte)]`` and each scaling's penalty unit.
    """
    from . import functional as F

    out, units = [], {}
    for name in SCALINGS:
        mo = None
        for Xc, yc in chunks():
            part = F.group_moments(maps[name](Xc, fitted=True), np.zeros(len(Xc), np.int64), 1,
                                   np.asarray(yc, np.float64)[:, None])
            mo = part if mo is None else F.merge_moments(mo, part)
        lam, V = np.linalg.eigh(mo.scatter[0])  # type: ignore[union-attr]
        lam = np.clip(lam, 0.0, None)
        units[name] = penalty_unit(np.sqrt(lam), int(mo.counts[0]))  # type: ignore[union-attr]
        proj = (maps[name](Xte) - mo.means[0]) @ V  # type: ignore[union-attr]
        along = V.T @ mo.cross[0][:, 0]  # type: ignore[union-attr]
        shrink = 1.0 / (lam[None, :] + np.asarray(ALPHAS)[:, None] * units[name])  # [A, d]
        out.append((proj[None] * (shrink * along)[:, None, :]).sum(-1) + mo.y_means[0, 0])  # type: ignore[union-attr]
    return np.concatenate(out), units


def cv_penalty(Xtr: NDArray[np.floating], Y: NDArray[np.floating], folds: Iterable[NDArray[np.bool_]],
               robust: bool = True) -> NDArray[np.intp]:
    """Index into :data:`PENALTIES` of each of ``Y``'s [n, k] columns' lowest cross-validated
    MAE, the ``folds`` (boolean masks of held-out rows, e.g. whole identities) in turn held out
    (``robust``: as in :func:`ridge_predict`)."""
    cv = sum(np.abs(ridge_predict(Xtr[~f], Y[~f], Xtr[f], robust=robust)[0] - Y[f]).mean(axis=1) for f in folds)
    return np.asarray(cv).argmin(axis=0)  # type: ignore[no-any-return]
