"""On-disk embedding cache, keyed by everything that determines the numbers.

Layout: ``<dir>/<key>.npy`` ([N, D] as extracted: float32, or float16 where the caller
asked for it) or, when at least an eighth of the values are zero (post-ReLU features are
~60% zeros), ``<key>.npz`` holding a packed bit mask of the non-zeros and their values in
row order: lossless, 2.4x smaller for LeNet's ip1. ``<key>.json`` records what the key was
made of, plus the entry's ``shape``, ``dtype`` and the ``sha256`` of the file's bytes.
Writes go to a temp file in the same folder and are renamed into place, so a reader
never sees half a file; a per-key file lock makes pytest-xdist workers that need the
same embeddings compute them once.

Every load is verified against the record: an entry that is empty, truncated, of another
shape or dtype, non-finite, without a record, or whose bytes changed is deleted and
recomputed, with a one-line :class:`~pytest_invariance.errors.InvarianceWarning`, so a
damaged cache can never change a figure. Temp files of interrupted writes are removed
when the cache is opened.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._arrays import all_finite
from .._io import atomic_write_bytes, atomic_write_with, remove_stale_temps
from ..errors import warn
from ..models._common import sha256_file


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


class _NonFinite(ValueError):
    pass


def _read(p: Path) -> np.ndarray:
    """The entry's array; raises _NonFinite when it holds a NaN or Inf (a masked entry's
    zeros are finite, so only its stored values are scanned, before they are spread out)."""
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            values = z["values"]
            if not all_finite(values):
                raise _NonFinite
            return unpack_zeros(z["mask"], values, tuple(int(v) for v in z["shape"]))
    arr = np.load(p, allow_pickle=False)
    if not all_finite(arr):
        raise _NonFinite
    return arr  # type: ignore[no-any-return]


_ROWS = 16_384  # rows unpacked at a time: no full-size boolean temporaries


def unpack_zeros(mask: np.ndarray, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of the sparse layout: zeros everywhere but where ``mask`` (packed bits) is set.

    Unpacked a block of rows at a time: no boolean temporary of the whole array's size.
    """
    out = np.zeros(shape, dtype=values.dtype)
    if len(mask) != shape[0]:
        raise ValueError(f"mask has {len(mask)} rows for shape {shape}")
    width = shape[1]
    starts = range(0, shape[0], _ROWS)
    # Set bits per block; a bit set in a row's padding is counted here but not unpacked
    # below, which the per-block check then refuses.
    counts = [int(np.bitwise_count(mask[s: s + _ROWS]).sum(dtype=np.int64)) for s in starts]
    first = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    if first[-1] != len(values):
        raise ValueError(f"mask sets {first[-1]} values, {len(values)} stored")

    def one_block(i: int) -> None:
        s = starts[i]
        bits = np.unpackbits(mask[s: s + _ROWS], axis=1, count=width).view(bool)
        if np.count_nonzero(bits) != counts[i]:
            raise ValueError(f"mask sets bits past the row width of {width} in rows {s}-{s + len(bits) - 1}")
        # np.place fills the set positions in order from one sequential pass: 7x faster than
        # a fancy assignment through np.flatnonzero's int64 positions (350,000 x 500 float16
        # at 21% non-zero: 0.9 s against 6.5 s)
        np.place(out[s: s + _ROWS], bits, values[first[i]: first[i + 1]])

    for i in range(len(starts)):  # np.place holds the GIL: threads would only take turns
        one_block(i)
    return out


def mask_zeros(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The sparse layout of a 2-D array, ``(packed bit mask of the non-zeros [n, ceil(d/8)],
    non-zero values in row order)``, or None when more than 7/8 of the values are non-zero.
    Built in blocks of rows: no boolean temporary of the array's size."""
    n, d = arr.shape
    counts = [int(np.count_nonzero(arr[s: s + _ROWS])) for s in range(0, n, _ROWS)]
    if arr.size == 0 or sum(counts) > 7 / 8 * arr.size:
        return None
    mask = np.empty((n, (d + 7) // 8), dtype=np.uint8)
    values = np.empty(sum(counts), dtype=arr.dtype)
    done = 0
    for s, k in zip(range(0, n, _ROWS), counts):
        nonzero = arr[s: s + _ROWS] != 0
        mask[s: s + _ROWS] = np.packbits(nonzero, axis=1)
        values[done: done + k] = arr[s: s + _ROWS][nonzero]
        done += k
    return mask, values


class EmbeddingCache:
    """A folder of cached embeddings; ``hits`` and ``misses`` count this process's lookups."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # entries that failed verification and were recomputed
        if self.dir.is_dir():
            remove_stale_temps(self.dir, recursive=True)  # also figures/ and other entries below

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def _path(self, key: str, sparse: bool = False) -> Path:
        return self.dir / f"{key}.{'npz' if sparse else 'npy'}"

    def _file(self, key: str) -> Path:
        """The entry's data file: the masked layout if there is one, else the dense one."""
        p = self._path(key, sparse=True)
        return p if p.exists() else self._path(key)

    def load(self, key: str, rows: int | None = None) -> np.ndarray | None:
        """The verified entry, or None (absent, or damaged: then deleted, with a warning).

        ``rows``: the number of rows the caller expects (the image count).
        """
        p = self._file(key)
        if not p.exists():
            return None
        problem, arr = self._verify(key, p, rows)
        if problem is None:
            return arr
        self.rejected += 1
        warn(f"embedding cache entry {p.name} is damaged ({problem}); recomputing it")
        p.unlink(missing_ok=True)
        (self.dir / f"{key}.json").unlink(missing_ok=True)
        return None

    def record(self, key: str) -> dict[str, Any]:
        """The JSON record of an entry (what its key was made of), ``{}`` when unreadable."""
        try:
            meta = json.loads((self.dir / f"{key}.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def _verify(self, key: str, p: Path, rows: int | None) -> tuple[str | None, np.ndarray | None]:
        try:
            meta = json.loads((self.dir / f"{key}.json").read_text())
            size = p.stat().st_size
        except (OSError, ValueError):
            return "no readable record of its shape and hash", None
        if size == 0:
            return "empty file", None
        if not isinstance(meta, dict) or "sha256" not in meta:
            return "no record of its shape and hash", None
        if size != meta.get("bytes") or sha256_file(p) != meta["sha256"]:
            return f"{size} bytes whose sha256 does not match the record", None
        try:
            arr = _read(p)
        except _NonFinite:
            return "non-finite values", None
        except (ValueError, OSError, EOFError, KeyError) as exc:
            return f"unreadable: {exc}", None
        if list(arr.shape) != meta.get("shape") or str(arr.dtype) != meta.get("dtype"):
            return f"shape {list(arr.shape)} {arr.dtype}, record says {meta.get('shape')} {meta.get('dtype')}", None
        if arr.ndim != 2 or (rows is not None and len(arr) != rows):
            return f"shape {list(arr.shape)}, expected [{rows}, D]", None
        return None, arr

    def store(self, key: str, arr: np.ndarray, meta: dict[str, Any]) -> None:
        arr = np.ascontiguousarray(arr)
        if arr.dtype not in (np.float16, np.float32):
            arr = arr.astype(np.float32)
        masked = mask_zeros(arr) if arr.ndim == 2 else None
        path = self._path(key, masked is not None)
        # The record goes last: an entry without one is never trusted. The other layout's
        # file of the same key (an older entry) goes first, so it cannot shadow this one.
        (self.dir / f"{key}.json").unlink(missing_ok=True)
        self._path(key, masked is None).unlink(missing_ok=True)
        # Streamed to the file (not through an in-memory buffer): a 350,000 x 500 training
        # set's entry is ~150 MB that need not be held beside the array.
        if masked is not None:
            atomic_write_with(path, lambda f: np.savez(f, mask=masked[0], values=masked[1], shape=np.array(arr.shape)))
        else:
            atomic_write_with(path, lambda f: np.save(f, arr, allow_pickle=False))
        record = {**meta, "shape": list(arr.shape), "dtype": str(arr.dtype), "bytes": path.stat().st_size,
                  "sha256": sha256_file(path), "layout": "dense" if masked is None else "masked"}
        atomic_write_bytes(self.dir / f"{key}.json", json.dumps(record, indent=1, default=str).encode())

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / f"{key}.lock")):
            yield
