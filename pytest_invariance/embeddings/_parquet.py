"""Precomputed embeddings in Parquet: the format ``pytest-invariance extract`` writes and
``--invariance-embeddings`` reads (pyarrow does the reading and writing).

Format (one file, or a folder of ``*.parquet`` shards searched recursively):

* an ``id`` column (string): the image's id, joined to a suite's labels
  (:func:`image_ids`): CelebA's ``image_id`` (file name, e.g. ``000001.jpg``) or the
  factors suite's ``image`` path exactly as written in ``labels.csv``;
* one vector column per layer, named by the layer: ``fixed_size_list<float>``, a
  ``list<float>`` of one length, or the ``arrow.fixed_shape_tensor`` extension type
  (flattened); float16/32/64 values, read as float32;
* an ``image_digest`` column (string): blake2b-128 (hex) of each image file's bytes, the
  digest the data loaders fingerprint images with (:func:`image_digests`), so that shards
  of other images under the same ids (a new version of a data folder) are refused;
* schema metadata, every value a string: ``invariance.model_sha256``,
  ``invariance.layers`` (JSON list in forward order), ``invariance.pool``,
  ``invariance.preprocessing`` (JSON of :meth:`Preprocess.to_dict`), optionally
  ``invariance.model`` (a name), ``invariance.ids`` and ``invariance.dataset`` (free text).

Every shard must record the same metadata. Ids must be unique over all shards; the
images a suite audits must all have a row. Each fault is one error with counts and
examples, never a silently shorter or misaligned matrix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..errors import DataError, EmbeddingError, InvalidParameterError

if TYPE_CHECKING:
    import pyarrow as pa

    from ..data._source import ImageSet

OPT_EMBEDDINGS = "--invariance-embeddings"
ID_COLUMN = "id"
PREFIX = "invariance."
FORMAT_VERSION = "1"
_EXAMPLES = 5  # ids quoted in an error message
DIGEST_COLUMN = "image_digest"
# What the shards must record for an audit to know what the vectors are (docs/scale.md).
PROVENANCE = ("model_sha256", "layers", "pool", "preprocessing", DIGEST_COLUMN)
OPT_UNVERIFIED = "--invariance-embeddings-unverified"


def require_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("reading or writing Parquet embeddings requires pyarrow: pip install pyarrow") from exc
    return pyarrow


def normalize_id(value: Any) -> str:
    """One spelling per image: forward slashes, no ``./`` (``img\\a.jpg`` == ``./img/a.jpg``)."""
    return str(PurePosixPath(str(value).replace("\\", "/")))


def image_ids(images: "ImageSet") -> list[str] | None:
    """The ids of ``images`` in row order, or None when the plugin makes the images itself
    (perturbation levels, MNIST arrays): such rows have no id another pipeline could know."""
    ids = images.ids()
    return None if ids is None else [normalize_id(v) for v in ids]


def _image_files(images: "ImageSet") -> list[Path] | None:
    """The file of each row of ``images`` (a file set, or rows of one), else None."""
    if hasattr(images, "paths"):
        return list(images.paths)
    base, index = getattr(images, "base", None), getattr(images, "index", None)
    if base is None or index is None:
        return None
    files = _image_files(base)
    return None if files is None else [files[int(i)] for i in index]


def image_digests(images: "ImageSet") -> list[str] | None:
    """blake2b-128 (hex) of each row's image file bytes, in row order (what the data
    loaders fingerprint: :func:`~pytest_invariance.data.folder.files_fingerprint`); None
    for images that are not files. Reads every file (4 threads)."""
    files = _image_files(images)
    return None if files is None else _digest_files(files)


def _digest_files(files: Sequence[Path]) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    from ..data.folder import _content_digest

    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL
        return [d.hex() for d in pool.map(_content_digest, files, chunksize=64)]


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ShardMeta:
    """What a shard records about how its embeddings were made."""

    model_sha256: str | None
    layers: tuple[str, ...]
    pool: str | None
    preprocessing: dict[str, Any] | None
    model: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # ids, dataset, format, ...
    unrecorded: tuple[str, ...] = ()  # of PROVENANCE, what the metadata does not say

    def to_metadata(self) -> dict[bytes, bytes]:
        meta = {"format": FORMAT_VERSION, "model_sha256": self.model_sha256 or "", "layers": json.dumps(list(self.layers)),
                "pool": self.pool or "", "preprocessing": "" if self.preprocessing is None else json.dumps(self.preprocessing, sort_keys=True),
                "model": self.model or "", **self.extra}
        return {(PREFIX + k).encode(): str(v).encode() for k, v in meta.items()}

    @classmethod
    def from_schema(cls, schema: "pa.Schema", where: str) -> "ShardMeta":
        raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()
               if k.decode().startswith(PREFIX)}
        meta = {k[len(PREFIX):]: v for k, v in raw.items()}
        vectors = [f.name for f in schema if f.name != ID_COLUMN and _is_vector(f.type)]
        try:
            layers = tuple(json.loads(meta["layers"])) if meta.get("layers") else tuple(vectors)
            pre = json.loads(meta["preprocessing"]) if meta.get("preprocessing") else None
        except ValueError as exc:
            raise DataError(f"{where}: metadata {PREFIX}layers/preprocessing is not JSON ({exc})") from None
        if pre is not None:
            pre = _canonical_preprocess(pre, where)
        missing = [name for name in layers if name not in vectors]
        if missing:
            kind = {f.name: f.type for f in schema}.get(missing[0])
            have = f"it is {kind}, not a list of numbers" if kind is not None else "the file has no column of that name"
            raise DataError(f"{OPT_EMBEDDINGS}: {where}: metadata names layer {missing[0]!r} but {have}; vector "
                            f"columns: {vectors or 'none'}")
        if not layers:
            raise DataError(f"{OPT_EMBEDDINGS}: {where}: no vector column (a fixed_size_list, list or fixed_shape_tensor "
                            f"of floats or integers) besides {ID_COLUMN!r}; columns: "
                            f"{', '.join(f'{f.name} ({f.type})' for f in schema)}")
        extra = {k: v for k, v in meta.items() if k not in ("model_sha256", "layers", "pool", "preprocessing", "model")}
        said = {"model_sha256": meta.get("model_sha256"), "layers": meta.get("layers"), "pool": meta.get("pool"),
                "preprocessing": pre, DIGEST_COLUMN: DIGEST_COLUMN in schema.names}
        unrecorded = tuple(k for k in PROVENANCE if not said[k])
        return cls(meta.get("model_sha256") or None, layers, meta.get("pool") or None, pre, meta.get("model") or None,
                   extra, unrecorded)

    def identity(self) -> tuple[Any, ...]:
        return (self.model_sha256, self.layers, self.pool, json.dumps(self.preprocessing, sort_keys=True),
                DIGEST_COLUMN in self.unrecorded)


def _canonical_preprocess(pre: Any, where: str) -> dict[str, Any]:
    from ._preprocess import Preprocess

    try:
        return canonical(Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()}).to_dict())
    except (TypeError, AttributeError, InvalidParameterError) as exc:
        raise DataError(f"{where}: metadata {PREFIX}preprocessing {pre!r} is not a preprocessing ({exc})") from None


def canonical(d: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip so tuples and lists compare equal."""
    return json.loads(json.dumps(d, sort_keys=True))  # type: ignore[no-any-return]


def _is_list(t: "pa.DataType") -> bool:
    pa = require_pyarrow()
    if isinstance(t, pa.BaseExtensionType):  # e.g. arrow.fixed_shape_tensor
        t = t.storage_type
    return bool(pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t))


def _is_vector(t: "pa.DataType") -> bool:
    """A list of numbers: floats, or integers (quantised embeddings; read as float32)."""
    pa = require_pyarrow()
    if isinstance(t, pa.BaseExtensionType):
        t = t.storage_type
    return _is_list(t) and (pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type))


def check_vectors(path: Path, layers: Sequence[str], ids: Sequence[str], batch_rows: int = 65536) -> dict[str, int]:
    """Width of each layer's vectors in shard ``path``, read ``batch_rows`` rows at a time
    (pyarrow compute on each batch; no layer is held whole).

    Raises DataError, one line naming the file, the column, how many rows and example
    ids, for: null vectors, null values in a vector, vectors of different lengths, NaN or Inf,
    or values that are Inf once read as float32 (|x| > 3.4e38 in a float64 column).
    ``ids``: the shard's ids in row order (for the examples).
    """
    pa = require_pyarrow()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    widths: dict[str, int] = {}
    pf = pq.ParquetFile(path)
    for layer in layers:
        first, width = 0, None
        for batch in pf.iter_batches(batch_size=batch_rows, columns=[layer]):
            arr = batch.column(0)
            if isinstance(arr, pa.ExtensionArray):
                arr = arr.storage
            faults = []
            null = np.flatnonzero(np.asarray(arr.is_null()))
            if null.size:
                faults.append(("null vectors", null))
            lengths = np.asarray(pc.list_value_length(arr).fill_null(-1), dtype=np.int64)
            width = int(lengths[lengths >= 0][0]) if width is None and (lengths >= 0).any() else width
            ragged = np.flatnonzero((lengths >= 0) & (lengths != width))
            if ragged.size:
                faults.append((f"vectors whose length is not {width} (lengths "
                               f"{sorted(set(lengths[ragged].tolist()))[:5]})", ragged))
            values = pc.list_flatten(arr)
            parent = np.asarray(pc.list_parent_indices(arr))
            if values.null_count:
                faults.append(("vectors with null values", np.unique(parent[np.asarray(values.is_null())])))
            # checked as the reader reads them (to_matrix, float32): a float64 1e39 is finite
            # in the file and Inf there
            read = pc.is_finite(pc.cast(values, pa.float32(), safe=False)).fill_null(True)
            if not pc.all(read).as_py():
                stored = np.asarray(pc.is_finite(pc.cast(values, pa.float64())).fill_null(True))
                faults.append(("vectors with NaN or Inf", np.unique(parent[~stored])) if not stored.all() else
                              ("vectors with values beyond float32's range (|x| > 3.4e38; the audit reads vectors "
                               "as float32, where they are Inf)", np.unique(parent[~np.asarray(read)])))
            if faults:
                what, rows = faults[0]
                raise DataError(f"{OPT_EMBEDDINGS}: {path}: column {layer!r} has {rows.size} {what} in rows "
                                f"{first}-{first + len(arr) - 1} (e.g. ids {_examples([ids[first + r] for r in rows])}); "
                                "every row needs one finite vector of one length per layer: repair or re-extract "
                                "the shards")
            first += len(arr)
        if width is not None:
            widths[layer] = width
    return widths


def to_matrix(column: "pa.ChunkedArray | pa.Array", name: str) -> np.ndarray:
    """A vector column -> float32 ``[rows, D]``; a null, ragged or non-finite vector is an error."""
    pa = require_pyarrow()
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    if arr.null_count:
        raise EmbeddingError(f"column {name!r} has {arr.null_count} null vectors")
    n = len(arr)
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
    else:
        lengths = np.asarray(arr.value_lengths())
        d = int(lengths[0]) if n else 0
        if n and (lengths != d).any():
            raise EmbeddingError(f"column {name!r} holds vectors of lengths {sorted(set(lengths.tolist()))[:5]}; "
                                 "every vector of a layer must have the same length")
    values = arr.flatten()
    if values.null_count:
        raise EmbeddingError(f"column {name!r} has {values.null_count} null values inside its vectors")
    out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(n, d)
    return out


# ----------------------------------------------------------------------------- writing


def write_shard(path: str | os.PathLike[str], ids: Sequence[str], vectors: dict[str, np.ndarray],
                meta: ShardMeta, digests: Sequence[str] | None = None) -> Path:
    """Write one shard atomically (temp file renamed into place): ``id``, one
    ``fixed_size_list<float32>`` column per layer of ``vectors`` ([rows, D] each), then
    ``image_digest`` (``digests``, one per id: :func:`image_digests`; omitted when None)."""
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    from .._io import atomic_write_bytes

    columns: dict[str, Any] = {ID_COLUMN: pa.array([str(i) for i in ids], pa.string())}
    for layer, X in vectors.items():
        X = np.ascontiguousarray(X, dtype=np.float32)
        columns[layer] = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])
    if digests is not None:  # last: the vector columns keep their places after ``id``
        columns[DIGEST_COLUMN] = pa.array(list(digests), pa.string())
    table = pa.table(columns).replace_schema_metadata(meta.to_metadata())
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


# ----------------------------------------------------------------------------- reading


def shard_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{OPT_EMBEDDINGS} {path}: no such file or folder")
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    if not files:
        raise DataError(f"{OPT_EMBEDDINGS} {path}: the folder holds no *.parquet shard")
    return files


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:_EXAMPLES])
    return shown + (", ..." if len(values) > _EXAMPLES else "")


class ParquetEmbeddings:
    """Embeddings read from Parquet shards, looked up by image id.

    Parameters
    ----------
    path : str or Path
        One ``.parquet`` file or a folder of shards (searched recursively).

    Attributes
    ----------
    meta : ShardMeta
        What every shard records (model sha256, layers, pool, preprocessing).
    files : list of Path
    n_rows : int

    Raises
    ------
    DataError
        No shard; unreadable file; shards that record different metadata; an ``id``
        column missing or with nulls; an id present more than once (counts and examples);
        a null, ragged, NaN or Inf vector, or a layer of another width in another shard
        (:func:`check_vectors`: every vector is read once, a batch at a time).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = write_shard(os.path.join(d, "a.parquet"), ["x.jpg", "y.jpg"], {"emb": np.eye(2, dtype=np.float32)},
    ...                 ShardMeta("ab" * 32, ("emb",), "auto", None))
    >>> ParquetEmbeddings(d).lookup(["y.jpg"], "emb")
    array([[0., 1.]], dtype=float32)
    """

    def __init__(self, path: str | os.PathLike[str]):
        require_pyarrow()
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.files = shard_files(self.path)
        metas, ids, file_of, digests = [], [], [], []
        self.widths: dict[str, int] = {}  # layer -> vector length, the same in every shard
        self._width_from: dict[str, Path] = {}
        for i, f in enumerate(self.files):
            try:
                schema = pq.read_schema(f)
                if ID_COLUMN not in schema.names:
                    raise DataError(f"{f}: no {ID_COLUMN!r} column; columns: {schema.names}")
                col = pq.read_table(f, columns=[ID_COLUMN]).column(ID_COLUMN)
            except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
                raise DataError(f"{OPT_EMBEDDINGS}: {f} is not a readable Parquet file ({exc})") from None
            if col.null_count:
                raise DataError(f"{f}: {col.null_count} rows have a null {ID_COLUMN!r}")
            metas.append(ShardMeta.from_schema(schema, str(f)))
            if DIGEST_COLUMN in schema.names:
                digests.extend(pq.read_table(f, columns=[DIGEST_COLUMN]).column(DIGEST_COLUMN).to_pylist())
            if metas[-1].identity() != metas[0].identity():
                raise DataError(f"{OPT_EMBEDDINGS}: shards disagree: {self.files[0].name} records {self._says(metas[0])} "
                                f"but {f.name} records {self._says(metas[-1])}; every shard must come from one extraction")
            shard_ids = [normalize_id(v) for v in col.to_pylist()]
            # Every vector is checked now, one batch at a time: a bad row is one start-up error, not a test's.
            for layer, width in check_vectors(f, metas[-1].layers, shard_ids).items():
                if self.widths.setdefault(layer, width) != width:
                    raise DataError(f"{OPT_EMBEDDINGS}: {f}: column {layer!r} holds {width}-wide vectors but "
                                    f"{self._width_from[layer].name} holds {self.widths[layer]}-wide ones (e.g. id "
                                    f"{shard_ids[0]!r}); every shard must come from one extraction")
                self._width_from.setdefault(layer, f)
            ids.extend(shard_ids)
            file_of.append(np.full(len(col), i, dtype=np.int32))
        self.meta = metas[0]
        self._ids = np.asarray(ids, dtype=object)
        self._file = np.concatenate(file_of)
        self._row = np.concatenate([np.arange(len(a)) for a in file_of])
        self.n_rows = len(self._ids)
        self._index = self._build_index()
        # The image each row was made from (None: not recorded, see check_provenance).
        # Hex is compared case-blind; a null cell records no digest (not a different one).
        self._digests = (np.asarray([d.strip().lower() if isinstance(d, str) and d.strip() else None for d in digests],
                                    dtype=object) if DIGEST_COLUMN not in self.meta.unrecorded else None)
        self._seen = np.zeros(self.n_rows, dtype=bool)  # rows whose image was compared
        self._blank = np.zeros(self.n_rows, dtype=bool)  # rows joined with no digest to compare
        self._differ = np.zeros(self.n_rows, dtype=bool)  # ... and differed (accepted by --invariance-embeddings-unverified)

    @staticmethod
    def _says(m: ShardMeta) -> str:
        return (f"model_sha256={m.model_sha256} layers={list(m.layers)} pool={m.pool} preprocessing={m.preprocessing} "
                f"{DIGEST_COLUMN}={'no' if DIGEST_COLUMN in m.unrecorded else 'yes'}")

    def _build_index(self) -> dict[str, int]:
        import pandas as pd

        counts = pd.Series(self._ids).value_counts()
        dup = counts[counts > 1]
        if len(dup):
            raise DataError(f"{OPT_EMBEDDINGS} {self.path}: {len(dup)} ids occur more than once "
                            f"({int(dup.sum())} rows of {self.n_rows}), e.g. {_examples(list(dup.index))}; "
                            "each image must have exactly one row")
        return {v: i for i, v in enumerate(self._ids)}

    # -- identity ---------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.meta.model or (self.path.stem if self.path.is_file() else self.path.name)

    @cached_property
    def content_digest(self) -> str:
        """blake2b-128 hex of every shard's bytes, in path order (names, sizes and bytes).

        The version of shards that record no model sha256: two sets of such shards are two
        versions, so ``--invariance-baseline latest`` compares them instead of taking the
        second for a re-run of the first. About 1 s per GB, read once per process.
        """
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        for f in self.files:
            h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()

    def describe(self, unverified: bool = False) -> dict[str, Any]:
        """``run.embeddings_source`` of results.json; ``unverified``: --invariance-embeddings-unverified.

        Without that option a row made from other image bytes stops the run, so the rows
        joined match. With it, only the rows this process joined were compared: under
        pytest-xdist the workers join and the controller writes this, so when it compared
        none, ``images_differ`` is None (unknown) and the run is not called verified.
        """
        checked = bool(self._seen.any()) or self._digests is None
        differ = self.images_differ if checked or not unverified else None
        return {"kind": "parquet", "path": str(self.path), "shards": len(self.files), "rows": self.n_rows,
                "model": self.model_name, "model_sha256": self.meta.model_sha256, "layers": list(self.meta.layers),
                "pool": self.meta.pool, "preprocessing": self.meta.preprocessing, **self.meta.extra,
                "verified": not self.meta.unrecorded and differ == 0 and not self._blank.any(),
                "unrecorded": list(self.meta.unrecorded), "images_without_digest": int(self._blank.sum()),
                "images_differ": differ}

    @property
    def images_differ(self) -> int:
        """Rows joined although their image's bytes differ from those the shards record
        (accepted by --invariance-embeddings-unverified)."""
        return int(self._differ.sum())

    def check_provenance(self, *, unverified: bool, layers_named: bool) -> None:
        """Refuse shards whose metadata does not say how their vectors were made, unless the
        user accepts that (``unverified``: --invariance-embeddings-unverified). Unrecorded
        layers are also accepted when the user names the columns (``layers_named``: --layer)."""
        missing = [k for k in self.meta.unrecorded if not (k == "layers" and layers_named)]
        if missing and not unverified:
            meta = [PREFIX + k for k in missing if k != DIGEST_COLUMN]
            where = "; ".join((["metadata " + ", ".join(meta)] if meta else [])
                              + ([f"column {DIGEST_COLUMN}"] if DIGEST_COLUMN in missing else []))
            raise InvalidParameterError(
                f"{OPT_EMBEDDINGS} {self.path}: the shards do not record {', '.join(missing)} ({where}), so the "
                f"audit cannot tell which model, layer, pool, preprocessing or images made the vectors; write that "
                f"(docs/scale.md), re-extract with pytest-invariance extract, or pass {OPT_UNVERIFIED} to audit "
                f"them as they are"
                + (" (or name the columns with --layer)" if "layers" in missing else ""))

    def check_images(self, images: "ImageSet", what: str = "", *, unverified: bool = False) -> np.ndarray:
        """:meth:`positions` of ``images``' ids, after checking each row was made from the
        same image file bytes (``image_digest``): shards of a data folder's old version under
        the same names are refused in one line, unless ``unverified`` (the user joins on ids
        alone; the rows that differ are counted in :meth:`describe`). Each row is compared once
        per process (its file read once more)."""
        ids = image_ids(images) or []
        pos = self.positions(ids, what)
        files = _image_files(images)
        todo = np.flatnonzero(~self._seen[pos])
        if self._digests is None or files is None or not todo.size:
            return pos
        blank = todo[np.equal(self._digests[pos[todo]], None)]
        if blank.size and not unverified:
            raise InvalidParameterError(
                f"{OPT_EMBEDDINGS} {self.path}: {blank.size} of {len(ids)} rows{' of ' + what if what else ''} record "
                f"no {DIGEST_COLUMN} (an empty cell, e.g. {_examples([ids[i] for i in blank])}), so their images "
                f"cannot be checked; re-run pytest-invariance extract on this data, or pass {OPT_UNVERIFIED} to "
                "join on ids alone")
        self._seen[pos[blank]] = True
        self._blank[pos[blank]] = True  # with the option: joined on ids, neither matched nor differing
        todo = np.setdiff1d(todo, blank)
        have = np.asarray(_digest_files([files[i] for i in todo]), dtype=object)
        differ = todo[self._digests[pos[todo]] != have]
        if differ.size and not unverified:
            raise InvalidParameterError(
                f"{OPT_EMBEDDINGS} {self.path}: {differ.size} of {len(ids)} images{' of ' + what if what else ''} are "
                f"not the images the shards were made from (their file bytes differ, e.g. "
                f"{_examples([ids[i] for i in differ])}); re-run pytest-invariance extract on this data, or pass "
                f"{OPT_UNVERIFIED} to join on ids alone")
        self._seen[pos[todo]] = True
        self._differ[pos[differ]] = True
        return pos

    # -- reading ----------------------------------------------------------------------

    def positions(self, ids: Sequence[str], what: str = "") -> np.ndarray:
        """Row of each id over all shards; ids without a row are one error with counts and examples."""
        ids = [normalize_id(i) for i in ids]
        pos = np.fromiter((self._index.get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        missing = np.flatnonzero(pos < 0)
        if missing.size:
            raise DataError(f"{OPT_EMBEDDINGS} {self.path}: {missing.size} of {len(ids)} images{' of ' + what if what else ''} "
                            f"have no row (e.g. {_examples([ids[i] for i in missing])}); the shards hold "
                            f"{self.n_rows} ids (e.g. {_examples(list(self._ids[:_EXAMPLES]))}); "
                            "extract embeddings for every image the suite audits")
        return pos

    def width(self, layer: str) -> int:
        """Length of ``layer``'s vectors (checked equal over all shards when opened)."""
        self.check_layer(layer)
        if layer not in self.widths:
            raise DataError(f"{OPT_EMBEDDINGS} {self.path}: the shards hold no rows")
        return self.widths[layer]

    def lookup(self, ids: Sequence[str], layer: str, what: str = "") -> np.ndarray:
        """float32 ``[len(ids), D]`` of ``layer`` in the order of ``ids``, one shard in memory at a time."""
        import pyarrow.parquet as pq

        self.check_layer(layer)
        ids = [normalize_id(i) for i in ids]
        pos = self.positions(ids, what)
        out: np.ndarray | None = None
        files = self._file[pos]
        for fi in np.unique(files):
            sel = np.flatnonzero(files == fi)
            X = to_matrix(pq.read_table(self.files[fi], columns=[layer]).column(layer), layer)[self._row[pos[sel]]]
            if out is None:
                out = np.empty((len(ids), X.shape[1]), dtype=np.float32)
            out[sel] = X
        if out is None:
            raise EmbeddingError(f"{what or 'images'}: no images to look up")
        return out  # finite: every vector was checked when the shards were opened

    def iter_batches(self, layer: str, max_rows: int | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
        """``(ids, float32 [<= max_rows, D])`` over all shards in file order; the memory
        bound of the streamed fits (``fit_stream`` of the regression and MAV probes)."""
        import pyarrow.parquet as pq

        self.check_layer(layer)
        for f in self.files:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=max_rows or 65536, columns=[ID_COLUMN, layer]):
                ids = [normalize_id(v) for v in batch.column(0).to_pylist()]
                yield ids, to_matrix(batch.column(1), layer)

    def check_layer(self, layer: str) -> None:
        if layer not in self.meta.layers:
            raise InvalidParameterError(f"--layer {layer}: {self.path} has no vector column {layer!r}; "
                                        f"its layers: {', '.join(self.meta.layers)}")

    def check_run(self, *, sha256: str | None, layer: str, pool: str, preprocessing: dict[str, Any] | None) -> None:
        """Refuse, in one line naming the option, shards made another way than this run asks.

        ``sha256``: the --model's (None without --model: the shards are the model).
        ``preprocessing``: the run's (None: not compared). A field the shards do not record
        is not compared: :meth:`check_provenance` refuses such shards at start-up unless the
        user accepts them unverified.
        """
        m = self.meta
        if sha256 is not None and m.model_sha256 is not None and m.model_sha256 != sha256:
            raise InvalidParameterError(
                f"{OPT_EMBEDDINGS} {self.path}: the shards record model sha256 {m.model_sha256} but "
                f"--model has {sha256}; pass the --model they were extracted from, or drop --model")
        self.check_layer(layer)
        if m.pool is not None and (pool != "auto" and m.pool != pool or sha256 is not None and m.pool != pool):
            raise InvalidParameterError(f"--invariance-pool {pool}: the shards of {self.path} were pooled with "
                                        f"{m.pool}; pass --invariance-pool {m.pool}")
        if preprocessing is not None and m.preprocessing is not None and m.preprocessing != canonical(preprocessing):
            raise InvalidParameterError(
                f"--invariance-preprocess: the shards of {self.path} record preprocessing {m.preprocessing} but this "
                f"run feeds {canonical(preprocessing)}; pass --invariance-preprocess to match, or re-extract")

    def default_layer(self) -> str:
        if len(self.meta.layers) > 1:
            raise InvalidParameterError(f"{OPT_EMBEDDINGS} {self.path} holds layers {', '.join(self.meta.layers)}; "
                                        "pick with --layer NAME (repeatable) or --invariance-layers all")
        return self.meta.layers[0]


@lru_cache(maxsize=4)
def open_embeddings(path: str) -> ParquetEmbeddings:
    """One reader per path and process (the id index is built once)."""
    return ParquetEmbeddings(path)


class ParquetModel:
    """Stands where an :class:`~pytest_invariance.models.Embedder` stands when the shards
    are the model (``--invariance-embeddings`` without ``--model``): it has the recorded
    identity and layers but cannot embed new images."""

    backend = "parquet"
    device = "none"
    provider = "none"
    input_shape: tuple[int | None, int | None, int | None] = (None, None, None)

    def __init__(self, source: ParquetEmbeddings):
        from ..models._contract import InputContract

        self.source = source
        self.path = str(source.path)
        self.name = source.model_name
        self.sha256 = source.meta.model_sha256 or "unrecorded"
        self.contract = InputContract(layout_source="precomputed embeddings")
        self.default_layer = source.meta.layers[-1]

    def layers(self) -> list[str]:
        return list(self.source.meta.layers)

    def trace_layers(self, batch: Any = None) -> list[tuple[str, tuple[int, ...]]]:
        """The recorded layers in forward order (what ``--invariance-layers`` globs select from)."""
        return [(name, ()) for name in self.source.meta.layers]

    def embed(self, batch: Any, layer: str, *, pool: str = "auto") -> np.ndarray:
        raise EmbeddingError(f"{OPT_EMBEDDINGS} {self.path}: precomputed embeddings cannot embed new images "
                             "(this suite makes its own); run it with --model instead")

    forward = embed

    def embed_many(self, batch: Any, layers: list[str], *, pool: str = "auto") -> dict[str, np.ndarray]:
        return {layers[0]: self.embed(batch, layers[0], pool=pool)}

    forward_many = embed_many

    def activation_layout(self, layer: str) -> str | None:
        return None
