"""Batched, streaming extraction: ImageSet -> float32 [N, D], through the cache."""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import EmbeddingError
from ._cache import EmbeddingCache, cache_key
from ._preprocess import Preprocess

if TYPE_CHECKING:
    from ..data._source import ImageSet
    from ..models import Embedder


def progress_wanted(mode: str = "auto") -> bool:
    if mode in ("on", "off"):
        return mode == "on"
    return bool(sys.__stderr__ and sys.__stderr__.isatty()) and not os.environ.get("CI")


class _Progress:
    """A one-line bar on the real stderr (pytest captures sys.stderr, not __stderr__)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.total, self.label, self.enabled = total, label, enabled
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.2 or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            frac = self.done / max(self.total, 1)
            bar = "#" * int(30 * frac)
            sys.__stderr__.write(f"\r{self.label[:40]:40s} [{bar:30s}] {self.done}/{self.total} {rate:,.0f} img/s")
            if self.done >= self.total:
                sys.__stderr__.write("\n")
            sys.__stderr__.flush()


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
            progress: bool = False, label: str = "") -> np.ndarray:
    """Embed every image of ``images`` at ``layer``; cached on the full key.

    Returns float32 ``[len(images), D]`` in the order of ``images.labels``. ``pool`` says
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
    if cache is None:
        return _run(embedder, images, layer, preprocess, pool, batch_size, workers, progress, label)
    key = cache_key(key_parts)
    with cache.locked(key):
        hit = cache.load(key, rows=len(images))
        if hit is not None:
            cache.hits += 1
            return hit
        cache.misses += 1
        out = _run(embedder, images, layer, preprocess, pool, batch_size, workers, progress, label)
        cache.store(key, out, {**key_parts, "model_path": embedder.path, "n": len(out), "dim": out.shape[1]})
        return out


def _run(embedder: "Embedder", images: "ImageSet", layer: str, preprocess: Preprocess, pool: str,
         batch_size: int, workers: int, progress: bool, label: str) -> np.ndarray:
    from torch.utils.data import DataLoader

    cuda = embedder.device.startswith("cuda")
    from ..data._source import collate

    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=cuda, persistent_workers=False, collate_fn=collate)
    bar = _Progress(len(images), label or f"{embedder.name}:{layer}", progress)
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
            out = np.empty((len(images), emb.shape[1]), dtype=np.float32)
        out[offset: offset + len(emb)] = emb
        offset += len(emb)
        bar.update(len(emb))
    if out is None:
        raise EmbeddingError(f"{label or images!r}: no images to embed")
    return out
