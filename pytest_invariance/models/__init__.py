"""Model files -> :class:`Embedder` (ONNX via onnxruntime, torch via hooks)."""
from __future__ import annotations

import re
from pathlib import Path

from ._base import Embedder
from ._common import require_file

__all__ = ["Embedder", "load_model"]


def load_model(spec: str, *, device: str = "auto", weights: str | None = None,
               trust_pickle: bool = False) -> Embedder:
    """Load ``spec`` (a ``.onnx``/``.pt``/``.pt2`` path or ``module:factory``) as an Embedder.

    Examples
    --------
    >>> load_model("missing.onnx")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ModelLoadError: model file not found: missing.onnx ...
    """
    is_factory = bool(re.fullmatch(r"[\w.]+:\w+", spec)) and not Path(spec).exists()
    if not is_factory:
        require_file(spec)
    if not is_factory and Path(spec).suffix.lower() == ".onnx":
        from ._onnx import OnnxEmbedder

        return OnnxEmbedder(spec, device=device)
    from ._torch import TorchEmbedder

    return TorchEmbedder(spec, factory=is_factory, device=device, weights=weights, trust_pickle=trust_pickle)
