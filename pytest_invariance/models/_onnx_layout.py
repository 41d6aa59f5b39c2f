"""Axis order of ONNX tensors, read from the graph.

ONNX's own image operators (Conv, BatchNormalization, pooling) are channels-first by
definition. TF-converted graphs keep channels-last tensors and wrap those operators in
Transposes. So the layout of a tensor is found by walking back from it: through
operators that keep the axis order (element-wise maths, Resize, Pad, Concat; a
LayerNormalization over the last axis and a MatMul by a 2-D weight, a ConvNeXt block's
LayerNorm/Linear on permuted maps), composing Transpose permutations, until an NCHW
operator or the graph input is reached. Anything else (Reshape, other MatMuls, ...) makes
the layout unknown, and the caller refuses rather than guesses.
"""
from __future__ import annotations

from typing import Any

NCHW_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
            "GlobalMaxPool", "LpPool", "GlobalLpPool", "InstanceNormalization", "LRN", "QLinearConv",
            "ConvInteger", "MaxRoiPool", "DepthToSpace", "SpaceToDepth", "GroupNormalization"}
# One data input; the output has the axis order of that input.
KEEP_OPS = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
            "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Sqrt", "Abs", "Neg", "Exp", "Log", "Floor", "Ceil",
            "Round", "Reciprocal", "ThresholdedRelu", "Clip", "Cast", "Identity", "Dropout", "Resize", "Upsample",
            "Pad", "QuantizeLinear", "DequantizeLinear", "Not", "Sign"}
# Several inputs broadcast together: the axis order of the 4-D data inputs.
MERGE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Concat", "Where"}
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def _perm(node: Any) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _attr(node: Any, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def _constants(graph: Any) -> set[str]:
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def activation_layout(graph: Any, tensor: str, input_layout: str) -> str | None:
    """``nchw``, ``nhwc`` or None (unknown) for a 4-D tensor of ``graph``."""
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    consts = _constants(graph)
    weights = {i.name: len(i.dims) for i in graph.initializer}  # rank of each initializer
    memo: dict[str, str | None] = {}

    def walk(name: str, depth: int) -> str | None:
        if name in memo:
            return memo[name]
        memo[name] = None  # cycles cannot happen in ONNX, but guard the recursion anyway
        node = producer.get(name)
        if node is None:
            result = input_layout if name in inputs and name not in consts else None
        elif depth > 400:
            result = None
        elif node.op_type in NCHW_OPS:
            result = "nchw"
        elif node.op_type in KEEP_OPS:
            result = walk(node.input[0], depth + 1)
        elif node.op_type in MERGE_OPS:
            # Broadcasting aligns axes, so one input of known order fixes the output's.
            found = {walk(i, depth + 1) for i in node.input if i and i not in consts} - {None}
            result = found.pop() if len(found) == 1 else None
        elif node.op_type == "LayerNormalization" and _attr(node, "axis", -1) in (-1, 3):
            result = walk(node.input[0], depth + 1)  # normalises each position's last axis: order kept
        elif node.op_type == "MatMul" and len(node.input) > 1 and weights.get(node.input[1]) == 2:
            result = walk(node.input[0], depth + 1)  # a Linear on the last axis: [.., C] @ [C, D]
        elif node.op_type == "Transpose":
            inner, perm = walk(node.input[0], depth + 1), _perm(node)
            result = {("nchw", tuple(TO_NHWC)): "nhwc", ("nhwc", tuple(TO_NCHW)): "nchw",
                      ("nchw", (0, 1, 2, 3)): "nchw", ("nhwc", (0, 1, 2, 3)): "nhwc"}.get((inner, tuple(perm)))
        else:
            result = None
        memo[name] = result
        return result

    return walk(tensor, 0)


def input_layout_from_graph(graph: Any, input_name: str) -> str | None:
    """What the graph does with its image input: fed to an NCHW operator, or transposed to NCHW first.

    Follows the input forward through layout-keeping operators (a TF export often casts or
    scales the pixels before its Transpose). None when the paths disagree or say nothing.
    """
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    found: set[str] = set()
    frontier, seen = [input_name], set()
    while frontier:
        name = frontier.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in consumers.get(name, []):
            if node.op_type in NCHW_OPS and node.input and node.input[0] == name:
                found.add("nchw")
            elif node.op_type == "Transpose":
                perm = _perm(node)
                if perm == TO_NCHW:
                    found.add("nhwc")
                elif perm == TO_NHWC:
                    found.add("nchw")
            elif node.op_type in KEEP_OPS or node.op_type in MERGE_OPS:
                frontier.extend(o for o in node.output if o)
    return found.pop() if len(found) == 1 else None
