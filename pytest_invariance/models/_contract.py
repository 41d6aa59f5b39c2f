"""The input contract of a model: layout, element type and batch size it accepts.

Every suite feeds float32 ``[N, C, H, W]`` images in [0, 1] after preprocessing. A
model file may want something else: channels-last ``[N, H, W, C]`` (TF-converted
graphs), float16/float64/uint8 elements (fp16 conversions, image models that
normalise inside the graph), or a batch size fixed in the file (``[1, 3, 160, 160]``).
:class:`InputContract` is read once per model and adapts each batch to it; outputs
always come back as float32.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..errors import EmbeddingError, InputShapeError

LAYOUTS = ("nchw", "nhwc")
OPT_INPUT_LAYOUT = "--invariance-input-layout"
OPT_INPUT_BATCH = "--invariance-input-batch"
# Element types a suite's pixels can be cast to without losing their meaning.
DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "uint8": np.uint8}


@dataclass(frozen=True)
class InputContract:
    """What one model takes as input.

    Attributes
    ----------
    layout : {"nchw", "nhwc"}
        Axis order of the image input.
    dtype : str
        Element type: ``float32``, ``float16``, ``float64`` or ``uint8`` (0-255 pixels).
    batch : int or None
        Batch size every call must have (the last chunk is padded), None when any batch is
        accepted.
    batch_source : str
        Where ``batch`` comes from: ``"file"`` (the declared input shape) or ``"option"``
        (``--invariance-input-batch``, for a graph with a batch size fixed at export).
    chw : tuple
        ``(C, H, W)`` as declared, None for dynamic dimensions.
    layout_source : str
        How the layout was decided ("declared shape", "graph", "option", "default").
    batch_min, batch_max : int
        Bounds of a dynamic batch (a torch.export ``Dim("N", min=2, max=64)``; 0 / None: none):
        a call is fed at most ``batch_max`` images, and at least ``batch_min`` (padded).
    """

    layout: str = "nchw"
    dtype: str = "float32"
    batch: int | None = None
    chw: tuple[int | None, int | None, int | None] = (None, None, None)
    layout_source: str = "default"
    batch_source: str = "file"
    batch_min: int = 0
    batch_max: int | None = None

    def takes(self, n: int) -> bool:
        """Whether one call may be fed ``n`` images as they are (no chunking, no padding)."""
        return (self.batch is None or n == self.batch) and n >= self.batch_min \
            and (self.batch_max is None or n <= self.batch_max)

    def with_batch(self, n: int | None, model: str) -> "InputContract":
        """This contract fed ``n`` images per call (``--invariance-input-batch``); unchanged for None.

        Raises InputShapeError when the file declares a different fixed batch."""
        if n is None or n == self.batch:
            return self
        if self.batch is not None:
            raise InputShapeError(f"{model} declares a fixed batch of {self.batch}; {OPT_INPUT_BATCH} {n} "
                                  "contradicts it: drop the option")
        return replace(self, batch=n, batch_source="option")

    def to_dict(self) -> dict[str, Any]:
        bounds = {"input_batch_range": [self.batch_min, self.batch_max]} \
            if self.batch_min or self.batch_max is not None else {}  # only when bounded: other keys unchanged
        return {"input_layout": self.layout, "input_dtype": self.dtype, "input_batch": self.batch,
                "input_shape": list(self.chw), "layout_source": self.layout_source,
                "batch_source": self.batch_source, **bounds}

    def describe(self) -> str:
        c, h, w = ("?" if v is None else v for v in self.chw)
        n = self.batch if self.batch else "N"
        dims = [n, c, h, w] if self.layout == "nchw" else [n, h, w, c]
        return f"{self.dtype}[{', '.join(map(str, dims))}] ({self.layout.upper()})"

    def cast(self, x: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> the model's layout and element type."""
        if self.layout == "nhwc":
            x = x.transpose(0, 2, 3, 1)
        if self.dtype == "uint8":
            # uint8 image models normalise inside the graph: they take 0-255 pixels.
            x = np.clip(np.rint(x * 255.0), 0, 255)
        return np.ascontiguousarray(x, dtype=DTYPES[self.dtype])


def layout_from_shape(dims: list[int | None]) -> str | None:
    """``nchw``/``nhwc`` when a 4-D declared shape says so (a 1- or 3-channel axis), else None."""
    if len(dims) != 4:
        return None
    first, last = dims[1] in (1, 3), dims[3] in (1, 3)
    if first and not last:
        return "nchw"
    if last and not first:
        return "nhwc"
    return None


def chw_of(dims: list[int | None], layout: str) -> tuple[int | None, int | None, int | None]:
    if layout == "nhwc":
        return dims[3], dims[1], dims[2]
    return dims[1], dims[2], dims[3]


def ambiguous_layout(model: str, dims: list[int | None]) -> InputShapeError:
    shown = ", ".join("?" if d is None else str(d) for d in dims)
    return InputShapeError(
        f"{model}: cannot tell whether input [{shown}] is channels-first or channels-last; "
        f"pass {OPT_INPUT_LAYOUT} nchw or {OPT_INPUT_LAYOUT} nhwc"
    )


def run_batched(fn: Callable[[np.ndarray], Any], x: np.ndarray, contract: InputContract) -> list[Any]:
    """Call ``fn`` on ``x`` in the calls the ``contract`` takes: chunks of its fixed batch size,
    else of at most ``batch_max`` images; a chunk smaller than the fixed batch or ``batch_min``
    is padded with copies of its last image, whose outputs are dropped.

    ``fn`` returns an array (or a list of arrays) with the batch on axis 0. One call when
    ``x`` fits as it is.
    """
    if contract.takes(len(x)):
        out = fn(x)
        return out if isinstance(out, list) else [out]
    step = contract.batch or contract.batch_max or len(x)
    parts: list[list[Any]] = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        size = contract.batch or max(n, contract.batch_min)
        if n < size:  # pad with copies of the last image; their outputs are dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        out = fn(chunk)
        out = out if isinstance(out, list) else [out]
        for o in out:  # dropping pad rows is only right when axis 0 is the batch
            if np.ndim(o) == 0 or len(o) != size:
                raise EmbeddingError(f"a layer gives {np.shape(o)} for a batch of {size} images: its first axis "
                                     "is not the batch; leave it out of --layer / --invariance-layers")
        parts.append([o[:n] for o in out])
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
