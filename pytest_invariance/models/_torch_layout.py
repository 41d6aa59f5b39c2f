"""Axis order of a 4-D activation inside a torch model.

Convolutions, batch norms and 2-D pooling are channels-first in torch; ``Linear`` and
``LayerNorm`` act on the last axis, so a 4-D tensor they produce is channels-last
(ConvNeXt-style blocks permute to ``[N, H, W, C]`` around them). Element-wise modules
and ops keep the order of their input. The walk goes back from the named layer to
the nearest operator that fixes the order; anything else leaves it unknown and the
caller refuses (see :mod:`._pool`).

Three views of the same idea: module calls recorded in execution order (``nn.Module``
and torch.export's unflattened modules, whose submodules carry an fx graph), and the
TorchScript graph (``prim::CallMethod`` into submodules, ``aten::`` ops).
"""
from __future__ import annotations

from typing import Any

NCHW = {"Conv2d", "ConvTranspose2d", "LazyConv2d", "BatchNorm2d", "SyncBatchNorm", "FrozenBatchNorm2d",
        "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "LPPool2d", "GroupNorm",
        "InstanceNorm2d", "LocalResponseNorm", "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d",
        "PixelShuffle", "PixelUnshuffle", "ZeroPad2d", "ReflectionPad2d", "ReplicationPad2d"}
LAST = {"Linear", "LazyLinear", "LayerNorm", "RMSNorm"}
KEEP = {"ReLU", "ReLU6", "LeakyReLU", "PReLU", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardtanh", "Hardswish",
        "Hardsigmoid", "ELU", "SELU", "CELU", "Mish", "Softplus", "Dropout", "Dropout2d", "Dropout1d",
        "AlphaDropout", "Identity", "Softsign"}
NCHW_OPS = {"conv2d", "convolution", "_convolution", "conv_transpose2d", "batch_norm", "native_batch_norm",
            "_native_batch_norm_legit", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
            "cudnn_batch_norm", "max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "adaptive_avg_pool2d",
            "adaptive_max_pool2d", "_adaptive_avg_pool2d", "group_norm", "native_group_norm", "instance_norm",
            "upsample_nearest2d", "upsample_bilinear2d", "pixel_shuffle", "pixel_unshuffle"}
LAST_OPS = {"linear", "layer_norm", "native_layer_norm", "rms_norm"}
KEEP_OPS = {"relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardtanh", "hardtanh_",
            "hardswish", "hardswish_", "hardsigmoid", "leaky_relu", "leaky_relu_", "elu", "selu", "mish",
            "softplus", "dropout", "dropout_", "feature_dropout", "native_dropout", "clone", "contiguous", "add",
            "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "clamp", "clamp_", "clamp_min", "alias", "detach",
            "_to_copy", "to", "getitem", "type_as", "pad", "constant_pad_nd", "neg", "abs", "exp", "sqrt"}


def _op_name(target: Any) -> str:
    # fx: OpOverload 'aten.relu.default' / builtin getitem; TorchScript: 'aten::relu'.
    name = getattr(target, "__name__", str(target))
    name = str(getattr(target, "_opname", name))
    return name.split("::")[-1].split(".")[0]


def _fx_kind(graph: Any) -> str | None:
    """Class of a graph module by what produces its output: 'nchw', 'nhwc', 'keep' or None."""
    out = next((n for n in graph.nodes if n.op == "output"), None)
    node = out.args[0] if out is not None else None
    while node is not None:
        if isinstance(node, (tuple, list)):
            node = node[0] if node else None
            continue
        if node.op == "placeholder":
            return "keep"
        if node.op != "call_function":
            return None
        op = _op_name(node.target)
        if op in NCHW_OPS:
            return "nchw"
        if op in LAST_OPS:
            return "nhwc"
        if op not in KEEP_OPS:
            return None
        node = next((a for a in node.args if hasattr(a, "op")), None)
    return None


def _name_kind(name: str) -> str | None:
    if name in NCHW:
        return "nchw"
    if name in LAST:
        return "nhwc"
    return "keep" if name in KEEP else None


def module_kind(module: Any) -> str | None:
    """'nchw', 'nhwc', 'keep' (element-wise) or None for one called module."""
    name = type(module).__name__
    if name in NCHW:
        return "nchw"
    if name in LAST:
        return "nhwc"
    if name in KEEP:
        return "keep"
    graph = getattr(module, "graph", None)
    return _fx_kind(graph) if graph is not None and hasattr(graph, "nodes") else None


def layout_from_calls(calls: list[tuple[Any, tuple[int, ...], bool]], target: int) -> str | None:
    """Walk back from call ``target`` over leaf calls ``(module, output shape, is_leaf)`` in completion order."""
    module, shape, is_leaf = calls[target]
    if len(shape) != 4:
        return None
    own = module_kind(module) if is_leaf else None
    if own in ("nchw", "nhwc"):
        return own
    for prev, prev_shape, leaf in reversed(calls[:target]):
        if not leaf:
            continue
        kind = module_kind(prev)
        if kind == "keep":
            continue
        if kind not in ("nchw", "nhwc") or tuple(prev_shape) != tuple(shape):
            return None
        # A permute in plain code (not a module) between that module and the target keeps
        # the shape only when C == H == W; then the two orders cannot be told apart.
        if shape[1] == shape[2] == shape[3]:
            return None
        return kind
    return None


def script_value_layout(owner: Any, value: Any, depth: int = 0) -> str | None:
    """Layout of a TorchScript graph value; 'param' when it is the graph's input unchanged."""
    node = value.node()
    kind = node.kind()
    if depth > 200:
        return None
    if kind == "prim::Param":
        return "param" if value.offset() == 1 else None
    if kind == "prim::CallMethod":
        import torch

        sub = _script_callee(owner, node)
        if sub is None:
            return None
        known = _name_kind(getattr(sub, "original_name", ""))
        if known == "keep":
            return script_value_layout(owner, node.inputsAt(1), depth + 1)
        if known is not None:
            return known
        graph = getattr(sub, node.s("name")).graph.copy()
        torch._C._jit_pass_inline(graph)  # helper functions (F.relu, _conv_forward) become aten ops
        ret = next(iter(graph.return_node().inputs()))
        inner = script_value_layout(sub, ret, depth + 1)
        if inner == "param":
            return script_value_layout(owner, node.inputsAt(1), depth + 1)
        return inner
    if not kind.startswith("aten::"):
        return None
    op = _op_name(kind)
    if op in NCHW_OPS:
        return "nchw"
    if op in LAST_OPS:
        return "nhwc"
    if op in KEEP_OPS:
        found = set()
        for v in node.inputs():
            if v.type().kind() == "TensorType":
                found.add(script_value_layout(owner, v, depth + 1))
        found.discard(None)
        if len(found) > 1:  # broadcasting aligns axes: a known order beats the plain input
            found.discard("param")
        return found.pop() if len(found) == 1 else None
    return None


def _script_callee(owner: Any, node: Any) -> Any:
    path: list[str] = []
    v = node.inputsAt(0)
    while v.node().kind() == "prim::GetAttr":
        path.append(v.node().s("name"))
        v = v.node().input()
    mod = owner
    for name in reversed(path):
        mod = getattr(mod, name, None)
        if mod is None:
            return None
    return mod
