"""``pytest-invariance extract``: the plugin's own models and preprocessing over a dataset,
written as Parquet shards (:mod:`._parquet`), in this process or on Ray Data.

Both paths cut the images into the same shards (``part-<first row>.parquet`` of at most
``shard_rows`` rows, rows numbered over the image sets in order) and embed each shard
with :func:`~pytest_invariance.embeddings.extract`, so they write the same embeddings.
On Ray, a callable-class actor pool (:class:`ShardWriter`) loads the model once per actor,
takes shard row ranges from ``ray.data.from_items``, and writes its shards itself, so
the driver never holds the embeddings; ``num_gpus`` per actor puts each on a GPU.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..data._source import ImageSet, fetch_batch
from ..errors import DataError, InvalidParameterError
from ._parquet import ShardMeta, write_shard
from ..models._common import default_layer

if TYPE_CHECKING:
    import torch

    from .._audit import ModelRef
    from ..settings import Settings
    from ._preprocess import Preprocess


class RowsView(ImageSet):
    """Rows ``index`` of ``base`` as an ImageSet (what one shard embeds)."""

    def __init__(self, base: ImageSet, index: Sequence[int]):
        self.base, self.index = base, np.asarray(index, dtype=np.int64)
        self.labels = base.labels.iloc[self.index].reset_index(drop=True)
        self.fingerprint = hashlib.sha256(f"{base.fingerprint}|{self.index.tobytes().hex()}".encode()).hexdigest()[:32]

    def __getitem__(self, i: int) -> "torch.Tensor":
        return self.base[int(self.index[i])]

    def __getitems__(self, rows: list[int]) -> "torch.Tensor":
        return fetch_batch(self.base, self.index[np.asarray(rows)].tolist())

    def ids(self) -> list[str] | None:
        ids = self.base.ids()
        return None if ids is None else [ids[i] for i in self.index]


@dataclass
class ExtractJob:
    """What to embed and how: image sets (ids must be unique over all), model, read-out.

    ``model_spec`` is what :meth:`Audit.load` takes, so an actor can load the model itself.
    """

    settings: "Settings"
    model_spec: str
    layers: list[str]
    preprocess: "Preprocess"
    pool: str
    images: dict[str, ImageSet]
    meta: ShardMeta
    shard_rows: int = 4096
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        sizes = [len(s) for s in self.images.values()]
        self.offsets = [0, *np.cumsum(sizes).tolist()]
        ids = [i for s in self.images.values() for i in (s.ids() or [])]
        if len(ids) != self.total:
            raise DataError("extract: these images have no ids (the plugin makes them itself); nothing to join on")
        if len(set(ids)) != len(ids):
            raise DataError(f"extract: {len(ids) - len(set(ids))} ids repeat over {list(self.images)}; "
                            "each image must have one id")

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def shards(self) -> list[tuple[int, int]]:
        """``(first, stop)`` global rows of each shard, cut at shard_rows and at image-set ends."""
        out = []
        for a, b in zip(self.offsets[:-1], self.offsets[1:]):
            out += [(s, min(s + self.shard_rows, b)) for s in range(a, b, self.shard_rows)]
        return out

    def rows(self, first: int, stop: int) -> RowsView:
        k = int(np.searchsorted(self.offsets, first, side="right") - 1)
        base = list(self.images.values())[k]
        if stop > self.offsets[k + 1]:
            raise ValueError("a shard must not straddle two image sets")
        return RowsView(base, np.arange(first, stop) - self.offsets[k])


def embed_shard(job: ExtractJob, embedder: Any, first: int, stop: int, out: Path) -> tuple[str, int]:
    """Embed global rows [first, stop) at every layer, in one forward pass, and write
    ``part-<first>.parquet`` (raw widths: a run's --invariance-max-dim projects on reading)."""
    from ._extract import extract_layers

    view = job.rows(first, stop)
    vectors = extract_layers(embedder, view, list(job.layers), preprocess=job.preprocess, pool=job.pool,
                             batch_size=job.settings.batch_size, cache=None, workers=job.settings.workers)
    path = write_shard(out / f"part-{first:09d}.parquet", view.ids() or [], vectors, job.meta)
    return str(path), stop - first


def _prepare_out(out: Path, overwrite: bool) -> None:
    old = sorted(out.rglob("*.parquet")) if out.is_dir() else []
    if old and not overwrite:
        raise InvalidParameterError(f"--out {out} already holds {len(old)} Parquet shards (e.g. {old[0].name}); "
                                    "shards of two extractions must not mix: pass an empty folder or --overwrite")
    for p in old:
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_local(job: ExtractJob, out: Path, *, progress: bool = True, overwrite: bool = False) -> list[str]:
    """Extract in this process (the default, and what CI runs); returns the shard paths."""
    from .._audit import Audit
    from .._progress import bar

    _prepare_out(out, overwrite)
    embedder = Audit(job.settings).load(job.model_spec)
    shown = bar(job.total, f"extract {embedder.name}", progress, unit="img")
    paths = []
    for first, stop in job.shards():
        paths.append(embed_shard(job, embedder, first, stop, out)[0])
        shown.update(stop - first)
    shown.close()
    return paths


class ShardWriter:
    """Ray Data callable class: one model per actor; each batch of row numbers -> shards."""

    def __init__(self, job: ExtractJob, out: str):
        from .._audit import Audit

        self.job, self.out = job, Path(out)
        self.embedder = Audit(job.settings).load(job.model_spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, counts = [], []
        for first, stop in zip(batch["first"], batch["stop"]):
            path, n = embed_shard(self.job, self.embedder, int(first), int(stop), self.out)
            paths.append(path)
            counts.append(n)
        return {"path": np.array(paths), "rows": np.array(counts)}


def run_ray(job: ExtractJob, out: Path, *, address: str | None = None, actors: int = 1,
            num_gpus: float | None = None, overwrite: bool = False) -> list[str]:
    """Extract on Ray Data: the shards' row ranges -> ``map_batches(ShardWriter)`` on an actor pool.

    ``address``: an existing cluster (``ray.init(address=...)``); None starts or joins a
    local instance. ``num_gpus``: per actor; default 1 when the cluster has GPUs, else 0.
    Each item is one shard of :meth:`ExtractJob.shards`, so the files are those of
    :func:`run_local`, written by the actors.
    """
    try:
        import ray
    except ImportError as exc:
        raise ImportError("extract --ray requires Ray Data: pip install 'pytest-invariance[ray]'") from exc
    _prepare_out(out, overwrite)
    if not ray.is_initialized():
        ray.init(address=address)
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    items = [{"first": a, "stop": b} for a, b in job.shards()]
    ds = ray.data.from_items(items).map_batches(
        ShardWriter, fn_constructor_kwargs={"job": job, "out": str(out.resolve())}, batch_size=1,
        concurrency=actors, num_gpus=num_gpus)
    return sorted(str(p) for p in ds.to_pandas()["path"])


# ----------------------------------------------------------------------------- planning


def suite_job(settings: "Settings", suite_dir: Path, layers: Sequence[str], shard_rows: int) -> ExtractJob:
    """The images a suite audits (CelebA splits, or the factors folder of --data-dir), read
    out as that suite reads them, so that ``--invariance-embeddings`` joins without a mismatch."""
    from .._audit import Audit, model_names, model_spec
    from ..checks import Suite

    audit = Audit(settings)
    suite = Suite.find(suite_dir)
    if not suite.config:
        raise InvalidParameterError(f"--suite {suite_dir}: no invariance.toml there or above")
    if suite.section("suite").get("precomputed", True) is not True:
        raise InvalidParameterError(f"--suite {suite.name}: {suite.section('suite')['precomputed']}; nothing to extract")
    if suite.name == "factors":
        from ..data.factor_folder import load_factor_folder
        from ..studies.factors import folder_suite

        root = settings.resolve_path(settings.data_dir)
        if root is None:
            raise InvalidParameterError("--suite factors needs --data-dir DIR holding labels.csv and the images")
        folder = load_factor_folder(root, types=dict(settings.factor_type), seed=settings.seed,
                                    skip_bad=settings.skip_bad)
        suite, images = folder_suite(suite, folder), {"factors": folder.images}
    elif "celeba" in suite.config:
        from ..studies.faces import celeba_for_suite

        images = dict(celeba_for_suite(audit, suite))
    else:
        raise InvalidParameterError(f"--suite {suite.name}: extract knows the images of CelebA suites and the factors "
                                    "suite; for other images pass --images DIR")
    ref = audit.model(suite, model_names(settings, suite)[0])
    spec = model_spec(settings) or ref.embedder.path
    return _job(settings, spec, ref, layers, images, shard_rows, f"suite {suite.name}")


def folder_job(settings: "Settings", image_dir: Path, layers: Sequence[str], shard_rows: int) -> ExtractJob:
    """Every image under ``image_dir``; ids are paths relative to it (the factors suite's
    ``image`` column when ``image_dir`` is the data folder)."""
    from .._audit import Audit, model_spec
    from .._audit import ModelRef
    from ..data.folder import FileImageSet, files_fingerprint, list_images
    from ._preprocess import Preprocess

    if not settings.model:
        raise InvalidParameterError("--images needs --model")
    found = list_images(image_dir)
    if not found:
        raise DataError(f"--images {image_dir}: no image files below it")
    spec = model_spec(settings)
    emb = Audit(settings).load(spec)  # type: ignore[arg-type]
    pre = Preprocess(**dict(settings.preprocess))
    size = pre.size or (emb.input_shape[1], emb.input_shape[2])
    if None in size:
        raise InvalidParameterError(f"--images: {emb.path} has a dynamic input size; pass --preprocess size=HxW")
    import pandas as pd

    names = sorted(found)
    paths = [found[n] for n in names]
    images = FileImageSet(paths, pd.DataFrame({"image": names}), size=size,  # type: ignore[arg-type]
                          fingerprint=files_fingerprint(paths, [], "extract", size))
    ref = ModelRef(emb.name, emb, (settings.layer or (default_layer(emb),))[0], pre, True, pool=settings.pool)
    return _job(settings, spec, ref, layers, {"images": images}, shard_rows, f"folder {image_dir}")  # type: ignore[arg-type]


def _job(settings: "Settings", spec: str, ref: "ModelRef", layers: Sequence[str], images: dict[str, ImageSet],
         shard_rows: int, dataset: str) -> ExtractJob:
    from ._extract import decoded_at

    images = {k: decoded_at(v, ref.preprocess) for k, v in images.items()}  # as the audit decodes them
    layers = list(layers) or list(ref.layers)
    known = ref.embedder.layers()
    for layer in layers:
        if layer.partition("#")[0] not in known:
            from ..models._common import unknown_layer

            raise unknown_layer(layer, known, ref.embedder.path)
    meta = ShardMeta(ref.embedder.sha256, tuple(layers), ref.pool, ref.preprocess.to_dict(), ref.name,
                     {"dataset": dataset, "ids": "CelebA image_id or the image path relative to the data folder"})
    return ExtractJob(settings, spec, layers, ref.preprocess, ref.pool, images, meta, shard_rows)
