"""On-disk embedding cache, keyed by everything that determines the numbers.

Layout: ``<dir>/<key>.npy`` (float32 [N, D]) and ``<key>.json`` (what the key was
made of, for humans). Writes go to a temp file in the same folder and are renamed
into place, so a reader never sees half a file; a per-key file lock makes pytest-xdist
workers that need the same embeddings compute them once.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .._io import atomic_write_bytes


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


class EmbeddingCache:
    """A folder of cached embeddings; ``hits`` and ``misses`` count this process's lookups."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        if self.dir.exists():
            shutil.rmtree(self.dir)

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.npy"

    def load(self, key: str) -> np.ndarray | None:
        p = self._path(key)
        if not p.exists():
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError):
            p.unlink(missing_ok=True)  # unreadable entry: recompute rather than fail
            return None
        return arr

    def store(self, key: str, arr: np.ndarray, meta: dict[str, Any]) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        atomic_write_bytes(self._path(key), buf.getvalue())
        atomic_write_bytes(self.dir / f"{key}.json", json.dumps(meta, indent=1, default=str).encode())

    @contextmanager
    def locked(self, key: str) -> Iterator[None]:
        from filelock import FileLock

        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / f"{key}.lock")):
            yield
