"""ONNX backend: any intermediate tensor becomes an output, no re-export needed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import ModelLoadError
from ._common import check_batch, sha256_file, to_embedding, unknown_layer


def _providers(device: str) -> tuple[list[Any], str]:
    ort = require("onnxruntime", "loading .onnx models")
    available = ort.get_available_providers()
    if device.startswith("cuda") or device == "auto":
        if "CUDAExecutionProvider" in available:
            idx = int(device.split(":")[1]) if ":" in device else 0
            return [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"], f"cuda:{idx}"
        if device != "auto":
            raise ModelLoadError(
                f"--device {device} asked for CUDA but onnxruntime has no CUDAExecutionProvider "
                f"(available: {available}); install onnxruntime-gpu or use --device cpu"
            )
    return ["CPUExecutionProvider"], "cpu"


class OnnxEmbedder:
    """An ONNX model run by onnxruntime; ``layers()`` lists every float tensor in the graph."""

    backend = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto"):
        onnx = require("onnx", "loading .onnx models")
        self.path = str(path)
        self.name = Path(path).stem
        self.sha256 = sha256_file(Path(path))
        try:
            model = onnx.load(self.path)
            onnx.checker.check_model(model)
        except Exception as exc:  # protobuf DecodeError, checker errors, truncated files
            raise ModelLoadError(
                f"{self.path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "re-export it or check that the file is complete"
            ) from None
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape inference is a nicety: outputs still work without types
            pass
        self._model = model
        self._providers, self.device = _providers(device)
        self.provider = self._providers[0] if isinstance(self._providers[0], str) else self._providers[0][0]
        graph = model.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        if len(inputs) != 1:
            raise ModelLoadError(f"{self.path} has {len(inputs)} inputs; an image embedder has exactly one")
        self.input_name = inputs[0].name
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        self.input_shape = tuple(dims[1:4]) if len(dims) == 4 else (None, None, None)
        self.default_layer = graph.output[0].name
        self._float_types = self._tensor_types()
        self._sessions: dict[str, Any] = {}

    def _tensor_types(self) -> dict[str, int]:
        g = self._model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)}
        order: dict[str, int] = {}
        for node in g.node:
            for out in node.output:
                if out:
                    order[out] = types.get(out, 0)
        for out in g.output:
            order.setdefault(out.name, out.type.tensor_type.elem_type)
        return order

    def layers(self) -> list[str]:
        # elem_type 1 = FLOAT; 0 = unknown (shape inference could not tell): keep those.
        return [n for n, t in self._float_types.items() if t in (0, 1, 10, 11)]

    def _session(self, layer: str) -> Any:
        if layer in self._sessions:
            return self._sessions[layer]
        if layer not in self._float_types:
            raise unknown_layer(layer, self.layers(), self.path)
        onnx = require("onnx", "loading .onnx models")
        ort = require("onnxruntime", "loading .onnx models")
        model = self._model
        if layer not in {o.name for o in model.graph.output}:
            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            info = next((v for v in model.graph.value_info if v.name == layer), None)
            model.graph.output.append(info if info is not None else onnx.helper.make_empty_tensor_value_info(layer))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=self._providers)
        self._sessions[layer] = sess
        return sess

    def embed(self, batch: np.ndarray, layer: str) -> np.ndarray:
        check_batch(batch, self.input_shape, self.path)
        sess = self._session(layer)
        (out,) = sess.run([layer], {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return to_embedding(out, layer)
