"""On-disk cache of a study's figures, keyed by everything that determines them.

A study's figures depend on its input arrays (embeddings, labels), its protocol, the
seed, the plugin version and the code that computes them. The key is a digest of all
of these: of the arrays' bytes (so re-extracted embeddings that differ in one bit miss),
and of every ``.py`` file of the package (so an edit to any probe misses too). Entries
are JSON (no pickle), written atomically; Estimates and arrays round-trip exactly.
Layout: ``<cache dir>/figures/<key>.json``.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import __version__
from ._io import atomic_write_bytes


def array_digest(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


@lru_cache(maxsize=None)
def source_digest(*subpackages: str) -> str:
    """sha256 over the package's Python sources, so that no cached result outlives a code
    change; with ``subpackages`` (e.g. ``"data", "embeddings", "models"``) over theirs only."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    trees = [root / s for s in subpackages] if subpackages else [root]
    for p in sorted(p for tree in trees for p in tree.rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def figure_key(parts: Mapping[str, Any]) -> dict[str, Any]:
    """The full key: the study's ``parts`` plus plugin version and source digest."""
    return {**parts, "version": __version__, "source": source_digest()}


def _encode(obj: Any) -> Any:
    from .probes._estimate import Estimate

    if isinstance(obj, Estimate):
        return {"__estimate__": _encode(obj.to_dict())}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v) for v in obj]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise TypeError("figure cache: dict keys must be strings")
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    raise TypeError(f"figure cache cannot store {type(obj).__name__}")


def _decode(obj: Any) -> Any:
    from .probes._estimate import Estimate

    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__estimate__" in obj:
        return Estimate(**_decode(obj["__estimate__"]))
    if "__ndarray__" in obj:
        return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if "__tuple__" in obj:
        return tuple(_decode(v) for v in obj["__tuple__"])
    return {k: _decode(v) for k, v in obj.items()}


class FigureCache:
    """A folder of study results; ``hits`` and ``misses`` count this process's lookups."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.hits = 0
        self.misses = 0

    def _path(self, key: Mapping[str, Any]) -> Path:
        text = json.dumps(key, sort_keys=True, default=str)
        return self.dir / f"{hashlib.sha256(text.encode()).hexdigest()[:40]}.json"

    def load(self, key: Mapping[str, Any]) -> Any:
        """The stored value, or None (also for an unreadable entry, which is then recomputed)."""
        from .errors import warn

        p = self._path(key)
        if not p.exists():
            self.misses += 1
            return None
        try:
            entry = json.loads(p.read_text())
            # Like the embedding cache: an edited or damaged entry must never change a verdict.
            if entry["sha256"] != _value_digest(entry["value"]):
                raise ValueError("its figures do not match their sha256")
            value = _decode(entry["value"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            warn(f"figure cache entry {p.name} is damaged ({exc}); recomputing it")
            p.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def store(self, key: Mapping[str, Any], value: Any) -> None:
        encoded = _encode(value)
        entry = {"key": key, "value": encoded, "sha256": _value_digest(encoded)}
        atomic_write_bytes(self._path(key), json.dumps(entry, default=str).encode())


def _value_digest(encoded: Any) -> str:
    return hashlib.sha256(json.dumps(encoded, sort_keys=True, default=str).encode()).hexdigest()
