"""Helpers shared by the model backends."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import EmbeddingError, LayerNotFoundError, ModelLoadError
from ._identity import sha256_file  # noqa: F401  (re-exported: plugin.py imports it from here)


def require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model file not found: {p} (check --model; a relative path is taken from the folder where pytest was started)")
    if not p.is_file():
        raise ModelLoadError(f"--model {p} is a directory, not a model file (.onnx, .pt, .pt2)")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"model file {p} is empty (0 bytes); re-export or re-download it")
    return p


def unknown_layer(layer: str, available: list[str], model: str) -> LayerNotFoundError:
    import difflib

    close = difflib.get_close_matches(layer, available, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(available[:40]) + (f", ... ({len(available)} in all)" if len(available) > 40 else "")
    return LayerNotFoundError(f"layer {layer!r} is not in {model}.{hint} Available layers: {shown}")


def default_layer(embedder: "object", option: str = "--layer") -> str:
    """The layer read when none is named: the model's output. A graph with several outputs
    (``embedding, logits`` in either order) is refused, naming them: reading the first
    would audit whichever the exporter happened to list first."""
    shapes = getattr(embedder, "output_shapes", lambda: {})()
    if len(shapes) > 1:
        shown = ", ".join(f"{n!r} [{', '.join('?' if d is None else str(d) for d in dims)}]" for n, dims in shapes.items())
        raise LayerNotFoundError(f"{getattr(embedder, 'path', 'the model')} has {len(shapes)} outputs ({shown}); "
                                 f"which one is the embedding is not known: name it with {option} NAME")
    return embedder.default_layer  # type: ignore[attr-defined, no-any-return]


def check_batch(batch: "np.ndarray | object", input_shape: tuple[int | None, ...], model: str) -> None:
    """Raise InputShapeError unless ``batch`` is ``[N, C, H, W]`` matching the declared (C, H, W)."""
    shape = tuple(batch.shape)  # type: ignore[attr-defined]
    if len(shape) != 4:
        raise EmbeddingError(f"{model} expects images as [N, C, H, W]; got an array of shape {shape}")
    for got, want, what in zip(shape[1:], input_shape, ("channels", "height", "width")):
        if want is not None and got != want:
            from ..errors import InputShapeError

            raise InputShapeError(
                f"{model} expects input [N, {', '.join(str(s) if s else '?' for s in input_shape)}] "
                f"(C, H, W) but is fed {list(shape)} ({what} {got} != {want}); set the size/channels "
                "with --invariance-preprocess or select suites that fit the model"
            )


def split_call(layer: str) -> tuple[str, int | None]:
    """``'layer1.0.relu#2'`` -> ``('layer1.0.relu', 2)``; no ``#k`` -> index None."""
    name, sep, k = layer.rpartition("#")
    if not sep:
        return layer, None
    if not k.isdigit() or int(k) < 1:
        raise LayerNotFoundError(f"layer {layer!r}: the call index after '#' must be 1, 2, ... (the k-th call)")
    return name, int(k)


def names_layer(layer: str, known: "Iterable[str]") -> bool:
    """Whether ``layer`` is one of ``known`` or ``NAME#k`` of one: an exact name wins, so an
    ONNX tensor called ``relu#1`` (or ``a#b``) is that tensor, never a call index."""
    known = known if isinstance(known, (set, frozenset, dict)) else set(known)
    if layer in known:
        return True
    name, sep, k = layer.rpartition("#")
    return bool(sep) and k.isdigit() and int(k) >= 1 and name in known


def pick_call(outputs: list["object"], layer: str, index: int | None, model: str) -> "object":
    """The activation of the chosen call of a module that may run several times per forward."""
    name = layer.rpartition("#")[0] if "#" in layer else layer
    if not outputs:
        raise EmbeddingError(f"layer {name!r} of {model} did not run in the forward pass; choose another --layer")
    if index is None:
        if len(outputs) > 1:
            calls = ", ".join(f"{name}#{k}" for k in range(1, len(outputs) + 1))
            raise LayerNotFoundError(
                f"layer {name!r} of {model} runs {len(outputs)} times per forward; name one call with --layer: {calls}"
            )
        return outputs[0]
    if index > len(outputs):
        raise LayerNotFoundError(f"layer {name!r} of {model} runs {len(outputs)} time(s) per forward; "
                                 f"--layer {layer} asks for call {index}")
    return outputs[index - 1]
