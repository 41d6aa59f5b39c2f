"""The one protocol every model backend implements."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


@runtime_checkable
class Embedder(Protocol):
    """A loaded model that maps image batches to embeddings at a named layer.

    Attributes
    ----------
    path, name : str
        The model file and its stem (used as ``details.model``).
    sha256 : str
        Hash of the model bytes (cache key, results ``run.model_sha256``).
    backend : str
        ``"onnx"`` or ``"torch"``.
    device : str
        Where it runs: ``"cpu"``, ``"cuda:0"``; for ONNX the execution provider is in ``provider``.
    input_shape : tuple
        ``(C, H, W)`` the model expects, with None for dynamic dimensions.
    default_layer : str
        The layer used when none is named: the model's (first) output.
    """

    path: str
    name: str
    sha256: str
    backend: str
    device: str
    provider: str
    input_shape: tuple[int | None, int | None, int | None]
    default_layer: str

    def layers(self) -> list[str]:
        """Names that ``embed`` accepts as ``layer``."""
        ...

    def embed(self, batch: "NDArray[np.float32]", layer: str) -> "NDArray[np.float32]":
        """``float32[N, C, H, W]`` -> ``float32[N, D]``.

        A spatial map ``[N, C, h, w]`` is global-average-pooled to ``[N, C]``; any other
        rank above 2 is flattened. The paper's probes are linear, and pooling keeps D
        manageable for conv layers while flattening keeps everything for small maps.
        """
        ...
