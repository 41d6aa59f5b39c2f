"""Batched, streaming extraction: ImageSet -> float32 [N, D], through the cache."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from .._progress import bar, progress_wanted  # noqa: F401  (re-exported)
from ..errors import EmbeddingError
from ._cache import EmbeddingCache, cache_key
from ._preprocess import Preprocess

if TYPE_CHECKING:
    from ..data._source import ImageSet
    from ..models import Embedder


def _check_finite(out: np.ndarray, offset: int, what: str) -> None:
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.nonzero(bad.any(axis=1))[0][0])
        raise EmbeddingError(
            f"{what}: embedding of sample {offset + row} contains NaN/Inf "
            f"({int(bad.any(axis=1).sum())} bad samples in this batch); check the model's numerics "
            "at this layer and the preprocessing (scale/mean/std)"
        )


def extract(embedder: "Embedder", images: "ImageSet", *, layer: str | None = None,
            preprocess: Preprocess | None = None, pool: str = "auto", batch_size: int = 256,
            cache: EmbeddingCache | None = None, workers: int = 0,
            progress: bool = False, label: str = "", dtype: str = "float32") -> np.ndarray:
    """Embed every image of ``images`` at ``layer``; cached on the full key.

    Returns ``[len(images), D]`` in the order of ``images.labels``, float32, or with
    ``dtype="float16"`` rounded to half precision (half the memory and cache; the same
    array whether computed or read back, so figures do not depend on a cache hit). A
    layer whose values exceed float16's range (65,504) stays float32. ``pool`` says
    how a layer of rank > 2 becomes one vector (see :mod:`pytest_invariance.models._pool`);
    the key covers it, the model's input contract and its layer-layout override.

    Examples
    --------
    See ``tests/test_extract.py``; the audits call this through the
    ``invariance_embed`` fixture.
    """
    preprocess = preprocess or Preprocess()
    layer = layer or embedder.default_layer
    key_parts = {"model": embedder.sha256, "layer": layer, "data": images.fingerprint,
                 "preprocess": preprocess.key(), "pool": pool, "contract": embedder.contract.to_dict(),
                 "layer_layout": getattr(embedder, "layer_layout", "auto"), "version": __version__}
    if dtype != "float32":
        key_parts["dtype"] = dtype
    if cache is None:
        return _run(embedder, images, layer, preprocess, pool, batch_size, workers, progress, label, dtype)
    key = cache_key(key_parts)
    with cache.locked(key):
        hit = cache.load(key, rows=len(images))
        if hit is not None:
            cache.hits += 1
            return hit
        cache.misses += 1
        out = _run(embedder, images, layer, preprocess, pool, batch_size, workers, progress, label, dtype)
        cache.store(key, out, {**key_parts, "model_path": embedder.path, "n": len(out), "dim": out.shape[1]})
        return out


def _run(embedder: "Embedder", images: "ImageSet", layer: str, preprocess: Preprocess, pool: str,
         batch_size: int, workers: int, progress: bool, label: str, dtype: str = "float32") -> np.ndarray:
    from torch.utils.data import DataLoader

    cuda = embedder.device.startswith("cuda")
    from ..data._source import collate

    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=cuda, persistent_workers=False, collate_fn=collate)
    shown = bar(len(images), label or f"{embedder.name}:{layer}", progress, unit="img")
    out: np.ndarray | None = None
    offset = 0
    for batch in loader:
        if embedder.backend == "torch":
            # torch models take the tensor as is: on CUDA the pinned batch is copied
            # asynchronously and preprocessed on the GPU.
            x = preprocess(batch.to(embedder.device, non_blocking=True) if cuda else batch)
            emb = embedder.embed(x, layer, pool=pool)
        else:
            emb = embedder.embed(preprocess(batch).numpy(), layer, pool=pool)
        _check_finite(emb, offset, f"{embedder.name} layer {layer}")
        if out is None:  # allocate once we know D; never hold the images themselves
            out = np.empty((len(images), emb.shape[1]), dtype=dtype)
        if out.dtype == np.float16 and np.abs(emb).max(initial=0) > np.finfo(np.float16).max:
            out = out.astype(np.float32)  # out of half range: keep full precision
        out[offset: offset + len(emb)] = emb
        offset += len(emb)
        shown.update(len(emb))
    shown.close()
    if out is None:
        raise EmbeddingError(f"{label or images!r}: no images to embed")
    return out
