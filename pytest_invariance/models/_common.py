"""Helpers shared by the model backends."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..errors import EmbeddingError, LayerNotFoundError, ModelLoadError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p} (check --model; a relative path is taken from the folder where pytest was started)")
    if not p.is_file():
        raise ModelLoadError(f"--model {p} is a directory, not a model file (.onnx, .pt, .pt2)")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model file {p} is empty (0 bytes); re-export or re-download it")
    return p


def to_embedding(out: np.ndarray, layer: str) -> np.ndarray:
    """Map a layer's activation to float32 [N, D].

    A 4-D map [N, C, h, w] is global-average-pooled over h, w (the usual read-out of
    a conv layer, and it keeps D = C instead of C*h*w); other ranks are flattened.
    """
    a = np.asarray(out)
    if a.ndim == 4:
        a = a.mean(axis=(2, 3))
    elif a.ndim == 1:
        a = a[:, None]
    elif a.ndim > 2:
        a = a.reshape(len(a), -1)
    return np.ascontiguousarray(a, dtype=np.float32)


def unknown_layer(layer: str, available: list[str], model: str) -> LayerNotFoundError:
    import difflib

    close = difflib.get_close_matches(layer, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(available[:40]) + (f", ... ({len(available)} in all)" if len(available) > 40 else "")
    return LayerNotFoundError(f"layer {layer!r} is not in {model}.{hint} Available layers: {shown}")


def check_batch(batch: "np.ndarray | object", input_shape: tuple[int | None, ...], model: str) -> None:
    if len(batch.shape) != 4:
        raise EmbeddingError(f"{model} expects images as [N, C, H, W]; got an array of shape {tuple(batch.shape)}")
    for got, want, what in zip(batch.shape[1:], input_shape, ("channels", "height", "width")):
        if want is not None and got != want:
            from ..errors import InputShapeError

            raise InputShapeError(
                f"{model} expects input [N, {', '.join(str(s) if s else '?' for s in input_shape)}] "
                f"but got images of shape {list(batch.shape)} ({what} {got} != {want}); "
                "set the suite's preprocessing (size/channels) to match the model"
            )
