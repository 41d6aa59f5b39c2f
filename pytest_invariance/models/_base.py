"""The one protocol every model backend implements."""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ._contract import InputContract


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
    contract : InputContract
        Layout, element type and fixed batch of the image input (read once at load).
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
    contract: "InputContract"
    default_layer: str

    def layers(self) -> list[str]:
        """Names that ``embed`` accepts as ``layer``."""
        ...

    def forward(self, batch: "NDArray[np.float32]", layer: str) -> "NDArray[np.float32]":
        """The raw activation of ``layer`` (any rank, float32) for ``float32[N, C, H, W]`` images."""
        ...

    def forward_many(self, batch: "NDArray[np.float32]", layers: list[str]) -> "dict[str, NDArray[np.float32]]":
        """Raw activations of every one of ``layers`` from one forward pass (ONNX: one session
        with all of them as outputs; torch: a hook on each module)."""
        ...

    def embed_many(self, batch: "NDArray[np.float32]", layers: list[str], *,
                   pool: str = "auto") -> "dict[str, NDArray[np.float32]]":
        """``{layer: float32[N, D_layer]}``: :meth:`forward_many`, each layer pooled by ``pool``."""
        ...

    def trace_layers(self, batch: "NDArray[np.float32] | None" = None) -> list[tuple[str, tuple[int | None, ...]]]:
        """``(layer, output shape)`` in forward order; shapes from one forward of ``batch`` when given."""
        ...

    def activation_layout(self, layer: str) -> str | None:
        """``"nchw"``/``"nhwc"`` of a 4-D activation as the model's graph tells, else None."""
        ...

    def embed(self, batch: "NDArray[np.float32]", layer: str, *, pool: str = "auto") -> "NDArray[np.float32]":
        """``float32[N, C, H, W]`` in [0, 1] after preprocessing -> ``float32[N, D]``.

        The batch is adapted to the model's :class:`InputContract` (layout, element type,
        fixed batch size) and the activation reduced by ``pool`` (see :mod:`._pool`).
        ``layer`` may end in ``#k`` to read the k-th call of a module run several times.
        """
        ...
