"""torch files as people ship them (issue 9, items 5-10): ResNet blocks, ViT tokens, training-mode
exports, fixed-shape torch.export, factories whose weights change, crafted archives."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision.models.resnet")

from torch import nn  # noqa: E402

from pytest_invariance.errors import EmbeddingError, LayerNotFoundError, ModelLoadError  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.models._layers import select_layers  # noqa: E402
from pytest_invariance.testing import ResNetBlocks as Blocks, tiny_vit  # noqa: E402

X = torch.from_numpy(np.random.default_rng(0).random((5, 3, 12, 12), dtype=np.float32))


def block_reference(m: Blocks, x: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        s = m.stem(x)
        first = torch.relu(m.block.bn1(m.block.conv1(s)))
        second = torch.relu(m.block.bn2(m.block.conv2(first)) + s)
    return {"block.relu#1": first.mean((2, 3)).numpy(), "block.relu#2": second.mean((2, 3)).numpy()}


def save_all_kinds(m: nn.Module, tmp_path, x: torch.Tensor, dynamic: bool = True) -> dict[str, str]:
    m = m.eval()
    paths = {"scripted": tmp_path / "s.pt", "traced": tmp_path / "t.pt", "export": tmp_path / "e.pt2"}
    torch.jit.script(m).save(str(paths["scripted"]))
    torch.jit.trace(m, x).save(str(paths["traced"]))
    shapes = ({0: torch.export.Dim("n", min=1)},) if dynamic else None
    torch.export.save(torch.export.export(m, (x,), dynamic_shapes=shapes), str(paths["export"]))
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture
def factory_package(tmp_path, monkeypatch):
    """An importable package ``zoo`` whose factory builds Blocks and loads weights it names itself."""
    pkg = tmp_path / "pkgroot" / "zoo"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(textwrap.dedent(f"""
        import torch
        from pathlib import Path
        sys_path = {str(tmp_path / 'pkgroot')!r}
        WEIGHTS = Path(__file__).parent / "blocks.pt"

        def blocks():
            from test_model_torch import Blocks
            m = Blocks()
            if WEIGHTS.exists():
                m.load_state_dict(torch.load(WEIGHTS, weights_only=True))
            return m.train()  # shipped in training mode: the plugin must put it in eval mode
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    yield pkg
    for name in [n for n in sys.modules if n == "zoo" or n.startswith("zoo.")]:
        del sys.modules[name]


# ------------------------------------------------------------------ 6. a module called twice


@pytest.fixture(params=["factory", "scripted", "traced", "export"])
def blocks(request, tmp_path, factory_package):
    """``(kind, Blocks module, the same weights loaded through that torch backend)``."""
    m = Blocks().eval()
    torch.save(m.state_dict(), factory_package / "blocks.pt")
    spec = "zoo.nets:blocks" if request.param == "factory" else save_all_kinds(m, tmp_path, X)[request.param]
    return request.param, m, load_model(spec, device="cpu")


def test_module_called_twice_every_backend_refuses_the_bare_name_and_reads_each_call(blocks):
    kind, m, model = blocks
    with pytest.raises(LayerNotFoundError, match=r"layer 'block.relu' of .* runs 2 times per forward; name one call "
                                                 r"with --layer: block.relu#1, block.relu#2"):
        model.embed(X.numpy(), "block.relu")
    ref = block_reference(m, X)
    for layer, expect in ref.items():
        np.testing.assert_allclose(model.embed(X.numpy(), layer), expect, atol=1e-5, err_msg=f"{kind} {layer}")
    with pytest.raises(LayerNotFoundError, match="asks for call 3"):
        model.embed(X.numpy(), "block.relu#3")
    np.testing.assert_allclose(model.embed(X.numpy(), "block"), ref["block.relu#2"], atol=1e-5)


def test_layer_changed_in_place_later_is_read_as_computed(blocks):
    # BasicBlock's ReLU(inplace=True) overwrites bn1's output and `out += identity` bn2's:
    # the audit must read each layer as it was produced, not after those in-place ops.
    kind, m, model = blocks
    with torch.no_grad():
        s = m.stem(X)
        bn1 = m.block.bn1(m.block.conv1(s))
        bn2 = m.block.bn2(m.block.conv2(torch.relu(bn1)))
    for layer, expect in (("block.bn1", bn1), ("block.bn2", bn2)):
        assert (expect < 0).any()  # so a ReLU-ed or summed copy could not pass
        np.testing.assert_allclose(model.embed(X.numpy(), layer), expect.mean((2, 3)).numpy(), atol=1e-5,
                                   err_msg=f"{kind} {layer}")


# ------------------------------------------------------------------ 7. batch independence, training mode


def test_factory_in_training_mode_is_put_in_eval_and_batch_1_equals_batch_100(factory_package):
    model = load_model("zoo.nets:blocks", device="cpu")
    x = np.random.default_rng(1).random((100, 3, 12, 12), dtype=np.float32)
    together = model.embed(x, "block.relu#2")
    alone = np.concatenate([model.embed(x[i:i + 1], "block.relu#2") for i in range(100)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("suite_size", [True, False], ids=["suite-size", "preprocess-size"])
@pytest.mark.parametrize("kind", ["export", "traced", "onnx"])
def test_exported_in_training_mode_is_refused_in_one_line(kind, suite_size, tmp_path):
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.embeddings import Preprocess

    m = Blocks().train()
    x = torch.rand(4, 3, 12, 12)
    if kind == "export":
        path = tmp_path / "train.pt2"
        torch.export.save(torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("n", min=1)},)), str(path))
    elif kind == "traced":
        path = tmp_path / "train.pt"
        torch.jit.trace(m, x, check_trace=False).save(str(path))
    else:
        path = tmp_path / "train.onnx"
        torch.onnx.export(m, x, str(path), dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
    model = load_model(str(path), device="cpu")
    # A suite that declares no input size (factors feeds the model at its own size) is checked too.
    suite = Suite("s", tmp_path, {"suite": {"input": [3, 12, 12]}} if suite_size else {})
    ref = ModelRef("m", model, model.default_layer, Preprocess() if suite_size else Preprocess(size=(12, 12)),
                   user=True)
    with pytest.raises(EmbeddingError, match=r"gives different embeddings for the same image in a batch of 4 and "
                                             r"alone .* not in inference mode .* re-export it after model.eval\(\)"):
        probe(suite, ref)


class BrightnessBranch(nn.Module):
    """Its output depends on the batch: a branch on the mean brightness of all its images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.body = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        if bool(x.mean() > 0.5):
            h = h + 1.0
        else:
            h = h - 1.0
        return self.body(h)


@pytest.mark.parametrize("kind", ["eager", "scripted"])
def test_embeddings_that_depend_on_the_batch_are_refused_on_real_images(kind, tmp_path):
    # The start-up probe's random images all take one branch; the first batch of real images
    # (dark and bright) is checked against its darkest, brightest and first image alone.
    import pandas as pd

    from pytest_invariance.data._source import ArrayImageSet
    from pytest_invariance.embeddings._extract import extract_layers

    torch.manual_seed(0)
    m = BrightnessBranch().eval()
    if kind == "scripted":
        path = tmp_path / "m.pt"
        torch.jit.script(m).save(str(path))
        model = load_model(str(path), device="cpu")
    else:
        mod = tmp_path / "branchy_net.py"
        mod.write_text("from test_model_torch import BrightnessBranch\n"
                       "def make():\n    import torch\n    torch.manual_seed(0)\n    return BrightnessBranch().eval()\n")
        sys.path[:0] = [str(tmp_path), str(__import__("pathlib").Path(__file__).parent)]
        try:
            model = load_model("branchy_net:make", device="cpu")
        finally:
            del sys.path[:2]
    pixels = np.r_[np.full((6, 12, 12), 30), np.full((6, 12, 12), 200)].astype(np.uint8)
    images = ArrayImageSet(pixels, pd.DataFrame({"y": np.arange(12) % 2}), name="two-tone")
    with pytest.raises(EmbeddingError, match=r"layer 'body' gives different embeddings for the same image in a "
                                             r"batch of 11 and alone .* branches on a statistic of the batch"):
        extract_layers(model, images, ["body"], batch_size=12)
    # the same images one per batch: no batch to depend on, nothing refused
    assert extract_layers(model, images, ["body"], batch_size=1)["body"].shape == (12, 3)


# ------------------------------------------------------------------ 1. fixed-shape torch.export


def test_fixed_shape_export_is_fed_in_its_batch_size(tmp_path):
    m = Blocks().eval()
    path = save_all_kinds(m, tmp_path, X[:2], dynamic=False)["export"]
    model = load_model(path, device="cpu")
    assert model.contract.batch == 2 and model.input_shape == (3, 12, 12)
    got = model.embed(X.numpy(), "block.relu#1")  # 5 images in batches of 2, the last padded
    np.testing.assert_allclose(got, block_reference(m, X)["block.relu#1"], atol=1e-5)


def test_a_bounded_batch_export_is_fed_within_its_bounds_and_gives_the_unbounded_figures(tmp_path):
    """Dim("n", min=2, max=3): every extraction call above 3 images failed, with a fix ("pick another
    --layer") that could not work. Now calls are capped at max and padded up to min."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance._model_check import probe
    from pytest_invariance.checks import Suite
    from pytest_invariance.data import ArrayImageSet
    from pytest_invariance.embeddings import Preprocess, extract

    m = Blocks().eval()
    path = tmp_path / "bounded.pt2"
    shapes = ({0: torch.export.Dim("n", min=2, max=3)},)
    torch.export.save(torch.export.export(m, (X[:2],), dynamic_shapes=shapes), str(path))
    model = load_model(str(path), device="cpu")
    assert (model.contract.batch, model.contract.batch_min, model.contract.batch_max) == (None, 2, 3)
    reference = block_reference(m, X)["block.relu#1"]
    for n in (1, 2, 3, 5):  # padded to 2, as is, as is, 3 + 2
        np.testing.assert_allclose(model.embed(X[:n].numpy(), "block.relu#1"), reference[:n], atol=1e-5)
    assert probe(Suite("s", tmp_path, {"suite": {"input": [3, 12, 12]}}),
                 ModelRef("m", model, "block.relu#1", Preprocess(), user=True)) is None
    import pandas as pd

    images = ArrayImageSet(X.numpy(), pd.DataFrame({"y": np.arange(5) % 2}), name="t")
    free = tmp_path / "free.pt2"
    torch.export.save(torch.export.export(m, (X[:2],), dynamic_shapes=({0: torch.export.Dim("n")},)), str(free))
    np.testing.assert_allclose(extract(model, images, layer="block.relu#1", batch_size=256),  # float noise only
                               extract(load_model(str(free), device="cpu"), images, layer="block.relu#1"), atol=1e-6)


# ------------------------------------------------------------------ 5. a tiny ViT


@pytest.mark.parametrize("kind", ["export", "onnx"])
def test_vit_tokens_need_cls_or_mean(kind, tmp_path):
    m = tiny_vit(classes=None)
    if kind == "onnx":
        path = tmp_path / "vit.onnx"
        torch.onnx.export(m, X, str(path), dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n"}, "output": {0: "n"}})
        model = load_model(str(path), device="cpu")
        layer = "/norm/LayerNormalization_output_0"
        assert layer in model.layers()
    else:
        path = tmp_path / "vit.pt2"
        torch.export.save(torch.export.export(m, (X,), dynamic_shapes=({0: torch.export.Dim("n", min=1)},)), str(path))
        model = load_model(str(path), device="cpu")
        layer = "norm"
    captured = []
    m.norm.register_forward_hook(lambda _m, _i, o: captured.append(o.detach().numpy()))
    with torch.no_grad():
        m(X)
    tokens = captured[0]
    with pytest.raises(EmbeddingError, match=r"token sequence \[N, 10, 16\]; --invariance-pool auto would flatten"):
        model.embed(X.numpy(), layer)
    np.testing.assert_allclose(model.embed(X.numpy(), layer, pool="cls"), tokens[:, 0], atol=1e-5)
    np.testing.assert_allclose(model.embed(X.numpy(), layer, pool="mean"), tokens.mean(1), atol=1e-5)


def test_channels_last_torch_activation_is_pooled_over_h_w(tmp_path):
    class ConvNeXtish(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(4)
            self.conv = nn.Conv2d(3, 6, 3)
            self.norm = nn.LayerNorm(6)  # acts on the last axis: the block is channels-last here
            self.act = nn.GELU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.norm(self.conv(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    m = ConvNeXtish().eval()
    with torch.no_grad():
        nhwc = m.act(m.norm(m.conv(X).permute(0, 2, 3, 1))).numpy()
    paths = save_all_kinds(m, tmp_path, X)
    for kind, path in paths.items():
        got = load_model(path, device="cpu").embed(X.numpy(), "act")
        np.testing.assert_allclose(got, nhwc.mean((1, 2)), atol=1e-5, err_msg=kind)


# ------------------------------------------------------------------ 8. identity of a factory model


def test_factory_sha256_covers_its_package_and_the_weights_it_loads(factory_package):
    torch.save(Blocks().state_dict(), factory_package / "blocks.pt")
    first = load_model("zoo.nets:blocks", device="cpu").sha256
    assert load_model("zoo.nets:blocks", device="cpu").sha256 == first  # deterministic
    changed = Blocks()
    with torch.no_grad():
        changed.stem.weight.add_(1.0)
    torch.save(changed.state_dict(), factory_package / "blocks.pt")  # the spec names no file; this one changes
    second = load_model("zoo.nets:blocks", device="cpu").sha256
    assert second != first
    (factory_package / "helpers.py").write_text("SCALE = 2\n")  # any source file of the package
    assert load_model("zoo.nets:blocks", device="cpu").sha256 != second


# ------------------------------------------------------------------ 9. crafted archives


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("member", ["sample_inputs", "weights"])
def test_crafted_pt2_runs_no_code_without_trust(member, tmp_path):
    import io
    import json
    import zipfile

    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(Blocks().eval(), (X,)), str(good))
    marker = tmp_path / "PWNED"
    bad = tmp_path / "bad.pt2"
    buf = io.BytesIO()
    torch.save({"x": _Payload(str(marker))}, buf)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if member == "sample_inputs" and info.filename.endswith("sample_inputs/model.pt"):
                data = buf.getvalue()
            if member == "weights" and info.filename.endswith("weights/weight_0"):
                data = buf.getvalue()
            if member == "weights" and info.filename.endswith("model_weights_config.json"):
                config = json.loads(data)
                first = next(k for k, v in config["config"].items() if v["path_name"] == "weight_0")
                config["config"][first]["use_pickle"] = True
                data = json.dumps(config).encode()
            zout.writestr(info, data)
    with pytest.raises(ModelLoadError, match=r"holds pickled Python objects; loading it would run code from the "
                                             r"file\. .* pass --invariance-trust-pickle if you trust it$"):
        load_model(str(bad), device="cpu")
    assert not marker.exists()


def test_permute_in_plain_code_that_keeps_the_shape_is_refused(tmp_path):
    class Hidden(nn.Module):  # conv then a permute in forward code: [N, 10, 10, 10] either way
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.conv = nn.Conv2d(3, 10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).permute(0, 2, 3, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = Hidden()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).mean((1, 2))

    m = Net().eval()
    path = save_all_kinds(m, tmp_path, X)["export"]
    with pytest.raises(EmbeddingError, match=r"layer 'body' is a 4-D map \[5, 10, 10, 10\] whose axis order .* "
                                             r"pass --invariance-layer-layout nchw or --invariance-layer-layout nhwc"):
        load_model(path, device="cpu").embed(X.numpy(), "body")
    with torch.no_grad():
        expect = m.body.conv(X).mean((2, 3)).numpy()  # the 10 channel means
    got = load_model(path, device="cpu", layer_layout="nhwc").embed(X.numpy(), "body")
    np.testing.assert_allclose(got, expect, atol=1e-5)


def test_layer_option_takes_any_name_verbatim_and_the_model_refuses_a_bad_call_index():
    import argparse

    from pytest_invariance.settings import parse_layer

    # ONNX tensors may be called anything: the option keeps the text, the model judges it.
    for name in ("layer1.0.relu#2", "a#1#2", "feat, a b", "x[0]"):
        assert parse_layer(name) == name
    with pytest.raises(argparse.ArgumentTypeError, match="expected a layer name"):
        parse_layer("  ")
    order = ["stem", "block.relu#1", "block.relu#2", "output"]
    for bad in ("block.relu#0", "block.relu#"):
        with pytest.raises(LayerNotFoundError, match=f"--layer {bad}: layer '{bad}' is not in m"):
            select_layers(order, ["stem", "block.relu", "output"], [bad], "--layer", "m")
    with pytest.raises(LayerNotFoundError, match="--layer block.relu#3: layer 'block.relu' of m runs 2 time.s. per "
                                                 "forward; name one of: block.relu#1, block.relu#2"):
        select_layers(order, ["stem", "block.relu", "output"], ["block.relu#3"], "--layer", "m")
    with pytest.raises(LayerNotFoundError, match="--layer block.relu: layer 'block.relu' of m runs more than once "
                                                 "per forward; name one call with --layer: block.relu#1, block.relu#2"):
        select_layers(order, ["stem", "block.relu", "output"], ["block.relu"], "--layer", "m")


class BrightBug(nn.Module):
    """Fails on any batch holding a bright image, at every batch size and input size."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.flatten(1).mean(1) > 0.5).any()):
            raise RuntimeError("numerical blow-up in conv (bug)")
        return self.body(x.mean((2, 3)))


@pytest.mark.parametrize("told", [None, 1])
def test_a_forward_that_fails_on_some_images_is_not_blamed_on_the_batch_or_the_size(told, tmp_path):
    # The first image is dark and runs alone, at any size: before, the failure was blamed on
    # the batch size ("pass --invariance-input-batch 1", even when 1 was given) or the size.
    from dataclasses import replace

    from pytest_invariance._model_check import backend_failure

    path = tmp_path / "bright.pt"
    torch.jit.script(BrightBug().eval()).save(str(path))
    model = load_model(str(path), device="cpu")
    if told:
        model.contract = replace(model.contract, batch=told, batch_source="option")
    x = np.r_[np.full((1, 3, 16, 16), 0.2), np.full((3, 3, 16, 16), 0.8)].astype(np.float32)
    try:
        model.embed_many(x, ["body"], pool="auto")
    except Exception as exc:  # noqa: BLE001 - what extraction meets
        message = str(backend_failure(model, x, ["body"], exc))
    assert message.endswith("numerical blow-up in conv (bug)"), message
    assert "--invariance-input-batch" not in message and "--invariance-preprocess" not in message


_RAW_LOADERS = {  # weights read without Python's open(), so no audit hook sees the file
    "torch.from_file": "torch.from_file(str(W), size=n, dtype=torch.float32)",
    "numpy.fromfile": "torch.from_numpy(np.fromfile(str(W), dtype=np.float32))",
}


@pytest.mark.parametrize("loader", list(_RAW_LOADERS))
def test_factory_sha256_covers_weights_read_without_open_and_is_the_same_in_another_process(loader, tmp_path,
                                                                                             monkeypatch):
    import subprocess

    root = tmp_path / "src"
    (root / "rawzoo").mkdir(parents=True)
    (root / "rawzoo" / "__init__.py").write_text(textwrap.dedent(f"""
        import numpy as np, torch
        from pathlib import Path
        from torch import nn
        W = Path(__file__).parent / "weights.bin"

        def net():
            m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
            n = sum(p.numel() for p in m.state_dict().values())
            flat = {_RAW_LOADERS[loader]}
            sd, i = {{}}, 0
            for k, v in m.state_dict().items():
                sd[k] = flat[i:i + v.numel()].view_as(v); i += v.numel()
            m.load_state_dict(sd)
            return m
    """))
    monkeypatch.syspath_prepend(str(root))
    weights = root / "rawzoo" / "weights.bin"
    np.random.default_rng(0).random(4 * 3 * 9 + 4, dtype=np.float32).tofile(weights)
    try:
        first = load_model("rawzoo:net", device="cpu").sha256
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from pytest_invariance.models import load_model; "
                "print(load_model('rawzoo:net', device='cpu').sha256)")
        other = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
        assert other.stdout.strip() == first  # no address or id() in it
        np.random.default_rng(1).random(4 * 3 * 9 + 4, dtype=np.float32).tofile(weights)
        assert load_model("rawzoo:net", device="cpu").sha256 != first
    finally:
        sys.modules.pop("rawzoo", None)


def test_factory_sha256_covers_code_in_another_top_level_package(tmp_path, monkeypatch):
    """``entry:net`` builds ``backbones.cnn.Net``: an edit of its forward changes the digest;
    an unseeded random init builds the same model (and digest) in every process."""
    import importlib
    import subprocess

    root = tmp_path / "src"
    (root / "entry").mkdir(parents=True)
    (root / "backbones").mkdir()
    (root / "entry" / "__init__.py").write_text("def net():\n    from backbones.cnn import Net\n    return Net()\n")
    (root / "backbones" / "__init__.py").write_text("")
    (root / "backbones" / "ops.py").write_text("def act(x):\n    return x.relu()\n")
    cnn = textwrap.dedent("""
        import torch
        from torch import nn
        from backbones.ops import act

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 4, 3)  # left at its random init

            def forward(self, x):
                return act(self.conv(x)).mean((2, 3))
    """)
    (root / "backbones" / "cnn.py").write_text(cnn)
    monkeypatch.syspath_prepend(str(root))

    def digest() -> str:
        for name in [n for n in sys.modules if n.split(".")[0] in ("entry", "backbones")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        return load_model("entry:net", device="cpu").sha256

    try:
        first = digest()
        code = ("import sys; sys.path.insert(0, sys.argv[1]); from pytest_invariance.models import load_model; "
                "print(load_model('entry:net', device='cpu').sha256)")
        other = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
        assert other.stdout.strip() == first
        (root / "backbones" / "cnn.py").write_text(cnn.replace(".mean((2, 3))", ".amax((2, 3))"))
        second = digest()
        assert second != first  # the class's own file, in another top-level package
        (root / "backbones" / "ops.py").write_text("def act(x):\n    return x.sigmoid()\n")
        assert digest() != second  # a helper module the forward's module imports
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("entry", "backbones")]:
            del sys.modules[name]
