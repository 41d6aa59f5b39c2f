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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..data._source import ImageSet, fetch_batch
from ..errors import DataError, InvalidParameterError
from ._parquet import ShardMeta, image_digests, write_shard

if TYPE_CHECKING:
    import torch

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

    ``model_spec`` is what :func:`~pytest_invariance.models.load_model` takes, so an actor
    can load the model itself. Planned from a suite or a folder by :mod:`pytest_invariance._extract_plan`.
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
    notes: list[str] = field(default_factory=list)  # lines for the user (what the plan left out and why)

    def __post_init__(self) -> None:
        sizes = [len(s) for s in self.images.values()]
        self.offsets = [0, *np.cumsum(sizes).tolist()]
        ids = [i for s in self.images.values() for i in (s.ids() or [])]
        if len(ids) != self.total:
            raise DataError("extract: these images have no ids (the plugin makes them itself); nothing to join on")
        if len(set(ids)) != len(ids):
            raise DataError(f"extract: {len(ids) - len(set(ids))} ids repeat over {list(self.images)}; "
                            "each image must have one id")

    def load(self) -> Any:
        """The model, loaded as the audit loads ``--model`` (each Ray actor loads its own)."""
        from ..models import load_model

        s = self.settings
        return load_model(self.model_spec, device=s.device, weights=s.weights, trust_pickle=s.trust_pickle,
                          input_layout=s.input_layout, layer_layout=s.layer_layout, input_batch=s.input_batch)

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
    path = write_shard(out / f"part-{first:09d}.parquet", view.ids() or [], vectors, job.meta, image_digests(view))
    return str(path), stop - first


def refuse_constant_layers(folder: Path, job: "ExtractJob", batch_rows: int = 65536) -> None:
    """Raise EmbeddingError naming ``--layer`` when a layer's vectors are the same for every
    image written in ``folder`` (the audit's rule, :func:`~pytest_invariance._audit.constant_rows`,
    streamed over the shards as per-feature min and max): every figure of such shards is chance,
    so they are refused before ``--out`` is published, not at the audit that reads them."""
    import pyarrow.parquet as pq

    from .._audit import constant_rows
    from ..errors import EmbeddingError
    from ._parquet import to_matrix

    files = sorted(folder.rglob("*.parquet"))
    for layer in job.layers:
        lo = hi = None
        n = 0
        for f in files:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=[layer]):
                X = to_matrix(batch.column(0), layer)
                if not len(X):
                    continue
                lo = X.min(0) if lo is None else np.minimum(lo, X.min(0))
                hi = X.max(0) if hi is None else np.maximum(hi, X.max(0))
                n += len(X)
        if n > 1 and constant_rows(np.stack([lo, hi])):  # type: ignore[list-item]
            zero = " (all zero)" if not (lo.any() or hi.any()) else ""  # type: ignore[union-attr]
            raise EmbeddingError(
                f"--layer {layer}: {job.meta.model} gives the same embedding{zero} for all {n} images (every one of "
                f"its {len(lo)} features is constant), so every figure from these shards would be chance; extract "  # type: ignore[arg-type]
                "another layer with --layer NAME (pytest --model M --invariance-list-layers lists them); nothing was written")


def _check_out(out: Path, overwrite: bool) -> None:
    """--out must be new or empty; --overwrite replaces a folder that holds only shards."""
    held = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"--out {out} is a file; pass a folder")
    if held and not overwrite:
        raise InvalidParameterError(f"--out {out} is not empty ({len(held)} files, e.g. {held[0].name}); shards of two "
                                    "extractions must not mix: pass a new folder, or --overwrite to replace its shards")
    other = [p for p in held if p.suffix != ".parquet"]
    if other:
        raise InvalidParameterError(f"--out {out} holds {len(other)} files that are not Parquet shards (e.g. "
                                    f"{other[0].name}); --overwrite replaces a folder of shards only: pass a new folder")


def _publish(out: Path, overwrite: bool, write: Callable[[Path], list[str]]) -> list[str]:
    """Run ``write`` into a hidden sibling of ``out`` and rename it to ``out`` when it is
    complete, so a failed extraction leaves no empty or half-written --out behind."""
    _check_out(out, overwrite)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    stale = [p for p in out.parent.glob(f".{out.name}.partial-*") if p != tmp]
    if stale:  # left by an extraction killed outright (SIGKILL); they hold no complete result
        from ..errors import warn

        warn(f"extract: {len(stale)} unfinished folder(s) of an earlier killed extraction beside --out, e.g. "
             f"{stale[0]}; they are not used: delete them")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    import signal
    import threading

    def _terminated(signum: int, _frame: object) -> None:  # SIGTERM (Kubernetes, Slurm): clean up like Ctrl-C
        raise SystemExit(128 + signum)

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main else None
    try:
        paths = write(tmp)
        if out.exists():  # --overwrite: the old shards go only once the new ones are complete
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    return sorted(str(out / Path(p).relative_to(tmp)) for p in paths)


def run_local(job: ExtractJob, out: Path, *, progress: bool = True, overwrite: bool = False) -> list[str]:
    """Extract in this process (the default, and what CI runs); returns the shard paths."""
    from .._progress import bar

    def write(folder: Path) -> list[str]:
        embedder = job.load()
        shown = bar(job.total, f"extract {embedder.name}", progress, unit="img")
        paths = []
        for first, stop in job.shards():
            paths.append(embed_shard(job, embedder, first, stop, folder)[0])
            shown.update(stop - first)
        shown.close()
        refuse_constant_layers(folder, job)
        return paths

    return _publish(out, overwrite, write)


class ShardWriter:
    """Ray Data callable class: one model per actor; each batch of row numbers -> shards."""

    def __init__(self, job: ExtractJob, out: str):
        self.job, self.out = job, Path(out)
        self.embedder = job.load()

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

    def write(folder: Path) -> list[str]:
        if not ray.is_initialized():
            ray.init(address=address)
        gpus = (1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0) if num_gpus is None else num_gpus
        items = [{"first": a, "stop": b} for a, b in job.shards()]
        ds = ray.data.from_items(items).map_batches(
            ShardWriter, fn_constructor_kwargs={"job": job, "out": str(folder)}, batch_size=1,
            concurrency=actors, num_gpus=gpus)
        paths = [str(p) for p in ds.to_pandas()["path"]]
        refuse_constant_layers(folder, job)
        return paths

    return _publish(out, overwrite, write)
