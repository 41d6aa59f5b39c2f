"""Batched, streaming extraction: ImageSet -> float32 [N, D], through the cache."""
from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from .._progress import bar, progress_wanted  # noqa: F401  (re-exported)
from ..errors import EmbeddingError, InvarianceError
from ..models._pool import pool_outputs
from ..probes._blas import one_torch_thread
from ._cache import EmbeddingCache, cache_key
from ._preprocess import Preprocess

if TYPE_CHECKING:
    from ..data._source import ImageSet
    from ..models import Embedder


# A --model takes its normalisation from the option only; a suite's bundled model from [preprocess].
PREPROCESS_FIX = ("--invariance-preprocess for a --model, [preprocess] in the suite's or the data folder's "
                  "invariance.toml for a bundled model")


def _check_finite(out: np.ndarray, offset: int, what: str, ids: "list[str] | None" = None) -> None:
    bad = ~np.isfinite(out)
    if bad.any():
        row = offset + int(np.nonzero(bad.any(axis=1))[0][0])
        which = f"image {ids[row]!r} (row {row})" if ids else f"sample {row}"
        raise EmbeddingError(
            f"{what}: embedding of {which} contains NaN/Inf ({int(bad.any(axis=1).sum())} image(s) of this "
            f"batch); check the model's numerics at this layer and the preprocessing (scale/mean/std: "
            f"{PREPROCESS_FIX}), or pick another --layer"
        )


def extract(embedder: "Embedder", images: "ImageSet", *, layer: str | None = None,
            preprocess: Preprocess | None = None, pool: str = "auto", batch_size: int = 256,
            cache: EmbeddingCache | None = None, workers: int = 0,
            progress: bool = False, label: str = "", dtype: str = "float32",
            max_dim: int = 0, seed: int = 0) -> np.ndarray:
    """Embed every image of ``images`` at ``layer``; cached on the full key.

    Returns ``[len(images), D]`` in the order of ``images.labels``, float32, or with
    ``dtype="float16"`` rounded to half precision (half the memory and cache; the same
    array whether computed or read back, so figures do not depend on a cache hit). A
    layer whose values exceed float16's range (65,504) stays float32. ``pool`` says
    how a layer of rank > 2 becomes one vector (see :mod:`pytest_invariance.models._pool`);
    the key covers it, the model's input contract and its layer-layout override.
    One layer of :func:`extract_layers` (same cache entries).

    Examples
    --------
    See ``tests/test_extract.py``; the audits call this through the
    ``invariance_embed`` fixture.
    """
    layer = layer or embedder.default_layer
    return extract_layers(embedder, images, [layer], preprocess=preprocess, pool=pool, batch_size=batch_size,
                          cache=cache, workers=workers, progress=progress, label=label, dtype=dtype,
                          max_dim=max_dim, seed=seed)[layer]


def decoded_at(images: "ImageSet", preprocess: Preprocess) -> "ImageSet":
    """Image files decoded straight to the size the model is fed (one resampling, not the
    loader's size and then the model's: 64x64 files went 64 -> 160 -> 64); other image
    sets as they are."""
    at_size = getattr(images, "at_size", None)
    return at_size(preprocess.size) if at_size is not None and preprocess.size else images


def extract_layers(embedder: "Embedder", images: "ImageSet", layers: list[str], *,
                   preprocess: Preprocess | None = None, pool: str = "auto", batch_size: int = 256,
                   cache: EmbeddingCache | None = None, workers: int = 0, progress: bool = False,
                   label: str = "", dtype: str = "float32", max_dim: int = 0, seed: int = 0,
                   projections: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Embed ``images`` at every one of ``layers`` in one pass over the data: ``{layer: [N, D_layer]}``.

    Each layer has its own cache entry, keyed as a one-layer extraction, so a sweep and
    a single-layer run share entries; only the layers missing from the cache are run,
    all of them in the same forward passes (:meth:`Embedder.embed_many`). A layer wider
    than ``max_dim`` (0: no cap) is reduced by the seeded random projection of
    :class:`~pytest_invariance.embeddings._project.LayerProjection`; what was done is
    written into ``projections[layer]`` (None when the layer was kept as is).
    """
    preprocess = preprocess or Preprocess()
    images = decoded_at(images, preprocess)
    layers = list(dict.fromkeys(layers))
    parts = {layer: _key_parts(embedder, images, layer, preprocess, pool, dtype) for layer in layers}
    projections = {} if projections is None else projections
    if cache is None:
        out = _run(embedder, images, layers, preprocess, pool, batch_size, workers, progress, label, dtype,
                   max_dim, seed, projections)
        return out
    found: dict[str, np.ndarray] = {}
    with ExitStack() as stack:
        plain = {layer: cache_key(parts[layer]) for layer in layers}
        for key in sorted(set(plain.values())):  # one order for every process: no deadlock
            stack.enter_context(cache.locked(key))
        for layer in layers:
            hit = _load(cache, parts[layer], len(images), max_dim, seed)
            if hit is not None:
                found[layer], projections[layer] = hit
        cache.hits += len(found)
        todo = [layer for layer in layers if layer not in found]
        cache.misses += len(todo)
        if todo:
            new = _run(embedder, images, todo, preprocess, pool, batch_size, workers, progress, label, dtype,
                       max_dim, seed, projections)
            for layer, arr in new.items():
                proj = projections.get(layer)
                key = cache_key(_projected(parts[layer], max_dim, seed)) if proj else plain[layer]
                cache.store(key, arr, {**parts[layer], "model_path": embedder.path, "n": len(arr),
                                       "dim": arr.shape[1], "projection": proj})
                found[layer] = arr
    return {layer: found[layer] for layer in layers}


def _key_parts(embedder: "Embedder", images: "ImageSet", layer: str, preprocess: Preprocess, pool: str,
               dtype: str) -> dict[str, Any]:
    parts = {"model": embedder.sha256, "layer": layer, "data": images.fingerprint,
             "preprocess": preprocess.key(), "pool": pool, "contract": embedder.contract.to_dict(),
             "layer_layout": getattr(embedder, "layer_layout", "auto"), "version": __version__,
             # the code that decodes, perturbs, preprocesses and runs: an edit under an unchanged
             # version (a rotation's interpolation) must not serve the embeddings made before it
             "source": _embedding_source()}
    if dtype != "float32":
        parts["dtype"] = dtype
    return parts


def _embedding_source() -> str:
    from .._figures import source_digest

    return source_digest("data", "embeddings", "models")


def _projected(parts: dict[str, Any], max_dim: int, seed: int) -> dict[str, Any]:
    return {**parts, "projection": {"max_dim": max_dim, "seed": seed}}


def _load(cache: EmbeddingCache, parts: dict[str, Any], rows: int, max_dim: int,
          seed: int) -> tuple[np.ndarray, dict[str, Any] | None] | None:
    """A cached layer usable under this cap: an unprojected entry no wider than ``max_dim``
    (whatever the seed), else the entry projected with this (cap, seed)."""
    plain = cache.load(cache_key(parts), rows=rows)
    if plain is not None and (not max_dim or plain.shape[1] <= max_dim):
        return plain, None
    key = cache_key(_projected(parts, max_dim, seed))
    hit = cache.load(key, rows=rows) if max_dim else None
    if hit is None:
        return None
    return hit, cache.record(key).get("projection")


# Raw activations of all layers held at once per forward (a FaceNet sweep over its 23 blocks
# produces 4.5 MB per image): the images per forward are cut to fit, the batch otherwise.
_RAW_BYTES = 256 * 2**20


def _images_per_pass(raw: dict[str, np.ndarray], n: int, batch_size: int) -> int:
    per_image = sum(a.nbytes for a in raw.values()) / max(n, 1)
    return int(max(1, min(batch_size, _RAW_BYTES // max(per_image, 1))))


def _store(out: dict[str, np.ndarray], project: dict[str, Any], projections: dict[str, Any], layer: str,
           emb: np.ndarray, offset: int, rows: int, max_dim: int, seed: int, dtype: str) -> None:
    """Project and write one layer's (checked) rows ``offset:offset+len(emb)`` of ``out[layer]``."""
    from ._project import LayerProjection

    if layer not in out:  # allocate once we know D; never hold the images themselves
        project[layer] = LayerProjection(emb.shape[1], max_dim=max_dim, seed=seed)
        projections[layer] = project[layer].record()
        out[layer] = np.empty((rows, min(emb.shape[1], max_dim or emb.shape[1])), dtype=dtype)
    emb = project[layer](emb)
    if out[layer].dtype == np.float16 and np.abs(emb).max(initial=0) > np.finfo(np.float16).max:
        raise _HalfOverflow(layer)  # the rows before were rounded already: start again in float32
    out[layer][offset: offset + len(emb)] = emb


def _check_alone(embedder: "Embedder", chunk: Any, embs: dict[str, np.ndarray], layers: list[str], pool: str) -> None:
    """The first, darkest and brightest images of the first batch of real images, embedded
    alone, must give the rows they got in the batch (:func:`~.._model_check.batch_dependence`).
    The start-up probe checks random images only: a branch on the batch's brightness, or
    sequence-first tokens read from a graph with a fixed batch, passed it (3 extra forwards)."""
    from .._model_check import batch_dependence

    means = [float(chunk[i].mean()) for i in range(len(chunk))]
    picks = sorted({0, int(np.argmin(means)), int(np.argmax(means))})
    alone = [pool_outputs(embedder, embedder.forward_many(chunk[i:i + 1], layers), pool, chunk[i:i + 1])
             for i in picks]
    for layer in layers:
        batch_dependence(embedder, layer, embs[layer][picks], np.concatenate([one[layer] for one in alone]),
                         len(chunk))


class _HalfOverflow(Exception):
    """A layer's values left float16's range part-way through a half-precision extraction."""


def as_dtype(X: np.ndarray, dtype: str) -> np.ndarray:
    """``X`` rounded to ``dtype``; ``"float16"`` keeps float32 when a value is out of half range
    (65,504). The rule is applied to the whole layer, so it never depends on the batch size."""
    if dtype == "float16" and np.abs(X).max(initial=0) > np.finfo(np.float16).max:
        return X
    return X.astype(dtype, copy=False)


def _run(embedder: "Embedder", images: "ImageSet", layers: list[str], preprocess: Preprocess, pool: str,
         batch_size: int, workers: int, progress: bool, label: str, dtype: str, max_dim: int, seed: int,
         projections: dict[str, Any]) -> dict[str, np.ndarray]:
    """One pass over ``images`` for ``layers`` in ``dtype``; a float16 pass whose values overflow
    is run again in float32 and then rounded layer by layer (:func:`as_dtype`)."""
    try:
        return _run_pass(embedder, images, layers, preprocess, pool, batch_size, workers, progress, label,
                         dtype, max_dim, seed, projections)
    except _HalfOverflow:
        full = _run_pass(embedder, images, layers, preprocess, pool, batch_size, workers, progress, label,
                         "float32", max_dim, seed, projections)
        return {layer: as_dtype(arr, dtype) for layer, arr in full.items()}


def _run_pass(embedder: "Embedder", images: "ImageSet", layers: list[str], preprocess: Preprocess, pool: str,
              batch_size: int, workers: int, progress: bool, label: str, dtype: str, max_dim: int, seed: int,
              projections: dict[str, Any]) -> dict[str, np.ndarray]:
    from torch.utils.data import DataLoader

    from ._project import LayerProjection

    cuda = embedder.device.startswith("cuda")
    from ..data._source import collate

    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                        pin_memory=cuda, persistent_workers=False, collate_fn=collate)
    what = layers[0] if len(layers) == 1 else f"{len(layers)} layers"
    shown = bar(len(images), label or f"{embedder.name}:{what}", progress, unit="img")
    out: dict[str, np.ndarray] = {}
    project: dict[str, LayerProjection] = {}
    ids = images.ids()  # to name an image whose embedding is NaN
    per_pass = 1  # images per forward until the first one tells how large the activations are
    offset = 0
    checked = False  # the first batch of real images against the same images alone
    batches = iter(loader)
    try:
        while True:
            with one_torch_thread():
                batch = next(batches, None)
            if batch is None:
                break
            if embedder.backend == "torch":
                # torch models take the tensor as is: on CUDA the pinned batch is copied
                # asynchronously and preprocessed on the GPU.
                x = preprocess(batch.to(embedder.device, non_blocking=True) if cuda else batch)
            else:
                x = preprocess(batch).numpy()
            start = 0
            while start < len(x):
                chunk = x[start:start + per_pass]
                n = len(chunk)
                try:
                    raw = embedder.forward_many(chunk, layers)
                except InvarianceError:
                    raise
                except Exception as exc:  # the backend's own error, e.g. a batch fixed inside the graph
                    from .._model_check import backend_failure

                    rows = chunk.cpu().numpy() if hasattr(chunk, "cpu") else chunk
                    raise backend_failure(embedder, rows, layers, exc) from None
                if start == 0 and offset == 0:
                    per_pass = _images_per_pass(raw, n, batch_size)
                embs = pool_outputs(embedder, raw, pool, chunk)
                del raw  # the raw maps of every layer: the largest arrays of a sweep
                for layer, emb in embs.items():
                    if len(emb) != n:  # e.g. sequence-first tokens: never written as if they were images
                        raise EmbeddingError(f"{embedder.path} layer {layer!r} gives {len(emb)} rows for {n} images "
                                             "(its first axis is not the batch); leave it out of --layer / "
                                             "--invariance-layers")
                    # before the batch comparison, whose NaN difference would blame eval mode
                    _check_finite(emb, offset, f"{embedder.name} layer {layer}", ids)
                if n > 1 and not checked:
                    _check_alone(embedder, chunk, embs, layers, pool)
                    checked = True
                for layer, emb in embs.items():
                    _store(out, project, projections, layer, emb, offset, len(images), max_dim, seed, dtype)
                offset += n
                start += n
                shown.update(n)
    finally:
        shown.close()
    if not out:
        raise EmbeddingError(f"{label or images!r}: no images to embed")
    return out
