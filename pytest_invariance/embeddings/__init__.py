"""Batched extraction, NaN/shape checks and the on-disk cache."""
from __future__ import annotations

from ._cache import EmbeddingCache, atomic_write_bytes, cache_key
from ._extract import extract, extract_layers, progress_wanted
from ._project import LayerProjection
from ._preprocess import Preprocess

__all__ = ["EmbeddingCache", "Preprocess", "atomic_write_bytes", "cache_key", "extract", "extract_layers", "progress_wanted", "LayerProjection"]
