"""Input and output contracts of ONNX files as people ship them (issue 9, items 1-5, 8).

Every model is generated here with onnx.helper or torch.onnx.export; every figure is
compared with a reference computed another way (torch in float64, numpy by hand).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pytest_invariance.errors import EmbeddingError, InputShapeError, ModelLoadError  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.testing import tiny_cnn  # noqa: E402

RNG = np.random.default_rng(0)
W = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)  # conv 3 -> 4 channels, 3x3
B = RNG.normal(size=4).astype(np.float32)


def conv_relu(x_nchw: np.ndarray) -> np.ndarray:
    """Reference: relu(conv(x)) in float64 torch, [N, 4, H-2, W-2]."""
    out = torch.nn.functional.conv2d(torch.from_numpy(x_nchw).double(), torch.from_numpy(W).double(),
                                     torch.from_numpy(B).double())
    return out.relu().numpy()


def out(name, elem=TensorProto.FLOAT, rank=4):
    return helper.make_tensor_value_info(name, elem, [f"d{i}" for i in range(rank)])


def save(graph, path, opset=17):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def conv_graph(dtype=TensorProto.FLOAT, shape=("n", 3, 8, 8), pre=(), out_name="feat"):
    """input -> [pre nodes] -> Conv -> Relu -> feat; weights cast to the input's float type."""
    np_type = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
    wtype = np_type.get(dtype, np.float32)
    inits = [numpy_helper.from_array(W.astype(wtype), "w"), numpy_helper.from_array(B.astype(wtype), "b")]
    nodes = list(pre) + [helper.make_node("Conv", ["x0" if pre else "input", "w", "b"], ["conv"]),
                         helper.make_node("Relu", ["conv"], [out_name])]
    out_type = dtype if dtype in np_type else TensorProto.FLOAT
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", dtype, list(shape))],
                             [out(out_name, out_type)], inits)


def images(n=7, c=3, h=8, w=8, seed=1):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


# ------------------------------------------------------------------ 1. fixed batch


@pytest.mark.parametrize("fixed", [1, 3])
def test_fixed_batch_is_fed_in_its_size_and_equals_batch_size_one(tmp_path, fixed):
    path = save(conv_graph(shape=(fixed, 3, 8, 8)), tmp_path / "fixed.onnx")
    model = load_model(path, device="cpu")
    assert model.contract.batch == fixed
    x = images(7)  # 7 is not a multiple of 3: the last batch is padded, the pad rows dropped
    got = model.embed(x, "feat")
    np.testing.assert_allclose(got, conv_relu(x).mean(axis=(2, 3)), atol=1e-5)
    one = np.concatenate([model.embed(x[i:i + 1], "feat") for i in range(len(x))])
    np.testing.assert_array_equal(got, one)


def test_fixed_batch_through_extract_equals_batch_size_one(tmp_path):
    import pandas as pd

    from pytest_invariance.data import ArrayImageSet
    from pytest_invariance.embeddings import Preprocess, extract

    net = tiny_cnn(seed=2)
    path = tmp_path / "b1.onnx"
    torch.onnx.export(net, torch.zeros(1, 1, 28, 28), str(path), dynamo=False, input_names=["input"],
                      output_names=["output"])  # no dynamic axes: [1, 1, 28, 28] in the file
    model = load_model(str(path), device="cpu")
    data = ArrayImageSet(np.random.default_rng(4).integers(0, 256, (11, 28, 28), dtype=np.uint8),
                         pd.DataFrame({"y": range(11)}), name="fixed")
    a = extract(model, data, batch_size=256, preprocess=Preprocess())
    b = extract(model, data, batch_size=1, preprocess=Preprocess())
    np.testing.assert_array_equal(a, b)
    with torch.no_grad():
        ref = net(torch.from_numpy(np.stack([data[i].numpy() for i in range(11)]))).numpy()
    np.testing.assert_allclose(a, ref, atol=1e-5)


class TracedBatch(torch.nn.Module):
    """A conv net whose export bakes the batch in: ``len(x)`` is a Python int when traced,
    so the ONNX graph declares any batch but its Reshape keeps the one it was traced with;
    ``honest`` uses the traced ``x.shape[0]`` (a Shape node) and exports with a free batch."""

    def __init__(self, honest: bool = False):
        super().__init__()
        torch.manual_seed(3)
        self.conv, self.fc, self.honest = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4 * 6 * 6, 5), honest

    def forward(self, x):
        h = self.conv(x).relu()
        return self.fc(h.reshape(x.shape[0] if self.honest else len(x), -1))


def export_traced_batch(path, honest=False, traced_with=2, any_size=False):
    import warnings

    with warnings.catch_warnings():  # the TracerWarning about len(x) is the point of this model
        warnings.simplefilter("ignore")
        torch.onnx.export(TracedBatch(honest).eval(), torch.rand(traced_with, 3, 8, 8), str(path), dynamo=False,
                          input_names=["input"], output_names=["out"],
                          dynamic_axes={"input": {0: "n", **({2: "h", 3: "w"} if any_size else {})}, "out": {0: "n"}})
    return str(path)


def test_a_batch_fixed_inside_the_graph_is_named_once_and_the_option_feeds_it(tmp_path):
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    path = export_traced_batch(tmp_path / "traced2.onnx")
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})
    model = load_model(path, device="cpu")
    assert model.contract.batch is None  # the file says any batch
    with pytest.raises(EmbeddingError, match=r"in a batch of 4 but runs in a batch of 2: its graph fixes the batch "
                                             r"size .* pass --invariance-input-batch 2$"):
        probe(suite, ModelRef("m", model, "out", Preprocess(), user=True))
    fed = load_model(path, device="cpu", input_batch=2)
    assert (fed.contract.batch, fed.contract.batch_source) == (2, "option")
    assert probe(suite, ModelRef("m", fed, "out", Preprocess(), user=True)) is None
    x = images(7)  # odd: the last call is padded
    with torch.no_grad():
        reference = TracedBatch(honest=True).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fed.embed(x, "out"), reference, atol=1e-5)
    # A model that takes no batch of this input at all (its Linear wants 8x8) keeps the backend's reason.
    wrong = load_model(export_traced_batch(tmp_path / "ok.onnx", honest=True, any_size=True), device="cpu")
    assert "fails on suite s's input" in probe(Suite("s", tmp_path, {"suite": {"input": [3, 9, 9]}}),
                                               ModelRef("m", wrong, "out", Preprocess(), user=True))
    wrong_n = load_model(path, device="cpu", input_batch=4)  # the option, but the wrong size
    with pytest.raises(EmbeddingError, match=r"in batches of 4 \(--invariance-input-batch 4\) but runs in a batch of "
                                             r"2: pass --invariance-input-batch 2$"):
        probe(suite, ModelRef("m", wrong_n, "out", Preprocess(), user=True))
    with pytest.raises(InputShapeError, match="declares a fixed batch of 1; --invariance-input-batch 2 contradicts"):
        load_model(save(conv_graph(shape=(1, 3, 8, 8)), tmp_path / "b1.onnx"), device="cpu", input_batch=2)


@pytest.mark.parametrize("baked", [1, 2, 3, 4, 5, 8])
def test_any_batch_fixed_inside_the_graph_is_one_refusal_naming_its_size(tmp_path, baked):
    """The probe runs 4 images together, then 1 at a time: a batch baked at 4 (or 1) runs one of
    them, and any size is named, not only those exporters usually trace with."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    path = export_traced_batch(tmp_path / f"traced{baked}.onnx", traced_with=baked)
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})
    with pytest.raises(EmbeddingError) as raised:
        probe(suite, ModelRef("m", load_model(path, device="cpu"), "out", Preprocess(), user=True))
    message = str(raised.value)
    assert "\n" not in message and message.endswith(f"re-export it with a dynamic batch, or pass --invariance-input-batch {baked}")
    fed = load_model(path, device="cpu", input_batch=baked)
    assert probe(suite, ModelRef("m", fed, "out", Preprocess(), user=True)) is None
    x = images(7)
    with torch.no_grad():
        reference = TracedBatch(honest=True).eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(fed.embed(x, "out"), reference, atol=1e-5)


def test_a_model_that_fails_on_one_image_for_another_reason_is_not_called_a_fixed_batch(tmp_path, monkeypatch):
    """Runs at 4 and at 2 but not on 1 image (BatchNorm that ignores eval()): the backend's reason."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    (tmp_path / "bnnet.py").write_text(
        "import torch\n\nclass StaysTraining(torch.nn.Sequential):\n"
        "    def train(self, mode=True):\n        return super().train(True)\n\n"
        "def make():\n    torch.manual_seed(0)\n    return StaysTraining(torch.nn.Flatten(1), "
        "torch.nn.Linear(3 * 8 * 8, 6), torch.nn.BatchNorm1d(6))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("bnnet:make", device="cpu")
    with pytest.raises(EmbeddingError) as raised:
        probe(Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}}), ModelRef("m", model, "output", Preprocess(), user=True))
    assert "runs suite s's input in a batch of 4 but fails on one image: " in str(raised.value)
    assert "Expected more than 1 value per channel" in str(raised.value)
    assert "--invariance-input-batch" not in str(raised.value)


def test_a_fixed_batch_graph_read_at_a_layer_the_pool_refuses_names_the_batch_then_the_pool(tmp_path):
    """Each batch size was retried with the pool applied: the pool's refusal (cls on a conv
    map) failed every size and the suite was skipped with the backend's raw error."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.errors import InvarianceError

    path = export_traced_batch(tmp_path / "traced2.onnx")
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})
    conv = "/conv/Conv_output_0"
    with pytest.raises(EmbeddingError, match=r"runs in a batch of 2: .* pass --invariance-input-batch 2$"):
        probe(suite, ModelRef("m", load_model(path, device="cpu"), conv, Preprocess(), user=True, pool="cls"))
    fed = load_model(path, device="cpu", input_batch=2)
    with pytest.raises(InvarianceError, match="--invariance-pool"):
        probe(suite, ModelRef("m", fed, conv, Preprocess(), user=True, pool="cls"))
    assert probe(suite, ModelRef("m", fed, conv, Preprocess(), user=True, pool="gap")) is None


NHWC_NET = (
    "import torch\n\nclass NHWC(torch.nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n        torch.manual_seed(0)\n"
    "        self.conv = torch.nn.Conv2d(3, 4, 3)\n\n"
    "    def forward(self, x):  # channels-last images\n"
    "        return self.conv(x.permute(0, 3, 1, 2)).mean((2, 3))\n\n"
    "def make():\n    return NHWC().eval()\n")


@pytest.mark.parametrize("kind", ["factory", "torchscript"])
def test_a_torch_model_taking_channels_last_input_is_one_line_naming_the_layout_option(tmp_path, monkeypatch, kind):
    """Was a suite skip with torch's raw conv error (exit 5); the option that feeds it was never named."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    (tmp_path / "nhwcnet.py").write_text(NHWC_NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "nhwcnet:make"
    if kind == "torchscript":
        import nhwcnet

        spec = str(tmp_path / "nhwc.pt")
        torch.jit.trace(nhwcnet.make(), torch.rand(2, 8, 8, 3)).save(spec)
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})
    with pytest.raises(EmbeddingError) as raised:
        probe(suite, ModelRef("m", load_model(spec, device="cpu"), "output", Preprocess(), user=True))
    message = str(raised.value)
    assert "\n" not in message and message.endswith("it runs on [N, H, W, C] (channels-last) input, so the axis "
                                                      "order it is fed is the fault, not the layer: pass "
                                                      "--invariance-input-layout nhwc")
    fed = load_model(spec, device="cpu", input_layout="nhwc")
    assert probe(suite, ModelRef("m", fed, "output", Preprocess(), user=True)) is None
    x = images(3)
    reference = torch.nn.functional.conv2d(torch.from_numpy(x), fed.module.conv.weight, fed.module.conv.bias)
    np.testing.assert_allclose(fed.embed(x, "output"), reference.mean((2, 3)).detach().numpy(), atol=1e-5)


def test_a_model_the_backend_cannot_run_is_an_error_naming_what_it_is_fed_not_a_suite_skip(tmp_path):
    """onnxruntime's CPU provider has no float64 Conv: the suite fits, the model cannot run. Was a
    skip (exit 5) saying it was fed float32."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    model = load_model(save(conv_graph(dtype=TensorProto.DOUBLE), tmp_path / "f64.onnx"), device="cpu")
    with pytest.raises(EmbeddingError) as raised:
        probe(Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}}), ModelRef("m", model, "feat", Preprocess(), user=True))
    message = str(raised.value)
    assert "\n" not in message and "fails on suite s's input float64[N, 3, 8, 8]: " in message
    assert "NOT_IMPLEMENTED" in message and message.endswith(
        "CPUExecutionProvider cannot run this model whatever input it is fed, so the suite is not the fault: "
        "re-export it with float32 input and weights (it takes float64)")


def test_extract_names_the_batch_a_graph_fixes_inside_in_one_line(tmp_path, capsys):
    from PIL import Image

    from pytest_invariance.cli import main

    path = export_traced_batch(tmp_path / "traced2.onnx", traced_with=2)
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(5):
        Image.fromarray((images(1, seed=i)[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    args = ["extract", "--images", str(folder), "--model", path, "--preprocess", "size=8", "--progress", "off"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "fails in a batch of" in err[0] and "fails on a batch" not in err[0]
    assert len(err) == 1 and err[0].endswith("runs in a batch of 2: its graph fixes the batch size although its input "
                                             "declares any (e.g. len(x) or a constant reshape at export); re-export it with a dynamic "
                                             "batch, or pass --input-batch 2")
    assert main([*args, "--input-batch", "2", "--out", str(tmp_path / "b")]) == 0


def test_a_layer_whose_first_axis_is_not_the_batch_is_never_sliced_as_rows(tmp_path):
    # Sequence-first [T, N, D] read from a fixed-batch graph: dropping pad rows would keep the
    # first tokens as if they were images. Refused; the layer list marks it, a glob skips it.
    from pytest_invariance.models._layers import describe_layers, select_layers

    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"]),
             helper.make_node("Relu", ["conv"], ["feat"]),
             helper.make_node("Reshape", ["feat", "shape"], ["flat"]),             # [N, 4, 36]
             helper.make_node("Transpose", ["flat"], ["tokens"], perm=[2, 0, 1]),  # [36, N, 4]
             helper.make_node("Identity", ["w"], ["w_copy"])]                      # a weight, not a layer
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 8, 8])],
                              [out("feat"), out("tokens", rank=3), out("w_copy")],
                              [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b"),
                               numpy_helper.from_array(np.array([0, 4, -1], dtype=np.int64), "shape")])
    model = load_model(save(graph, tmp_path / "seq.onnx"), device="cpu")
    assert "w_copy" not in model.layers()
    with pytest.raises(EmbeddingError, match=r"gives \(36, 2, 4\) for a batch of 2 images: its first axis is not the batch"):
        model.forward(images(3), "tokens")
    trace = model.trace_layers(images(1))
    assert dict(trace)["tokens"] == (36, 2, 4) and dict(trace)["feat"] == (None, 4, 6, 6)
    lines = describe_layers(trace, "feat")
    assert any(ln.split()[0] == "tokens" and "axis 0 is not the batch" in ln for ln in lines)
    assert any(ln.split()[0] == "feat" and "[N, 4, 6, 6]" in ln and "not the batch" not in ln for ln in lines)
    not_rows = [n for n, shape in trace if shape and shape[0] is not None]
    assert select_layers([n for n, _ in trace], model.layers(), ["*"], "--invariance-layers", "m",
                         not_per_image=not_rows) == ["conv", "feat", "flat"]


def _scripted(module, path):
    """``module`` saved with torch.jit.script and loaded back as the plugin loads a .pt file."""
    torch.jit.script(module).save(str(path))
    return load_model(str(path), device="cpu")


class _Tokens(torch.nn.Module):
    def forward(self, x):  # [N, C, H, W] -> sequence-first [H*W, N, C]
        return x.flatten(2).permute(2, 0, 1)


class _SeqFirstAttention(torch.nn.Module):  # nn.MultiheadAttention without batch_first, as in older ViTs
    def __init__(self):
        super().__init__()
        self.conv, self.tokens, self.attn = torch.nn.Conv2d(3, 4, 3), _Tokens(), torch.nn.MultiheadAttention(4, 1)
        self.head = torch.nn.Linear(4, 4)

    def forward(self, x):
        t = self.tokens(self.conv(x))
        return self.head(self.attn(t, t, t)[0].mean(0))


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_layers_list_their_shapes_and_a_glob_passes_over_sequence_first_ones(tmp_path, how):
    # TorchScript cannot be hooked: each module's shape comes from its own cut graph.
    from pytest_invariance.models._layers import describe_layers, per_image, select_layers

    torch.manual_seed(0)
    m = _SeqFirstAttention().eval()
    x = torch.from_numpy(images(2))
    saved = torch.jit.script(m) if how == "script" else torch.jit.trace(m, x)
    saved.save(str(tmp_path / "m.pt"))
    model = load_model(str(tmp_path / "m.pt"), device="cpu")
    trace = dict(model.trace_layers(images(1)))
    assert trace["conv"] == (None, 4, 6, 6) and trace["tokens"] == (36, 1, 4)
    assert trace["head"] == (None, 4) and trace["output"] == (None, 4)
    lines = describe_layers(list(trace.items()), "output")
    assert any(ln.split()[0] == "tokens" and "axis 0 is not the batch" in ln for ln in lines)
    picked = select_layers(list(trace), model.layers(), ["*"], "--invariance-layers", "m",
                           calls_known=False, not_per_image=[n for n, sh in trace.items() if not per_image(sh)])
    assert "tokens" not in picked and {"conv", "head", "output"} <= set(picked)
    with torch.no_grad():  # the layers read as the eager module computes them
        np.testing.assert_allclose(model.forward(images(3), "head"), m(torch.from_numpy(images(3))).numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", ["factory", "script"])
def test_a_sequence_first_layer_is_read_by_the_pool_its_refusal_names(tmp_path, monkeypatch, kind):
    """[T, N, D] tokens (nn.MultiheadAttention without batch_first): the refusal under the
    default pool names cls / mean, and each, followed, gives the hooked output's token 0 /
    token mean; also at a batch with as many images as tokens (36), and in the start-up probe."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    (tmp_path / "seqfirst.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom test_model_inputs import _SeqFirstAttention\n"
        "import torch\n\ndef net():\n    torch.manual_seed(0)\n    return _SeqFirstAttention()\n"
        % str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.syspath_prepend(str(tmp_path))
    import seqfirst

    m = seqfirst.net().eval()
    model = load_model("seqfirst:net", device="cpu") if kind == "factory" else _scripted(m, tmp_path / "s.pt")
    for n in (3, 36):
        x = images(n)
        seen = []
        hook = m.attn.register_forward_hook(lambda _m, _i, out: seen.append(out[0].detach().numpy()))
        with torch.no_grad():
            m(torch.from_numpy(x))
        hook.remove()
        tokens = seen[0]  # [36, n, 4]: the token axis first
        assert tokens.shape == (36, n, 4)
        with pytest.raises(EmbeddingError, match=r"layer 'attn' .sequence-first \[T, N, D\], read as \[N, T, D\]. is "
                                                 r"a token sequence \[N, 36, 4\]; .* choose --invariance-pool cls "
                                                 r"\(token 0\) or --invariance-pool mean \(average of the 36 tokens\)"):
            model.embed(x, "attn")
        np.testing.assert_allclose(model.embed(x, "attn", pool="mean"), tokens.mean(0), atol=1e-5)
        np.testing.assert_allclose(model.embed(x, "attn", pool="cls"), tokens[0], atol=1e-5)
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})
    assert probe(suite, ModelRef("m", model, "attn", Preprocess(), user=True, pool="mean")) is None
    sys_modules = __import__("sys").modules
    sys_modules.pop("seqfirst", None)


class _ForwardImpl(torch.nn.Module):  # torchvision's ResNet: forward calls self._forward_impl
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU())
        self.broken = torch.nn.Linear(7, 2)  # wrong width: fails if the forward gets this far

    def _forward_impl(self, x):
        return self.broken(self.body(self.conv(x)).flatten(1))

    def forward(self, x):
        return self._forward_impl(x)


def test_scripted_layers_inside_a_helper_method_are_read_and_only_the_forward_up_to_them_runs(tmp_path):
    torch.manual_seed(0)
    m = _ForwardImpl().eval()
    model = _scripted(m, tmp_path / "impl.pt")
    x = images(3)
    with torch.no_grad():
        expect = m.body(m.conv(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(model.forward(x, "body.1"), expect, atol=1e-6)
    np.testing.assert_allclose(model.forward(x, "body"), expect, atol=1e-6)
    with pytest.raises(RuntimeError):  # the whole forward does fail
        model.forward(x, "output")


class _BatchFirstAttention(torch.nn.Module):  # its attention module returns a tuple
    def __init__(self):
        super().__init__()
        self.conv, self.attn = torch.nn.Conv2d(3, 4, 3), torch.nn.MultiheadAttention(4, 1, batch_first=True)

    def forward(self, x):
        t = self.conv(x).flatten(2).transpose(1, 2)
        return self.attn(t, t, t)[0].mean(1)


class _TwiceAcrossMethods(torch.nn.Module):  # `shared` runs in forward and inside a helper method
    def __init__(self):
        super().__init__()
        self.shared = torch.nn.Conv2d(3, 3, 3, padding=1)

    def _impl(self, x):
        return self.shared(x)

    def forward(self, x):
        return self.shared(self._impl(x))


def test_scripted_tuple_output_is_read_and_a_module_run_in_two_methods_is_refused(tmp_path):
    from pytest_invariance.errors import LayerNotFoundError

    torch.manual_seed(0)
    m = _BatchFirstAttention().eval()
    model = _scripted(m, tmp_path / "attn.pt")
    x = images(3)
    with torch.no_grad():
        t = m.conv(torch.from_numpy(x)).flatten(2).transpose(1, 2)
        expect = m.attn(t, t, t)[0].numpy()  # the first of the tuple, as a hook on the module reads it
    np.testing.assert_allclose(model.forward(x, "attn"), expect, atol=1e-6)
    twice = _scripted(_TwiceAcrossMethods().eval(), tmp_path / "twice.pt")
    with pytest.raises(LayerNotFoundError, match="'shared' of .* runs more than once per forward .also inside the "
                                                 "scripted method _impl.*package.module:factory"):
        twice.forward(x, "shared")
    assert dict(twice.trace_layers(x[:1]))["shared"] == ()  # listed as [?]; a glob passes over it


class _Branches(torch.nn.Module):
    """Submodules called inside if blocks (one nested two deep, one behind a helper method,
    a value changed in place after its call) and inside a loop; ``gate`` picks the branch."""

    def __init__(self, gate: float = 0.0):
        super().__init__()
        self.gate = gate
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU())
        self.head, self.loop = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)

    def _impl(self, x):
        if x.mean() > self.gate:
            x = self.body(x)
        return x

    def forward(self, x):
        x = self.conv(x)
        if x.shape[1] == 4:
            if self.gate < 1e9:
                x = self._impl(x)
                x.mul_(2.0)  # after the call: the cut reads the value before it
        t = x.mean((2, 3))
        for _ in range(2):
            t = self.loop(t)
        return self.head(t)


def test_scripted_layers_called_inside_if_blocks_are_read_as_hooks_read_them(tmp_path):
    from pytest_invariance.errors import EmbeddingError, LayerNotFoundError

    torch.manual_seed(0)
    m = _Branches(gate=-1e9).eval()  # the branches that call body run
    model = _scripted(m, tmp_path / "branches.pt")
    x = images(3)
    for layer, module in (("body", m.body), ("body.0", m.body[0]), ("body.1", m.body[1])):
        seen = []
        hook = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
        with torch.no_grad():
            m(torch.from_numpy(x))
        hook.remove()
        np.testing.assert_allclose(model.forward(x, layer), seen[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(model.forward(x, "output"), m(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
    # a batch whose if takes the branch without the layer: refused, not a placeholder read as figures
    skip = _scripted(_Branches(gate=1e9).eval(), tmp_path / "skip.pt")
    with pytest.raises(EmbeddingError, match="layer 'body' of .* did not run on this batch: an if of the scripted "
                                             "forward took the branch without it; choose a --layer"):
        skip.forward(x, "body")
    with pytest.raises(LayerNotFoundError, match="'loop' of .* is called inside a loop of the scripted forward.*"
                                                 "package.module:factory"):
        model.forward(x, "loop")


class _CalledOutOfOrder(torch.nn.Module):  # defines `late` before `early`, calls `early` first
    def __init__(self):
        super().__init__()
        self.late, self.early = torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.late(self.early(x))


class _Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3)
        self.body = torch.nn.Sequential(_CalledOutOfOrder(), torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1)))
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))


def test_torchscript_lists_layers_in_the_order_the_eager_module_does(tmp_path, monkeypatch):
    """One rule: a module after the modules it calls, in call order. The factory's listing
    comes from forward hooks; the scripted one, traced or not, must agree with it."""
    (tmp_path / "nested.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom test_model_inputs import _Nested\n\ndef net():\n"
        "    return _Nested()\n" % str(__import__("pathlib").Path(__file__).parent))
    monkeypatch.syspath_prepend(str(tmp_path))
    eager = load_model("nested:net", device="cpu")
    order = [n for n, _ in eager.trace_layers(images(1))]
    assert order == ["stem", "body.0.early", "body.0.late", "body.0", "body.1.0", "body.1", "body", "head", "output"]
    scripted = _scripted(__import__("nested").net().eval(), tmp_path / "n.pt")
    assert [n for n, _ in scripted.trace_layers(images(1))] == order
    assert [n for n, _ in scripted.trace_layers(None)] == order  # no forward needed: the graph's calls
    assert [n for n, _ in eager.trace_layers(None)] == [  # untraced: definition order, children first
        "stem", "body.0.late", "body.0.early", "body.0", "body.1.0", "body.1", "body", "head", "output"]
    __import__("sys").modules.pop("nested", None)


def test_shape_derived_tensors_are_not_layers_and_a_token_first_layer_is_refused(tmp_path):
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    # Declared batch 1: Shape -> Gather -> Cast -> Sqrt is [1] like a per-image row, but no pixel reaches it.
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["feat"]),
             helper.make_node("Shape", ["feat"], ["shp"]),
             helper.make_node("Gather", ["shp", "idx"], ["nf"], axis=0),
             helper.make_node("Cast", ["nf"], ["nff"], to=TensorProto.FLOAT),
             helper.make_node("Sqrt", ["nff"], ["sq"]),
             helper.make_node("Div", ["feat", "sq"], ["scaled"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [out("scaled")], [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b"),
                                                numpy_helper.from_array(np.array([1], dtype=np.int64), "idx")])
    model = load_model(save(graph, tmp_path / "shape.onnx"), device="cpu")
    assert model.layers() == ["feat", "scaled"]
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 8, 8]}})

    class FourTokens(torch.nn.Module):  # sequence-first [T=4, N, D]: as many tokens as probe images
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 4).flatten(2).permute(2, 0, 1)

    class BatchLast(torch.nn.Module):  # [T=4, D, N]: neither leading axis holds the images
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 4).flatten(2).permute(2, 1, 0)

    m = _scripted(FourTokens(), tmp_path / "tokens.pt")  # read with the images on axis 1, as the single image shows
    assert probe(suite, ModelRef("m", m, "output", Preprocess(), user=True, pool="flatten")) is None
    x = images(4)
    np.testing.assert_allclose(m.embed(x, "output", pool="flatten"), torch.nn.functional.avg_pool2d(
        torch.from_numpy(x), 4).flatten(2).transpose(1, 2).reshape(4, -1).numpy(), atol=1e-6)
    m = _scripted(BatchLast(), tmp_path / "last.pt")
    with pytest.raises(EmbeddingError, match="gives 4 rows for 1 image .its first axis is not the batch"):
        probe(suite, ModelRef("m", m, "output", Preprocess(), user=True, pool="flatten"))


# ------------------------------------------------------------------ 2. element types


@pytest.mark.parametrize("dtype,atol", [(TensorProto.FLOAT16, 2e-2), (TensorProto.DOUBLE, 1e-6)])
def test_float16_and_float64_inputs_are_cast_and_come_back_float32(tmp_path, dtype, atol):
    graph = conv_graph(dtype=dtype)
    if dtype == TensorProto.DOUBLE:  # onnxruntime has no float64 Conv: such graphs cast first
        graph = conv_graph(dtype=dtype, pre=[helper.make_node("Cast", ["input"], ["x0"], to=TensorProto.FLOAT)])
        del graph.initializer[:]
        graph.initializer.extend([numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b")])
        graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    model = load_model(save(graph, tmp_path / "m.onnx"), device="cpu")
    x = images(5)
    got = model.embed(x, "feat")
    assert got.dtype == np.float32 and model.contract.dtype in ("float16", "float64")
    np.testing.assert_allclose(got, conv_relu(x).mean(axis=(2, 3)), atol=atol, rtol=atol)


def test_uint8_input_gets_0_255_pixels(tmp_path):
    # An image model that normalises inside the graph: Cast -> * (1/255) -> Conv.
    scale = numpy_helper.from_array(np.array(1 / 255, np.float32), "s")
    pre = [helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["xf", "s"], ["x0"])]
    graph = conv_graph(dtype=TensorProto.UINT8, pre=pre)
    graph.initializer.append(scale)
    model = load_model(save(graph, tmp_path / "u8.onnx"), device="cpu")
    x = images(4)
    assert model.contract.dtype == "uint8"
    expect = conv_relu(np.rint(x * 255).astype(np.float32) / 255).mean(axis=(2, 3))
    np.testing.assert_allclose(model.embed(x, "feat"), expect, atol=1e-5)


# ------------------------------------------------------------------ 3. channels-last inputs and activations


def nhwc_graph(shape=("n", 8, 8, 3), resize=True):
    """A TF-converted graph: NHWC input -> Cast -> Mul -> Transpose -> Conv -> Relu -> Transpose (NHWC feat)
    -> Resize x2 (NHWC up) -> ReduceMean over H, W."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    scales = numpy_helper.from_array(np.array([1, 2, 2, 1], np.float32), "scales")
    nodes = [helper.make_node("Cast", ["input"], ["c"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["c", "one"], ["m"]),
             helper.make_node("Transpose", ["m"], ["x0"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x0", "w", "b"], ["conv"]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("Transpose", ["relu"], ["feat"], perm=[0, 2, 3, 1]),
             helper.make_node("Resize", ["feat", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("ReduceMean", ["up"], ["output"], axes=[1, 2], keepdims=0)]
    inits = [numpy_helper.from_array(W, "w"), numpy_helper.from_array(B, "b"), one, scales]
    return helper.make_graph(nodes, "tf", [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
                             [out("output", rank=2)], inits)


@pytest.mark.parametrize("shape", [("n", 8, 8, 3), ("n", 3, 3, 3)])
def test_channels_last_input_and_activations_are_read_on_the_right_axes(tmp_path, shape):
    # [N, 3, 3, 3] says nothing by its shape; the graph (Cast, Mul, then a Transpose to NCHW) does.
    model = load_model(save(nhwc_graph(shape), tmp_path / "tf.onnx"), device="cpu")
    assert model.contract.layout == "nhwc"
    h = shape[1]
    x = images(5, h=h, w=h)
    ref = conv_relu(x).mean(axis=(2, 3))  # the 4 channel means
    assert model.input_shape == (3, h, h)
    for layer in ("feat", "up", "output"):  # through Resize too: still 4 channel means, not row means
        got = model.embed(x, layer)
        assert got.shape == (5, 4), layer
        np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=layer)


def test_unknown_activation_layout_is_refused_and_the_option_resolves_it(tmp_path):
    shape = numpy_helper.from_array(np.array([0, 4, 6, 6], np.int64), "shape")
    graph = conv_graph(out_name="relu")
    graph.node.append(helper.make_node("Reshape", ["relu", "shape"], ["feat"]))
    graph.initializer.append(shape)
    del graph.output[:]
    graph.output.append(out("feat"))
    path = save(graph, tmp_path / "r.onnx")
    with pytest.raises(EmbeddingError, match=r"axis order .* pass --invariance-layer-layout nchw or"):
        load_model(path, device="cpu").embed(images(2), "feat")
    got = load_model(path, device="cpu", layer_layout="nchw").embed(images(2), "feat")
    np.testing.assert_allclose(got, conv_relu(images(2)).mean(axis=(2, 3)), atol=1e-5)


def test_a_convnext_style_layernorm_and_linear_on_permuted_maps_are_read_channels_last(tmp_path):
    """Transpose -> LayerNormalization (last axis) -> MatMul by a weight keep the axis order: each
    was refused as 'axis order the model's graph does not tell' though docs/models.md said read."""
    class ConvNeXtish(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.stem, self.ln, self.fc = torch.nn.Conv2d(3, 4, 2, 2), torch.nn.LayerNorm(4), torch.nn.Linear(4, 6)

        def forward(self, x):
            return self.fc(self.ln(self.stem(x).permute(0, 2, 3, 1))).mean((1, 2))

    m = ConvNeXtish().eval()
    path = tmp_path / "cnx.onnx"
    torch.onnx.export(m, torch.rand(2, 3, 8, 8), str(path), dynamo=False, input_names=["input"],
                      output_names=["emb"], dynamic_axes={"input": {0: "n"}, "emb": {0: "n"}}, opset_version=17)
    model = load_model(str(path), device="cpu")
    ln, fc = "/ln/LayerNormalization_output_0", "/fc/MatMul_output_0"
    assert (model.activation_layout(ln), model.activation_layout(fc)) == ("nhwc", "nhwc")
    x = images(3)
    with torch.no_grad():
        normed = m.ln(m.stem(torch.from_numpy(x)).permute(0, 2, 3, 1))
        want = {ln: normed.mean((1, 2)).numpy(), fc: (normed @ m.fc.weight.T).mean((1, 2)).numpy()}
    got = model.embed_many(x, [ln, fc])
    for layer in (ln, fc):
        np.testing.assert_allclose(got[layer], want[layer], atol=1e-5)


def test_ambiguous_input_layout_needs_the_option(tmp_path):
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["output"])], "amb",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 4, 3])],
                              [out("output", rank=2)])
    path = save(graph, tmp_path / "amb.onnx")
    with pytest.raises(InputShapeError, match=r"pass --invariance-input-layout nchw or --invariance-input-layout nhwc"):
        load_model(path)
    model = load_model(path, device="cpu", input_layout="nhwc")
    assert model.input_shape == (3, 3, 4)
    x = images(2, c=3, h=3, w=4)
    np.testing.assert_allclose(model.embed(x, "output"), x.transpose(0, 2, 3, 1).reshape(2, -1), atol=0)


# ------------------------------------------------------------------ 4. inputs that are not one image batch


def test_inputs_that_are_not_one_image_batch_are_one_line(tmp_path):
    vec = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "vec",
                            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 10])],
                            [out("output", rank=2)])
    two = helper.make_graph([helper.make_node("Add", ["a", "b"], ["output"])], "two",
                            [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3, 8, 8]),
                             helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3, 8, 8])],
                            [out("output")])
    with pytest.raises(InputShapeError, match=r"^\S+vec.onnx takes 'input' float32\[\?, 10\] \(rank 2\); the suites "
                                              r"feed one image batch \[N, C, H, W\]$"):
        load_model(save(vec, tmp_path / "vec.onnx"))
    with pytest.raises(InputShapeError, match=r"takes 2 inputs \('a' float32\[\?, 3, 8, 8\]; 'b'"):
        load_model(save(two, tmp_path / "two.onnx"))
    empty = onnx.ModelProto()
    empty.CopyFrom(helper.make_model(vec, opset_imports=[helper.make_opsetid("", 17)]))
    del empty.graph.output[:]
    onnx.save(empty, str(tmp_path / "noout.onnx"))
    with pytest.raises(ModelLoadError, match=r"declares no graph outputs"):
        load_model(str(tmp_path / "noout.onnx"))


# ------------------------------------------------------------------ 5. token sequences


def test_token_tensors_are_never_flattened_silently(tmp_path):
    # [N, 5, 4] tokens: token i is x's row i of a fixed projection.
    proj = numpy_helper.from_array(RNG.normal(size=(8, 4)).astype(np.float32), "p")
    shape = numpy_helper.from_array(np.array([0, 5, 8], np.int64), "s")  # [N, 1, 5, 8] -> [N, 5, 8]
    graph = helper.make_graph([helper.make_node("Reshape", ["input", "s"], ["rows"]),
                               helper.make_node("MatMul", ["rows", "p"], ["tokens"])], "vit",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 5, 8])],
                              [out("tokens", rank=3)], [proj, shape])
    model = load_model(save(graph, tmp_path / "tok.onnx"), device="cpu")
    x = images(3, c=1, h=5, w=8)
    tokens = x[:, 0] @ numpy_helper.to_array(proj)  # [3, 5, 4]
    with pytest.raises(EmbeddingError, match=r"token sequence \[N, 5, 4\]; --invariance-pool auto would flatten .* "
                                             r"choose --invariance-pool cls .* or --invariance-pool mean"):
        model.embed(x, "tokens")
    np.testing.assert_allclose(model.embed(x, "tokens", pool="cls"), tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(model.embed(x, "tokens", pool="mean"), tokens.mean(1), atol=1e-5)
    np.testing.assert_allclose(model.embed(x, "tokens", pool="flatten"), tokens.reshape(3, -1), atol=1e-5)


# ------------------------------------------------------------------ 8. identity covers external data


def test_sha256_and_cache_cover_external_data(tmp_path):
    import pandas as pd

    from pytest_invariance.data import ArrayImageSet
    from pytest_invariance.embeddings import EmbeddingCache, extract

    model = helper.make_model(conv_graph(), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    data = ArrayImageSet(np.random.default_rng(5).integers(0, 256, (6, 8, 8), dtype=np.uint8),
                         pd.DataFrame({"y": range(6)}), name="ext")
    from pytest_invariance.embeddings import Preprocess

    pre = Preprocess(channels=3)
    cache = EmbeddingCache(tmp_path / "cache")
    first = load_model(str(path), device="cpu")
    a = extract(first, data, layer="feat", preprocess=pre, cache=cache)
    graph_bytes = path.read_bytes()
    blob = bytearray((tmp_path / "ext.data").read_bytes())
    blob[:4] = np.array([9.0], np.float32).tobytes()  # first conv weight changes; the .onnx file does not
    (tmp_path / "ext.data").write_bytes(bytes(blob))
    assert path.read_bytes() == graph_bytes
    second = load_model(str(path), device="cpu")
    assert second.sha256 != first.sha256
    b = extract(second, data, layer="feat", preprocess=pre, cache=cache)
    assert cache.misses == 2 and not np.allclose(a, b)
