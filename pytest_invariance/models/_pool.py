"""How a layer's activation becomes one vector per image (``--invariance-pool``).

``auto`` picks the read-out that keeps the meaning of every feature and refuses when
it cannot:

- ``[N, D]``: used as is (by every pool).
- ``[N, C, H, W]`` (or channels-last ``[N, H, W, C]``, known from the graph): the mean
  over H and W, one number per channel (global average pooling, the usual read-out of
  a conv layer). Which axes are spatial comes from the model's graph; when the graph
  does not say, ``auto`` and ``gap`` refuse and name ``--invariance-layer-layout``.
- ``[N, T, D]`` token sequences (ViTs), and sequence-first ``[T, N, D]`` ones (told apart by
  the axis that has the batch's length, see :func:`batch_axis`): refused. Flattening would hand the probe every
  token position as its own features, so a probe could read where things are in the
  image instead of what the representation encodes (a tiny ViT's ``norm`` flattened
  gave rotation MAE 8.3 deg; its CLS token 22.6 deg). Choose ``cls`` (token 0, what a
  classification head reads) or ``mean`` (the token average).

``flatten`` keeps every number of any rank; it is never chosen automatically.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import EmbeddingError

POOLS = ("auto", "gap", "cls", "mean", "flatten")
OPT_POOL = "--invariance-pool"
OPT_LAYER_LAYOUT = "--invariance-layer-layout"


def pool_activation(a: np.ndarray, pool: str, layout: str | None, where: str) -> np.ndarray:
    """Activation of any rank -> float32 ``[N, D]``.

    Parameters
    ----------
    a : ndarray ``[N, ...]``
        The layer's output for a batch.
    pool : one of :data:`POOLS`
    layout : {"nchw", "nhwc"} or None
        Axis order of a 4-D activation as far as the graph tells; None when unknown.
    where : str
        ``"model.onnx layer 'x'"``, for messages.

    Raises
    ------
    EmbeddingError
        One line naming the option that resolves the ambiguity.
    """
    a = np.asarray(a)
    if a.ndim == 1:
        a = a[:, None]
    if pool == "flatten" or a.ndim == 2:  # [N, D] is used as is by every pool (logits read beside it too)
        return _f32(a.reshape(len(a), -1))
    if a.ndim == 3:
        return _f32(_tokens(a, pool, where))
    if a.ndim == 4:
        return _f32(_spatial(a, pool, layout, where))
    raise EmbeddingError(f"{where} has shape {list(a.shape)}; only {OPT_POOL} flatten reads a rank-{a.ndim} tensor")


def pool_outputs(embedder: Any, outs: dict[str, np.ndarray], pool: str, batch: Any) -> dict[str, np.ndarray]:
    """``{layer: raw activation}`` of ``embedder`` for ``batch`` -> ``{layer: float32[N, D]}`` by
    :func:`pool_activation`. A 3-D activation whose images lie on axis 1 (sequence-first
    ``[T, N, D]``: ``nn.MultiheadAttention`` and ``nn.Transformer*`` without ``batch_first``)
    is read as ``[N, T, D]``; see :func:`batch_axis`."""
    out = {}
    for layer, a in outs.items():
        where = f"{embedder.path} layer {layer!r}"
        if np.ndim(a) == 3 and batch_axis(embedder, layer, a, batch) == 1:
            a, where = np.swapaxes(a, 0, 1), f"{where} (sequence-first [T, N, D], read as [N, T, D])"
        out[layer] = pool_activation(a, pool, embedder.activation_layout(layer) if np.ndim(a) == 4 else None, where)
    return out


def batch_axis(embedder: Any, layer: str, a: np.ndarray, batch: Any) -> int:
    """The axis (0 or 1) of the 3-D activation ``a`` that holds ``batch``'s images: the one of
    its length, else (as many tokens as images, ``[n, n, D]``) the one of length 1 when the
    first image is run alone. 0 when neither has the batch's length (the caller's row check
    refuses that layer)."""
    n = len(batch)
    fits = [ax for ax in (0, 1) if a.shape[ax] == n]
    if len(fits) != 2:
        return fits[0] if fits else 0
    one = np.shape(embedder.forward_many(batch[:1], [layer])[layer])
    return 1 if one[1] == 1 and one[0] != 1 else 0


def _tokens(a: np.ndarray, pool: str, where: str) -> np.ndarray:
    if pool == "cls":
        return a[:, 0, :]
    if pool == "mean":
        return a.mean(axis=1)
    n, t, d = a.shape
    raise EmbeddingError(
        f"{where} is a token sequence [N, {t}, {d}]; {OPT_POOL} {pool} would flatten token positions into "
        f"features; choose {OPT_POOL} cls (token 0) or {OPT_POOL} mean (average of the {t} tokens)"
    )


def _spatial(a: np.ndarray, pool: str, layout: str | None, where: str) -> np.ndarray:
    if pool == "cls":
        raise EmbeddingError(f"{where} is a 4-D map {list(a.shape)}, not tokens; use {OPT_POOL} gap or flatten")
    if layout is None:
        # [N, C, 1, 1] / [N, 1, 1, C]: both readings give the same C numbers.
        if a.shape[2] == a.shape[3] == 1 or a.shape[1] == a.shape[2] == 1:
            return a.reshape(len(a), -1)
        raise EmbeddingError(
            f"{where} is a 4-D map {list(a.shape)} whose axis order the model's graph does not tell; "
            f"pass {OPT_LAYER_LAYOUT} nchw or {OPT_LAYER_LAYOUT} nhwc (or {OPT_POOL} flatten)"
        )
    return a.mean(axis=(2, 3) if layout == "nchw" else (1, 2))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)
