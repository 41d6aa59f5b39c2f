"""ONNX backend: any intermediate tensor becomes an output, no re-export needed.

The input contract (layout, element type, fixed batch) is read from the graph once,
and the axis order of a 4-D activation is followed back through the graph (see
:mod:`._onnx_layout`), so a channels-last tensor is pooled over its real spatial axes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..errors import InputShapeError, ModelLoadError
from ._common import check_batch, unknown_layer
from ._contract import LAYOUTS, InputContract, ambiguous_layout, chw_of, layout_from_shape, run_batched
from ._identity import onnx_external_files, sha256_files
from ._onnx_layout import activation_layout, input_layout_from_graph
from ._pool import pool_outputs

# TensorProto element types -> the dtype names of InputContract.
_ELEM = {1: "float32", 10: "float16", 11: "float64", 2: "uint8"}
# "1" is onnxruntime's default; benchmarks/cold_extract.py sets it to measure the difference.
_ALLOW_SPINNING = "0"
_ELEM_NAMES = {3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string", 9: "bool", 16: "bfloat16"}


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


def _dims(value_info: Any) -> list[int | None]:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value_info.type.tensor_type.shape.dim]


def _describe_input(v: Any) -> str:
    t = v.type.tensor_type.elem_type
    dims = ", ".join("?" if d is None else str(d) for d in _dims(v))
    return f"{v.name!r} {_ELEM.get(t) or _ELEM_NAMES.get(t, f'type {t}')}[{dims}]"


class OnnxEmbedder:
    """An ONNX model run by onnxruntime; ``layers()`` lists every float tensor in the graph."""

    backend = "onnx"

    def __init__(self, path: str | Path, *, device: str = "auto", input_layout: str = "auto",
                 layer_layout: str = "auto"):
        onnx = require("onnx", "loading .onnx models")
        self.path = str(path)
        self.name = Path(path).stem
        model = self._read(onnx)
        graph = model.graph
        self.sha256 = sha256_files(Path(path), onnx_external_files(onnx.load(self.path, load_external_data=False),
                                                                   Path(path).parent))
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape inference is a nicety: outputs still work without types
            pass
        self._proto: Any = model
        self._providers, self.device = _providers(device)
        self.provider = self._providers[0] if isinstance(self._providers[0], str) else self._providers[0][0]
        self.contract = self._read_contract(input_layout)
        self.input_shape = self.contract.chw
        self.layer_layout = layer_layout
        self.outputs = [o.name for o in graph.output]
        self.default_layer = self.outputs[0]
        self._float_types = self._tensor_types()
        self._sessions: dict[tuple[str, ...], Any] = {}

    @property
    def _model(self) -> Any:
        """The graph with its weights (shapes inferred); read again after :meth:`close`."""
        if self._proto is None:
            onnx = require("onnx", "loading .onnx models")
            model = self._read(onnx)
            sha = sha256_files(Path(self.path), onnx_external_files(onnx.load(self.path, load_external_data=False),
                                                                    Path(self.path).parent))
            if sha != self.sha256:  # its embeddings are cached under the first file's digest
                raise ModelLoadError(f"{self.path} changed on disk during the run; run pytest again")
            try:
                model = onnx.shape_inference.infer_shapes(model)
            except Exception:
                pass
            self._proto = model
        return self._proto

    def _read(self, onnx: Any) -> Any:
        try:
            model = onnx.load(self.path)
        except Exception as exc:  # protobuf DecodeError, truncated files, missing external data
            raise ModelLoadError(
                f"{self.path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "re-export it or check that the file is complete"
            ) from None
        if not model.graph.output:
            raise ModelLoadError(f"{self.path} declares no graph outputs, so nothing can be read from it; "
                                 "re-export it with its embedding as an output")
        try:
            onnx.checker.check_model(model)
        except Exception as exc:  # checker errors
            raise ModelLoadError(
                f"{self.path} is not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                "re-export it or check that the file is complete"
            ) from None
        return model

    def _read_contract(self, layout_option: str) -> InputContract:
        graph = self._model.graph
        inits = {i.name for i in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        feeds = "the suites feed one image batch [N, C, H, W]"
        if len(inputs) != 1:
            shown = "; ".join(_describe_input(v) for v in inputs) or "none"
            raise InputShapeError(f"{self.path} takes {len(inputs)} inputs ({shown}); {feeds}")
        v = inputs[0]
        self.input_name = v.name
        dims = _dims(v)
        if len(dims) != 4:
            raise InputShapeError(f"{self.path} takes {_describe_input(v)} (rank {len(dims)}); {feeds}")
        elem = v.type.tensor_type.elem_type
        if elem not in _ELEM:
            raise InputShapeError(f"{self.path} takes {_describe_input(v)}; image inputs must be float32, "
                                  f"float16, float64 or uint8")
        if layout_option in LAYOUTS:
            layout, source = layout_option, "option"
        else:
            graph_says = input_layout_from_graph(graph, v.name)
            layout, source = (graph_says, "graph") if graph_says else (layout_from_shape(dims), "declared shape")
            if layout is None:
                raise ambiguous_layout(self.path, dims)
        return InputContract(layout=layout, dtype=_ELEM[elem], batch=dims[0], chw=chw_of(dims, layout),
                             layout_source=source)

    def _tensor_types(self) -> dict[str, int]:
        """Element type of every tensor computed from the image, in graph (forward) order.

        Outputs of nodes that read only weights, constants and the input's shape (an
        initializer passed through an Identity, ``Shape -> Gather -> Sqrt``) are not layers:
        they are the same for every image."""
        g = self._model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.output)}
        varying = {self.input_name}
        order: dict[str, int] = {}
        for node in g.node:  # ONNX requires nodes in topological order
            if not varying.intersection(node.input) and node.op_type not in ("If", "Loop", "Scan"):
                continue  # (a control-flow node may read the image inside its subgraph)
            if node.op_type in ("Shape", "Size"):
                continue  # a shape depends on the batch's size, not on any pixel
            for out in node.output:
                if out:
                    varying.add(out)
                    order[out] = types.get(out, 0)
        for out in g.output:
            if out.name in varying:
                order.setdefault(out.name, out.type.tensor_type.elem_type)
        return order

    def output_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Each graph output's declared shape (None: dynamic)."""
        return {o.name: tuple(_dims(o)) for o in self._model.graph.output}

    def layers(self) -> list[str]:
        # float32/16/64; 0 = unknown (shape inference could not tell): keep those.
        return [n for n, t in self._float_types.items() if t in (0, 1, 10, 11)]

    def _session(self, layers: tuple[str, ...]) -> Any:
        """One session whose outputs are all of ``layers`` (cached per set of layers)."""
        key = tuple(sorted(set(layers)))
        if key in self._sessions:
            return self._sessions[key]
        for layer in key:
            if layer not in self._float_types:
                raise unknown_layer(layer, self.layers(), self.path)
        onnx = require("onnx", "loading .onnx models")
        ort = require("onnxruntime", "loading .onnx models")
        model = self._model
        missing = [la for la in key if la not in {o.name for o in model.graph.output}]
        if missing:
            model = onnx.ModelProto()
            model.CopyFrom(self._model)
            infos = {v.name: v for v in model.graph.value_info}
            for layer in missing:
                info = infos.get(layer)
                model.graph.output.append(info if info is not None else onnx.helper.make_empty_tensor_value_info(layer))
        opts = ort.SessionOptions()
        # Fatal only: every failed run reaches the plugin as an exception, which it reports in
        # one line; onnxruntime's own log would print each again (several for one start-up probe).
        opts.log_severity_level = 4
        # No memory arena: it keeps the largest batch's activations (FaceNet at 256 images:
        # ~1 GB, doubled by its growth policy) for the life of the session; without it they
        # are freed after each call, at no cost in speed (docs/performance.md).
        opts.enable_cpu_mem_arena = False
        # Idle intra-op threads sleep instead of spinning: spinning burned a core between runs
        # that the decoding and rotation of the next batch needed (2 cores; same outputs;
        # docs/performance.md).
        opts.add_session_config_entry("session.intra_op.allow_spinning", _ALLOW_SPINNING)
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=self._providers)
        self._sessions[key] = sess
        return sess

    def close(self) -> None:
        """Close the onnxruntime sessions (their weights and buffers) and drop the graph's
        weights; the next forward reads the file again (the same file: its digest is checked)."""
        self._sessions.clear()
        self._proto = None

    def activation_layout(self, layer: str) -> str | None:
        """``nchw``/``nhwc`` of a 4-D tensor as the graph tells, the option's value, or None."""
        if self.layer_layout in LAYOUTS:
            return self.layer_layout
        return activation_layout(self._model.graph, layer, self.contract.layout)

    def forward_many(self, batch: np.ndarray, layers: list[str]) -> dict[str, np.ndarray]:
        """Raw activations of every one of ``layers`` from one session run per batch chunk."""
        layers = list(dict.fromkeys(layers))  # names are tensor names, whole ('a#1' too): no call index
        check_batch(batch, self.input_shape, self.path)
        sess = self._session(tuple(layers))
        x = self.contract.cast(np.asarray(batch, dtype=np.float32))
        outs = run_batched(lambda chunk: list(sess.run(layers, {self.input_name: chunk})), x, self.contract)
        return {layer: np.asarray(out) for layer, out in zip(layers, outs)}

    def forward(self, batch: np.ndarray, layer: str) -> np.ndarray:
        """The raw activation of ``layer`` for float32 NCHW ``batch`` (any batch size)."""
        return self.forward_many(batch, [layer])[layer]

    def embed_many(self, batch: np.ndarray, layers: list[str], *, pool: str = "auto") -> dict[str, np.ndarray]:
        """Every one of ``layers`` pooled to ``[N, D_layer]`` (see :mod:`._pool`), from one forward."""
        return pool_outputs(self, self.forward_many(batch, layers), pool, batch)

    def embed(self, batch: np.ndarray, layer: str, *, pool: str = "auto") -> np.ndarray:
        return self.embed_many(batch, [layer], pool=pool)[layer]

    def trace_layers(self, batch: np.ndarray | None = None) -> list[tuple[str, tuple[int | None, ...]]]:
        """``(layer, output shape)`` of every layer in forward (graph) order.

        With a ``batch``, the shapes are those of one real forward (all tensors as outputs of
        one session), the batch axis as None; without, what shape inference declares (None:
        unknown or dynamic). A first axis given as a number is not the batch.
        """
        if batch is None:
            g = self._model.graph
            dims = {v.name: tuple(_dims(v)) for v in list(g.value_info) + list(g.output)}
            b = self.contract.batch
            return [(la, (None, *d[1:]) if b and d and d[0] == b else d)
                    for la, d in ((la, dims.get(la, ())) for la in self.layers())]
        # Fed n copies in one run (the fixed batch, else 2, so that a first axis of 1 is told
        # from the batch), not through run_batched, so a tensor whose first axis is not the
        # batch shows its real size there; the batch axis is None.
        n = self.contract.batch or 2
        x = self.contract.cast(np.resize(np.asarray(batch, dtype=np.float32), (n, *batch.shape[1:])))
        layers = self.layers()
        outs = self._session(tuple(layers)).run(layers, {self.input_name: x})
        return [(la, (None, *o.shape[1:]) if np.ndim(o) and o.shape[0] == n else tuple(o.shape))
                for la, o in zip(layers, map(np.asarray, outs))]
