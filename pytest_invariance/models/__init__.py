"""Model files -> :class:`Embedder` (ONNX via onnxruntime, torch via hooks)."""
from __future__ import annotations

from pathlib import Path

from ._base import Embedder
from ._common import require_file
from ._contract import LAYOUTS, InputContract
from ._identity import is_factory_spec
from ._pool import POOLS, pool_activation

__all__ = ["LAYOUTS", "POOLS", "Embedder", "InputContract", "is_factory_spec", "load_model", "pool_activation"]


def load_model(spec: str, *, device: str = "auto", weights: str | None = None, trust_pickle: bool = False,
               input_layout: str = "auto", layer_layout: str = "auto", input_batch: int | None = None) -> Embedder:
    """Load ``spec`` (a ``.onnx``/``.pt``/``.pt2`` path or ``package.module:factory``) as an Embedder.

    Parameters
    ----------
    input_layout, layer_layout : {"auto", "nchw", "nhwc"}
        Override what the model's declared shape / graph says about the axis order of
        its image input and of a 4-D layer read (``--invariance-input-layout``,
        ``--invariance-layer-layout``).
    input_batch : int, optional
        Feed the model exactly this many images per call (the last chunk padded): for a
        graph whose batch size was fixed at export although its input declares a dynamic
        one (``--invariance-input-batch``).

    Raises
    ------
    ModelLoadError, InputShapeError
        One line: the file is missing, unsafe or corrupt, or its input is not one image batch.

    Examples
    --------
    >>> load_model("missing.onnx")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ModelLoadError: model file not found: missing.onnx ...
    """
    factory = is_factory_spec(spec)
    if not factory:
        require_file(spec)
    if not factory and Path(spec).suffix.lower() == ".onnx":
        from ._onnx import OnnxEmbedder

        emb: Embedder = OnnxEmbedder(spec, device=device, input_layout=input_layout, layer_layout=layer_layout)
    else:
        from ._torch import TorchEmbedder

        emb = TorchEmbedder(spec, factory=factory, device=device, weights=weights, trust_pickle=trust_pickle,
                            input_layout=input_layout, layer_layout=layer_layout)
    emb.contract = emb.contract.with_batch(input_batch, spec)
    return emb
