"""Layer as a dimension (issue 13, items 1-3): several layers from one forward pass, per-layer
checks, identities, baselines and thresholds, the random projection, --invariance-list-layers."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # before onnxruntime: importing onnx after it can abort the process
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torchvision.models.resnet")

from torch import nn  # noqa: E402

from pytest_invariance.data import ArrayImageSet  # noqa: E402
from pytest_invariance.embeddings import EmbeddingCache, LayerProjection, Preprocess, extract, extract_layers  # noqa: E402
from pytest_invariance.errors import LayerNotFoundError  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.models._layers import select_layers  # noqa: E402
from pytest_invariance.testing import ResNetBlocks as Blocks, export_onnx, read_results, tiny_cnn, tiny_vit  # noqa: E402

X = np.random.default_rng(0).random((6, 3, 12, 12), dtype=np.float32)


def _images(n: int, name: str) -> ArrayImageSet:
    import pandas as pd

    return ArrayImageSet(np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8),
                         pd.DataFrame({"label": np.arange(n) % 3}), name=name)


def _export(m: nn.Module, tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.pt2"
    torch.export.save(torch.export.export(m.eval(), (torch.from_numpy(X),),
                                          dynamic_shapes=({0: torch.export.Dim("n", min=1)},)), str(path))
    return str(path)


# ------------------------------------------------------------------ one pass equals separate passes


def test_onnx_one_session_run_reads_every_layer_as_separate_runs_do(tmp_path, monkeypatch):
    path = export_onnx(Blocks().eval(), tmp_path / "blocks.onnx", input_shape=(3, 12, 12))
    model = load_model(str(path), device="cpu")
    layers = [la for la, _ in model.trace_layers(X[:1]) if la.endswith(("Conv_output_0", "Relu_output_0"))]
    layers += [model.default_layer]
    assert len(layers) >= 4
    alone = {la: load_model(str(path), device="cpu").embed(X, la) for la in layers}
    runs = []
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(ort.InferenceSession, "run", lambda self, *a, **k: runs.append(a[0]) or real_run(self, *a, **k))
    together = model.embed_many(X, layers)
    assert runs == [layers]  # one session run with every layer as an output
    for la in layers:
        # Equal up to float32 rounding: onnxruntime fuses ops differently when an
        # intermediate tensor is also an output.
        np.testing.assert_allclose(together[la], alone[la], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("net,layers", [
    (Blocks, ["stem", "block.relu#1", "block.bn2", "block.relu#2", "block", "output"]),
    (tiny_vit, ["attn", "norm", "output"]),  # token layers read by their CLS token
])
def test_torch_hooks_read_every_layer_in_one_forward_as_separate_runs_do(net, layers, tmp_path):
    m = net().eval()
    model = load_model(_export(m, tmp_path, net.__name__), device="cpu")
    pool = "cls" if net is tiny_vit else "auto"
    alone = {la: load_model(_export(m, tmp_path, net.__name__), device="cpu").embed(X, la, pool=pool)
             for la in layers}
    calls = []
    model.module.register_forward_pre_hook(lambda *_: calls.append(1))
    got = model.embed_many(X, layers, pool=pool)
    assert len(calls) == 1
    for la, arr in alone.items():
        np.testing.assert_array_equal(got[la], arr)
    # And against the model computed by hand.
    with torch.no_grad():
        x = torch.from_numpy(X)
        if net is Blocks:
            s = m.stem(x)
            first = torch.relu(m.block.bn1(m.block.conv1(s)))
            np.testing.assert_allclose(got["stem"], s.mean((2, 3)).numpy(), atol=1e-5)
            np.testing.assert_allclose(got["block.relu#1"], first.mean((2, 3)).numpy(), atol=1e-5)
        else:
            np.testing.assert_allclose(got["norm"], m.tokens(x)[:, 0].numpy(), atol=1e-5)
            np.testing.assert_allclose(got["output"], m(x).numpy(), atol=1e-5)


def test_layers_are_resolved_in_forward_order_by_names_and_globs(tmp_path):
    model = load_model(_export(Blocks(), tmp_path, "b"), device="cpu")
    order = [la for la, _ in model.trace_layers(X[:1])]
    assert order.index("block.relu#1") < order.index("block.relu#2") < order.index("block")
    assert order[-1] == "output"
    assert select_layers(order, model.layers(), ["output", "stem", "block.relu#*"], "--invariance-layers",
                         model.path) == ["stem", "block.relu#1", "block.relu#2", "output"]
    assert select_layers(order, model.layers(), ["*"], "--invariance-layers", model.path) == order
    with pytest.raises(LayerNotFoundError, match=r"--invariance-layers 'layer9\*' matches no layer"):
        select_layers(order, model.layers(), ["layer9*"], "--invariance-layers", model.path)
    with pytest.raises(LayerNotFoundError, match=r"--invariance-layers stme: layer 'stme' is not in .*'stem'"):
        select_layers(order, model.layers(), ["stme"], "--invariance-layers", model.path)


def test_sweep_and_single_layer_extractions_share_cache_entries(tmp_path):
    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    images = _images(40, "n")
    layers = [la for la, _ in model.trace_layers()][:3] + [model.default_layer]
    cache = EmbeddingCache(tmp_path / "cache")
    sweep = extract_layers(model, images, layers, preprocess=Preprocess(), batch_size=16, cache=cache)
    assert (cache.hits, cache.misses) == (0, len(layers))
    for la in layers:
        fresh = extract(load_model(str(path), device="cpu"), images, layer=la, batch_size=7)
        np.testing.assert_allclose(sweep[la], fresh, rtol=1e-6, atol=1e-7)  # nor batch size, nor other layers
        np.testing.assert_array_equal(extract(model, images, layer=la, cache=cache), fresh)
    assert (cache.hits, cache.misses) == (len(layers), len(layers))  # the single-layer runs read the sweep's entries


def test_without_the_cache_a_large_set_not_kept_is_still_read_in_one_pass(tmp_path, monkeypatch):
    # A study's large training set is embedded with keep=False; with --invariance-no-cache
    # there is no disk entry to read the other layers back from.
    import pytest_invariance.embeddings as embeddings
    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.settings import Settings

    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    layers = tuple(la for la, _ in model.trace_layers())[:2] + ("output",)
    images = _images(30, "train")
    passes = []
    real = embeddings.extract_layers
    monkeypatch.setattr(embeddings, "extract_layers", lambda e, im, group, **k: passes.append(group) or real(e, im, group, **k))
    audit = Audit(Settings(no_cache=True, progress="off", rootdir=str(tmp_path)))
    ref = ModelRef("tiny", model, layers[0], Preprocess(), True, layers=layers)
    got = {la: audit.embed(ref.at(la), images, keep=False) for la in layers}
    assert passes == [list(layers)]
    for la in layers:  # the same numbers as a one-layer extraction
        np.testing.assert_allclose(got[la], extract(load_model(str(path), device="cpu"), images, layer=la),
                                   rtol=1e-6, atol=1e-7)
    assert not audit._pending  # each handed out once, then dropped
    audit.embed(ref.at(layers[1]), images, keep=False)
    assert passes == [list(layers), [layers[1]]]  # not kept: asked again, read again (one layer)


def test_images_per_forward_are_cut_to_bound_the_raw_activations(tmp_path, monkeypatch):
    from pytest_invariance.embeddings import _extract

    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    images = _images(20, "c")
    layers = [la for la, _ in model.trace_layers()]
    whole = extract_layers(model, images, layers, batch_size=20)
    seen = []
    real = model.forward_many
    monkeypatch.setattr(model, "forward_many", lambda x, ls: seen.append(len(x)) or real(x, ls))
    per_image = 8 * 24 * 24 * 4 * 2 + 8 * 4 * 4 * 4 + 128 * 4 + 10 * 4  # conv, relu, pool, flatten, output
    monkeypatch.setattr(_extract, "_RAW_BYTES", 3 * per_image)
    cut = extract_layers(model, images, layers, batch_size=20)
    # one image to measure, then 3 per forward; after the first 3, up to 3 of them alone (the
    # check that an image's embedding does not depend on its batch)
    alone = len(seen) - 8
    assert 1 <= alone <= 3 and seen == [1, 3] + [1] * alone + [3, 3, 3, 3, 3, 1]
    for la in layers:
        np.testing.assert_allclose(cut[la], whole[la], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ random projection


def test_projection_is_seeded_recorded_and_equals_sklearn_on_the_whole_matrix(tmp_path):
    from sklearn.random_projection import SparseRandomProjection

    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    images = _images(30, "p")
    conv = next(la for la, _ in model.trace_layers() if la.endswith("Conv_output_0"))
    full = extract(model, images, layer=conv, pool="flatten")  # [30, 8 * 24 * 24]
    proj: dict = {}
    small = extract_layers(model, images, [conv, model.default_layer], pool="flatten", batch_size=7,
                           max_dim=64, seed=5, projections=proj)
    assert proj[conv] == {"method": proj[conv]["method"], "seed": 5, "in_dim": full.shape[1], "out_dim": 64}
    assert proj[model.default_layer] is None and small[model.default_layer].shape == (30, 10)
    ref = SparseRandomProjection(n_components=64, random_state=5).fit(full).transform(full)
    np.testing.assert_allclose(small[conv], ref, rtol=1e-5, atol=1e-5)
    again = extract_layers(model, images, [conv], pool="flatten", max_dim=64, seed=5)[conv]
    other = extract_layers(model, images, [conv], pool="flatten", max_dim=64, seed=6)[conv]
    np.testing.assert_array_equal(small[conv], again)
    assert not np.allclose(small[conv], other)
    # Distances survive up to the JL error: about 1/sqrt(64) here.
    d_full = np.linalg.norm(full[:, None] - full[None], axis=-1)[np.triu_indices(30, 1)]
    d_proj = np.linalg.norm(small[conv][:, None] - small[conv][None], axis=-1)[np.triu_indices(30, 1)]
    assert np.median(np.abs(d_proj / d_full - 1)) < 0.2


def test_projection_off_and_below_cap_keep_the_layer():
    x = np.random.default_rng(0).random((3, 100), dtype=np.float32)
    assert LayerProjection(100, max_dim=0, seed=0)(x) is x
    assert LayerProjection(100, max_dim=100, seed=0).record() is None


# ------------------------------------------------------------------ through pytest


def _toy_layers(toy) -> list[str]:
    model = load_model(str(toy.path / "audits" / "toy" / "tiny.onnx"), device="cpu")
    return [la for la, _ in model.trace_layers()]


def test_sweep_runs_each_check_per_layer_with_ids_json_and_run_models(toy):
    layers = _toy_layers(toy)
    conv, out = layers[0], layers[-1]
    result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers",
                                      f"output,{conv}", "-v", "--invariance-progress", "off")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([f"*test_features?model-{conv}? PASSED*", "*test_features?model-output? PASSED*"])
    doc = read_results(toy)
    assert [c["layer"] for c in doc["checks"]] == [conv, "output"]  # sorted by nodeid: forward order here
    assert {c["test"] for c in doc["checks"]} == {"audits/toy/test_toy.py::test_features[model]"}
    assert doc["run"]["models"]["tiny"]["layers"] == [conv, "output"] and "layer" not in doc["run"]["models"]["tiny"]
    assert out == "output"
    # The figures equal one-layer runs' (same cache entries): compare with a fresh single-layer run.
    single = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--layer", conv,
                                      "--invariance-no-cache", "--invariance-json", "one.json")
    assert single.ret == 0
    one = json.loads((toy.path / "one.json").read_text())
    (c1,) = one["checks"]
    assert c1["nodeid"].endswith("test_features[model]") and c1["layer"] == conv
    assert one["run"]["models"]["tiny"]["layer"] == conv and one["run"]["models"]["tiny"]["layers"] == [conv]
    assert c1["value"] == doc["checks"][0]["value"]


def test_layer_qualified_threshold_applies_to_that_layer_only(toy):
    conv = _toy_layers(toy)[0]
    result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers",
                                      f"{conv},output", "--invariance-threshold", f"{conv}.feature_mean=-1000")
    assert result.ret == 1
    by_layer = {c["layer"]: c for c in read_results(toy)["checks"]}
    assert by_layer[conv]["threshold"] == -1000 and not by_layer[conv]["passed"]
    assert by_layer["output"]["threshold"] == 1000 and by_layer["output"]["passed"]
    # A layer and a model qualifier together: LAYER.QUALIFIER.METRIC, at that layer only.
    both = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers",
                                    f"{conv},output", "--invariance-threshold", "output.tiny.feature_mean=-1000")
    assert both.ret == 1
    by_layer = {c["layer"]: c for c in read_results(toy)["checks"]}
    assert by_layer["output"]["threshold"] == -1000 and by_layer[conv]["threshold"] == 1000
    both.stdout.fnmatch_lines(["*feature_mean ?layer=output, model=tiny?: *",
                               "*relax it with --invariance-threshold output.feature_mean=VALUE *"])
    bad = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers",
                                   f"{conv},output", "--invariance-threshold", "conv9.feature_mean=-1000")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --invariance-threshold conv9.feature_mean: 'conv9' is neither a selected "
                              "layer nor a qualifier of the checks (write LAYER.METRIC, QUALIFIER.METRIC or "
                              f"LAYER.QUALIFIER.METRIC); selected layers: {conv}, output; qualifiers: tiny"])


def test_baseline_compares_layer_with_layer_across_sweep_and_single_runs(toy):
    conv = _toy_layers(toy)[0]
    args = ["audits", "--model", "audits/toy/tiny.onnx"]
    assert toy.runpytest_subprocess(*args, "--layer", conv, "--model-version", "v1").ret == 0
    sweep = toy.runpytest_subprocess(*args, "--invariance-layers", f"{conv},output", "--model-version", "v2",
                                     "--invariance-baseline", "v1")
    assert sweep.ret == 0
    by_layer = {c["layer"]: c for c in read_results(toy)["checks"]}
    assert by_layer[conv]["details"]["baseline"] == "v1" and abs(by_layer[conv]["details"]["delta"]) < 1e-6
    assert "baseline" not in by_layer["output"]["details"]  # v1 never read 'output'
    # `cli compare` and the report's trends match checks the same way: (test, layer, metric).
    from pytest_invariance.history import HistoryStore
    from pytest_invariance.report import compare_rows

    store = HistoryStore(toy.path / "reports" / "history.sqlite")
    rows = {(r["layer"], r["change"]) for r in compare_rows(store.run("v1"), store.run("v2"))}
    assert rows == {(conv, "same"), ("output", "new")}
    trend = [(r["tag"], r["layer"]) for r in store.trend_rows() if r["test"].endswith("test_features[model]")]
    assert trend == [("v1", conv), ("v2", conv), ("v2", "output")]
    from pytest_invariance.report._context import build_context

    views = build_context(read_results(toy), None, store.trend_rows(), "v2")["checks"]
    conv_view = next(v for v in views if v["nodeid"].endswith(f"[model-{conv}]"))
    assert [r["tag"] for r in conv_view["trend"]["rows"]] == ["v1", "v2"]


def test_unknown_layer_or_empty_glob_is_one_start_up_error(toy):
    for spec, line in [("conv9", "ERROR: --invariance-layers conv9: layer 'conv9' is not in *"),
                       ("blocks.*", "ERROR: --invariance-layers 'blocks.*' matches no layer of *")]:
        result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers", spec)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([line])
        assert "collected" not in result.stdout.str()


def test_list_layers_prints_names_and_shapes_in_forward_order_and_runs_nothing(toy):
    result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-list-layers")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*tiny.onnx (suite toy): * layers in forward order, shapes of one forward of a 1x28x28 input",
        "  /conv/Conv_output_0 * ?N, 8, 24, 24?",
        "  /act/Relu_output_0 * ?N, 8, 24, 24?",
        "  output * ?N, 10?  (default)",
    ])
    assert "passed" not in result.stdout.str() and not (toy.path / "reports" / "results.json").exists()


def test_projection_is_recorded_in_every_check_and_run_models(toy):
    conv = _toy_layers(toy)[0]
    result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers",
                                      f"{conv},output", "--invariance-pool", "flatten", "--invariance-max-dim", "16",
                                      "--invariance-seed", "3")
    assert result.ret == 0, result.stdout.str()
    doc = read_results(toy)
    by_layer = {c["layer"]: c for c in doc["checks"]}
    assert by_layer[conv]["details"]["projection"]["seed"] == 3
    assert (by_layer[conv]["details"]["projection"]["in_dim"], by_layer[conv]["details"]["projection"]["out_dim"]) \
        == (8 * 24 * 24, 16)
    assert by_layer["output"]["details"]["projection"] is None
    assert doc["run"]["models"]["tiny"]["projections"] == {conv: by_layer[conv]["details"]["projection"]}


def test_a_known_leak_is_excused_only_at_the_layer_it_was_documented_for(tmp_path):
    from pytest_invariance.checks import Suite

    toml = tmp_path / "invariance.toml"
    toml.write_text('[suite]\nname = "toy"\n[models.lenet]\npath = "lenet.onnx"\nlayer = "ip1"\n'
                    '[expected_failures]\n"lenet.angle_mae" = "documented at ip1"\n'
                    '"conv2.angle_mae" = "documented at conv2"\n"feature_mean" = "any model"\n')
    suite = Suite.load(toml)

    def known(metric: str, layer: str) -> str | None:
        return suite.expected_failure(metric, [layer, "lenet"], layer=layer, declared_layer="ip1")

    assert known("angle_mae", "ip1") == "documented at ip1"
    assert known("angle_mae", "conv2") == "documented at conv2"
    assert known("angle_mae", "conv1") is None  # a sweep's other layers fail as failures
    assert known("feature_mean", "ip1") == "any model" and known("feature_mean", "conv1") is None
    assert suite.expected_failure("angle_mae", ["lenet"]) == "documented at ip1"  # no sweep: as before


# ------------------------------------------------------------------ names a new user's models really have


def _rename_tensors(src, dst, names: dict) -> None:
    """Rename tensors of an exported ONNX graph (node outputs, inputs and graph outputs)."""
    import onnx

    model = onnx.load(str(src))
    for node in model.graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
    for out in model.graph.output:
        out.name = names.get(out.name, out.name)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


@pytest.fixture
def odd_onnx(toy):
    """The toy suite's model with its tensors renamed to what exporters really write: '#',
    spaces, commas, brackets, and an output ending '#1'."""
    suite = toy.path / "audits" / "toy"
    src = suite / "tiny.onnx"
    conv, act = [la for la, _ in load_model(str(src), device="cpu").trace_layers()][:2]
    names = {conv: "conv out#1", act: "feat, relu[0]", "output": "logits#1"}
    _rename_tensors(src, suite / "odd.onnx", names)
    return toy, names


def test_odd_onnx_tensor_names_are_selected_exactly_and_listed(odd_onnx):
    toy, names = odd_onnx
    conv, act, out = names.values()
    model = load_model(str(toy.path / "audits/toy/odd.onnx"), device="cpu")
    assert [la for la, _ in model.trace_layers()][:2] == [conv, act] and model.default_layer == out
    # Exact names win over '#k' call indexes and glob characters; a comma is escaped in a list.
    order = [la for la, _ in model.trace_layers()]
    assert select_layers(order, model.layers(), [act, conv, out], "--layer", "m") == [conv, act, out]
    from pytest_invariance.models._layers import split_spec

    assert split_spec(r"feat\, relu[0],logits#1") == [act, out]
    listed = toy.runpytest_subprocess("audits", "--model", "audits/toy/odd.onnx", "--invariance-list-layers")
    assert listed.ret == 0, listed.stderr.str()
    rows = [line.split("  [")[0].strip() for line in listed.stdout.lines if line.startswith("  ")]
    assert rows[:2] == [conv, act] and rows[-1] == out and listed.stdout.lines[-1].endswith("(default)")
    args = ["audits", "--model", "audits/toy/odd.onnx", "--invariance-progress", "off"]
    by_option = toy.runpytest_subprocess(*args, "--layer", conv, "--layer", act, "--layer", out)
    assert by_option.ret == 0, by_option.stdout.str() + by_option.stderr.str()
    first = {c["layer"]: c["value"] for c in read_results(toy)["checks"]}
    by_list = toy.runpytest_subprocess(*args, "--invariance-layers", r"logits#1,feat\, relu[0],conv out#1")
    assert by_list.ret == 0, by_list.stdout.str() + by_list.stderr.str()
    second = {c["layer"]: c["value"] for c in read_results(toy)["checks"]}
    assert list(first) == list(second) == [conv, act, out] and first == second
    # Each figure is that tensor's mean, read by onnxruntime directly.
    import pandas as pd

    from pytest_invariance.data import ArrayImageSet

    rng = np.random.default_rng(0)
    images = ArrayImageSet(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                           pd.DataFrame({"label": np.arange(64) % 4}), name="toy-noise")
    x = np.stack([images[i][0] for i in range(64)]).astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x
    sess = ort.InferenceSession(str(toy.path / "audits/toy/odd.onnx"))
    raw = sess.run([out], {sess.get_inputs()[0].name: x})[0]
    assert first[out] == pytest.approx(float(raw.mean()), rel=1e-5)


# ------------------------------------------------------------------ the factors suite swept over a user's model

ZOO = '''
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock


class Net(nn.Module):
    """Any input size: stem conv -> BasicBlock (relu runs twice) -> tokens [N, H*W, 8] -> LayerNorm -> head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = BasicBlock(8, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        t = self.block(self.stem(x)).flatten(2).transpose(1, 2)
        return self.head(self.norm(t).mean(1))


def net():
    return Net()


def fixed():
    """Built for 32x32 inputs (its Linear reads 4 x 32 x 32 features), though torch declares none."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(1), nn.Linear(4 * 32 * 32, 8))
'''


@pytest.fixture
def factors(pytester):
    """The factors suite, a folder of 120 real PNGs (16x16) labelled with a continuous and a
    binary column, and a dynamic-size model as a factory (zoo_nets:net) and as TorchScript."""
    import shutil
    from pathlib import Path

    import pandas as pd
    from PIL import Image

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "audits" / "factors", pytester.path / "audits" / "factors",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (pytester.path / "zoo_nets.py").write_text(ZOO)
    root = pytester.path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"img/{i:03d}.png")
        rows.append({"image": f"img/{i:03d}.png", "amount": round(float(rng.uniform(0, 10)), 2),
                     "flag": ["no", "yes"][i % 2]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    (root / "invariance.toml").write_text("[data]\nsize = [16, 16]\n")
    pytester.syspathinsert(pytester.path)
    import zoo_nets

    torch.jit.script(zoo_nets.net().eval()).save(str(pytester.path / "net_scripted.pt"))
    sys_modules = __import__("sys").modules
    sys_modules.pop("zoo_nets", None)
    return pytester


def _factors_run(pytester, *args):
    return pytester.runpytest_subprocess("audits/factors", "--invariance-data-dir", "data", "-p", "no:cacheprovider",
                                         "--invariance-no-report", "--invariance-progress", "off", *args)


def test_factors_sweep_takes_thresholds_qualified_by_layer_and_factor(factors):
    # the images' brightness carries amount, so a gate on it can fail as a leak (a gate that
    # chance itself fails, on a figure at chance, is INCONCLUSIVE: checks._verdict)
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(1)
    for _, row in pd.read_csv(factors.path / "data" / "labels.csv").iterrows():
        pixels = 20 * row["amount"] + rng.integers(0, 50, (16, 16, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(factors.path / "data" / row["image"])
    with open(factors.path / "data" / "invariance.toml", "a") as f:
        f.write('[thresholds]\n"head.flag.balanced_error" = 0.0\n')
    result = _factors_run(factors, "--model", "zoo_nets:net", "--invariance-layers", "stem,head", "-k", "not enrollment",
                          "--invariance-threshold", "stem.amount.mae=1000", "--invariance-threshold", "head.mae=0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=3, failed=1)
    by = {(c["layer"], c["details"]["factor"], c["metric"]): c for c in read_results(factors)["checks"]}
    assert by["stem", "amount", "mae"]["threshold"] == 1000 and not by["stem", "amount", "mae"]["passed"]
    assert by["head", "amount", "mae"]["threshold"] == 0 and by["head", "amount", "mae"]["passed"]  # LAYER.metric
    assert by["stem", "amount", "r2"]["threshold"] is None  # only the figure named is gated
    assert by["head", "flag", "balanced_error"]["threshold"] == 0  # the folder's "head.flag.balanced_error"
    assert by["stem", "flag", "balanced_error"]["threshold"] is None  # ... at that layer only
    # The failure names its layer, and its hint relaxes that layer's figure only.
    result.stdout.fnmatch_lines(["*mae ?layer=stem, model=net, factor=amount?: * does not satisfy*",
                                 "*relax it with --invariance-threshold stem.amount.mae=VALUE *"])


def test_a_split_too_thin_for_the_probe_is_one_data_error_per_sweep_and_its_fix_works(factors):
    """A binary level with 3 test images (the loader's 2 per split pass, the SVM's 5 do not):
    ERROR, never FAILED; in full once for two layers; the options it names fix it."""
    import pandas as pd

    labels = factors.path / "data" / "labels.csv"
    table = pd.read_csv(labels)
    table["split"] = ["train"] * 72 + ["val"] * 24 + ["test"] * 24
    table["rare"] = "no"
    for split, k in (("train", 12), ("val", 6), ("test", 3)):
        table.loc[table.index[table["split"] == split][:k], "rare"] = "yes"
    table.to_csv(labels, index=False)
    args = ("--model", "zoo_nets:net", "--layer", "stem", "--layer", "head", "-k", "not enrollment")
    result = _factors_run(factors, *args)
    assert result.ret == 3, result.stdout.str()  # a tool error, not a failed gate
    result.assert_outcomes(passed=4, errors=2)
    out = "\n".join(line for line in result.stdout.lines if not line.startswith("ERROR "))
    # in full once for the two layers, and once in the run's summary line
    assert out.count("study factors/rare could not run: DataError: factor 'rare' cannot be probed: level 'yes' has "
                     "3 image(s) in the test split (train/val/test 12/6/3; the probe needs >= 5 of each level in "
                     "each split)") == 2
    assert out.count("see that error") == 1 and "--invariance-skip-bad" not in result.stdout.str()
    assert "or leave the factor out with --invariance-factor-type rare=ignore" in out
    fixed = _factors_run(factors, *args, "--invariance-factor-type", "rare=ignore")
    assert fixed.ret == 0, fixed.stdout.str()
    fixed.assert_outcomes(passed=4)
    table.loc[table.index[table["split"] == "test"][3:5], "rare"] = "yes"  # more images of that level
    table.to_csv(labels, index=False)
    assert _factors_run(factors, *args).ret == 0


def test_a_factory_that_fails_at_the_fed_size_names_the_size_option_not_the_layer(factors):
    """At start-up (the suite is skipped with the reason) and during extraction (a suite that
    declares no input): the hint is the size the model runs at, and following it works."""
    import numpy as np

    from pytest_invariance._model_check import backend_failure
    from pytest_invariance._outcomes import study_error
    from pytest_invariance.models import load_model

    fix = "pass --invariance-preprocess size=32x32"
    result = _factors_run(factors, "--model", "zoo_nets:fixed", "-k", "not enrollment", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*zoo_nets:fixed fails on suite factors's input float32[[]N, 3, 16, 16[]]: mat1 and "
                                 "mat2 shapes cannot be multiplied *; it runs on a 3x32x32 input, so the input it is "
                                 f"fed (3x16x16) is the fault, not the layer: {fix}"])
    assert "--layer" not in result.stdout.str()
    fixed = _factors_run(factors, "--model", "zoo_nets:fixed", "-k", "not enrollment", "--invariance-preprocess",
                         "size=32x32")
    assert fixed.ret == 0, fixed.stdout.str()
    fixed.assert_outcomes(passed=2)
    e = load_model("zoo_nets:fixed", device="cpu")
    x = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    with pytest.raises(RuntimeError) as exc:
        e.embed_many(x, ["output"])
    line = str(study_error("study mine/output could not run", backend_failure(e, x, ["output"], exc.value)))
    assert line.startswith("study mine/output could not run: EmbeddingError: zoo_nets:fixed fails on a batch of 3 "
                           "images: mat1 and mat2") and line.endswith(fix) and "--layer" not in line
    __import__("sys").modules.pop("zoo_nets", None)


def test_a_threshold_key_that_reads_two_ways_is_one_error(tmp_path):
    import pandas as pd
    from PIL import Image

    from pytest_invariance.data.factor_folder import load_factor_folder
    from pytest_invariance.errors import DataError
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import gated_metrics

    (tmp_path / "d").mkdir()
    for i in range(60):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / "d" / f"{i}.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(60)], "stem": np.arange(60) / 6.0,
                  "flag": ["a", "b"] * 30}).to_csv(tmp_path / "d" / "labels.csv", index=False)
    f = load_factor_folder(tmp_path / "d")
    # 'stem.mae' is the column stem's MAE or the MAE of every factor at layer stem: refused.
    with pytest.raises(DataError, match=r"--invariance-threshold stem.mae: 'stem' reads more than one way "
                                        r"\(layer 'stem'; qualifier 'stem'\)"):
        gated_metrics(f, Settings(threshold=[("stem.mae", 1.0)]), layers=["stem", "head"])
    assert gated_metrics(f, Settings(threshold=[("stem.mae", 1.0)]), layers=["conv"]) == {"stem": ("mae",)}
    assert gated_metrics(f, Settings(threshold=[("conv.stem.mae", 1.0)]), layers=["conv"]) == {}  # at conv only
    with pytest.raises(DataError, match=r"names column 'head', which is not a factor nor a selected layer \(conv\)"):
        gated_metrics(f, Settings(threshold=[("head.mae", 1.0)]), layers=["conv"])


def test_a_threshold_for_a_layer_this_run_does_not_read(tmp_path):
    """The folder's toml may gate layers of a sweep: a run of other layers leaves those keys
    out; the same key on the command line is refused, naming --layer."""
    import pandas as pd
    from PIL import Image

    from pytest_invariance.data.factor_folder import load_factor_folder
    from pytest_invariance.errors import DataError
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import gated_metrics

    (tmp_path / "d").mkdir()
    for i in range(60):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / "d" / f"{i}.png")
    pd.DataFrame({"image": [f"{i}.png" for i in range(60)], "amount": np.arange(60) / 6.0,
                  "flag": ["a", "b"] * 30}).to_csv(tmp_path / "d" / "labels.csv", index=False)
    (tmp_path / "d" / "invariance.toml").write_text('[thresholds]\n"/blk/Add_output_0.amount.mae" = 100\n')
    f = load_factor_folder(tmp_path / "d")
    model = ["/stem/Conv_output_0", "/blk/Add_output_0", "emb"]
    assert gated_metrics(f, Settings(), layers=["emb"], model_layers=model) == {}
    assert gated_metrics(f, Settings(), layers=["/blk/Add_output_0"], model_layers=model) == {}  # gated at that layer
    with pytest.raises(DataError, match=r"--invariance-threshold '/stem/Conv_output_0.mae' names layer "
                                        r"'/stem/Conv_output_0', which this run does not read; select it with --layer"):
        gated_metrics(f, Settings(threshold=[("/stem/Conv_output_0.mae", 1.0)]), layers=["emb"], model_layers=model)


def test_a_factor_named_like_its_layer_keeps_its_layer_and_factor_key():
    from pytest_invariance.checks._suite import lookup_keys

    keys = lookup_keys("mae", ["rotation", "net", "rotation"], layer="rotation")
    assert keys[:2] == ["rotation.net.mae", "rotation.rotation.mae"] and keys[-1] == "mae"


def test_a_layer_the_pool_cannot_read_is_one_error_before_any_test(factors):
    # The model takes any size: its layers can be checked only once the folder gives one.
    result = _factors_run(factors, "--model", "zoo_nets:net", "--invariance-layers", "all")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: zoo_nets:net layer 'norm' is a token sequence ?N, 256, 8?; *choose "
                                 "--invariance-pool cls (token 0) or --invariance-pool mean *"])
    result.stdout.fnmatch_lines(["*no tests ran*"])
    # With xdist the workers collect: one full error per worker, the other tests refer back to it.
    spread = _factors_run(factors, "--model", "zoo_nets:net", "--invariance-layers", "all", "-n", "2")
    # (pytest's short summary lines are left out: under CI=true it does not truncate them)
    out = "\n".join(line for line in spread.stdout.lines if not line.startswith("ERROR "))
    outcomes = spread.parseoutcomes()
    assert spread.ret != 0 and outcomes.get("errors", 0) >= 10 and "failed" not in outcomes and "passed" not in outcomes
    # in full once per worker and once in the run's summary line
    assert 2 <= out.count("is a token sequence") <= 3 and out.count("see that error") >= 10
    # The option it names fixes it.
    fixed = _factors_run(factors, "--model", "zoo_nets:net", "--invariance-layers", "stem,norm", "-k", "not enrollment",
                         "--invariance-pool", "mean")
    assert fixed.ret == 0, fixed.stdout.str()
    fixed.assert_outcomes(passed=4)


@pytest.mark.parametrize("spec", ["zoo_nets:net", "net_scripted.pt"])
def test_bare_name_of_a_module_called_twice_is_one_start_up_error(factors, spec):
    result = _factors_run(factors, "--model", spec, "--layer", "block.relu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: *'block.relu' *runs *per forward; name one call with --layer: "
                                 "block.relu#1, block.relu#2"])
    assert "passed" not in result.stdout.str()


def test_a_call_of_a_module_called_twice_is_read_from_torchscript_as_from_the_factory(factors):
    """TorchScript has no hooks: its '#k' calls are counted in its graph, not refused by the trace."""
    figures = {}
    for spec in ("zoo_nets:net", "net_scripted.pt"):
        result = _factors_run(factors, "--model", spec, "--layer", "block.relu#1", "-k", "not enrollment")
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        figures[spec] = {(c["details"]["factor"], c["metric"]): c["value"] for c in read_results(factors)["checks"]}
    assert figures["net_scripted.pt"] == pytest.approx(figures["zoo_nets:net"], rel=1e-5)


def test_shards_sweep_expands_to_the_layers_they_hold_and_extract_names_its_own_options(factors):
    import sys

    def extract(*args):
        # A fresh process, as a user runs it (the factory's digest covers the files its build reads).
        return factors.run(sys.executable, "-m", "pytest_invariance.cli", "extract", "--suite", "audits/factors",
                           "--data-dir", "data", "--model", "zoo_nets:net", "--progress", "off", *args)

    # Messages of the code extract shares with the plugin name extract's options, not the plugin's.
    for layer, says in [("norm", "choose --pool cls (token 0) or --pool mean"),
                        ("block.relu", "name one call with --layer: block.relu#1, block.relu#2")]:
        bad = extract("--out", "bad", "--layer", layer)
        assert bad.ret == 2 and says in bad.stderr.str() and "--invariance-" not in bad.stderr.str()
    assert extract("--out", "shards", "--layer", "stem", "--layer", "head").ret == 0
    run = ["--model", "zoo_nets:net", "--invariance-embeddings", "shards", "-k", "not enrollment"]
    result = _factors_run(factors, *run, "--invariance-layers", "all")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert {c["layer"] for c in read_results(factors)["checks"]} == {"stem", "head"}
    bad = _factors_run(factors, *run, "--invariance-layers", "stem,norm")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --invariance-layers norm: layer 'norm' is not in the shards of "
                              "--invariance-embeddings *shards (layers of zoo_nets:net they hold). "
                              "Available layers: head, stem"])


def test_a_bundled_model_sweep_with_a_layer_the_pool_cannot_read_is_one_start_up_error(pytester):
    from pytest_invariance.testing import write_toy_suite

    suite = write_toy_suite(pytester.path, "vit.onnx", "output")
    export_onnx(tiny_vit(), suite / "vit.onnx", input_shape=(3, 12, 12))
    toml = suite / "invariance.toml"
    toml.write_text(toml.read_text().replace("input = [1, 28, 28]", "input = [3, 12, 12]"))
    result = pytester.runpytest_subprocess("audits", "--invariance-layers", "all", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    result.stderr.fnmatch_lines(["ERROR: *vit.onnx layer * is a token sequence ?N, *; *(suite toy's bundled model "
                                 "'vit' takes its pool from `pool` in ?models.vit? of *invariance.toml, not from "
                                 "--invariance-pool; or leave that layer out of --invariance-layers)"])
    assert "collected" not in result.stdout.str()


@pytest.mark.parametrize("cached", [True, False])
def test_logits_asked_along_come_from_the_features_pass_and_equal_separate_extractions(tmp_path, cached):
    # The rotated-MNIST study reads the test images' features and then their logits:
    # one pass over the images (decode, rotate, forward) must serve both.
    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.data import PerturbationSpec, PerturbedImageSet
    from pytest_invariance.settings import Settings

    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    feature = [la for la, _ in model.trace_layers()][-2]
    images = PerturbedImageSet(_images(24, "digits"), PerturbationSpec("rotation", (-30.0, 0.0, 30.0)))
    forwards = []
    real = model.forward_many
    model.forward_many = lambda x, ls: forwards.append((tuple(ls), len(x))) or real(x, ls)
    audit = Audit(Settings(no_cache=not cached, cache_dir=str(tmp_path / "cache"), progress="off",
                           rootdir=str(tmp_path), batch_size=32))
    ref = ModelRef("tiny", model, feature, Preprocess(), True)
    X = audit.embed(ref, images, keep=False, also=(model.default_layer,))
    logits = audit.embed(ref, images, layer=model.default_layer, keep=False)
    assert {ls for ls, _ in forwards} == {(feature, model.default_layer)}  # each forward reads both
    # every image run once, plus at most 3 alone (the batch-independence check of the first batch)
    extra = sum(n for _, n in forwards) - len(images)
    assert 1 <= extra <= 3 and sum(n == 1 for _, n in forwards) == extra + 1
    for la, got in ((feature, X), (model.default_layer, logits)):  # as two separate extractions give them
        alone = extract(load_model(str(path), device="cpu"), images, layer=la, batch_size=32)
        np.testing.assert_array_equal(got, alone)
    assert not audit._pending


GRAY = '''
import torch
from torch import nn


def gray():
    """A grayscale model of any input size: conv 1 -> 8 channels, ReLU, global average pool, flatten (8)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval()
'''


def test_a_grayscale_model_of_every_kind_names_the_channels_option(factors):
    """The suite feeds 3 channels. A grayscale factory, TorchScript (scripted, traced), .pt2 and
    ONNX file are each skipped with the same fix, channels=1; following it, each backend gives the
    factory's figures."""
    import json
    import warnings

    (factors.path / "gray_nets.py").write_text(GRAY)
    factors.syspathinsert(factors.path)
    import gray_nets

    net, one = gray_nets.gray(), torch.rand(2, 1, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(str(factors.path / "gray_scripted.pt"))
        torch.jit.trace(net, one).save(str(factors.path / "gray_traced.pt"))
        torch.export.save(torch.export.export(net, (one,), dynamic_shapes=({0: torch.export.Dim("n", min=1, max=512)},)),
                          str(factors.path / "gray.pt2"))
        torch.onnx.export(net, one, str(factors.path / "gray.onnx"), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n"}})
    __import__("sys").modules.pop("gray_nets", None)
    figures = {}
    for model in ("gray_nets:gray", "gray_scripted.pt", "gray_traced.pt", "gray.pt2", "gray.onnx"):
        result = _factors_run(factors, "--model", model, "-k", "not enrollment", "-rs")
        result.assert_outcomes(skipped=2)
        out = result.stdout.str()
        reason = [line for line in out.splitlines() if line.startswith("SKIPPED")][0]
        assert reason.endswith("pass --invariance-preprocess channels=1"), (model, reason)
        assert "--layer" not in reason and "size=" not in reason
        if model == "gray_traced.pt":  # read as the scripted file is
            continue
        result = _factors_run(factors, "--model", model, "-k", "not enrollment", "--invariance-preprocess",
                              "channels=1", f"--invariance-json={model}.json")
        result.assert_outcomes(passed=2)
        checks = json.loads((factors.path / f"{model}.json").read_text())["checks"]
        figures[model] = {(c["details"]["factor"], c["metric"]): c["value"] for c in checks}
    reference = figures.pop("gray_nets:gray")
    for model, got in figures.items():
        assert got.keys() == reference.keys()
        assert all(abs(got[k] - reference[k]) <= 1e-4 * max(1.0, abs(reference[k])) for k in got), model


def test_the_size_a_dynamic_size_model_is_fed_is_said_with_why_and_the_option(factors):
    """A model that declares no input H, W (TorchScript, factory) is fed the folder's [data]
    size; the header says so and names the option, and an ONNX-like declared size is not noted."""
    (factors.path / "data" / "invariance.toml").write_text("[data]\nsize = [24, 24]\n")  # the files are 16x16
    for model in ("net_scripted.pt", "zoo_nets:net"):
        result = _factors_run(factors, "--model", model, "-k", "not enrollment")
        assert result.ret == 0, result.stdout.str() + result.stderr.str()
        result.stdout.fnmatch_lines([f"invariance: suite factors: * preprocessing: size=24x24 * (*{model} declares no "
                                     "input size, so it is fed the suite's images resized to 24x24, the suite's [[]data[]] "
                                     "size; pass --invariance-preprocess size=HxW to feed another)"])
    chosen = _factors_run(factors, "--model", "zoo_nets:net", "-k", "not enrollment", "--invariance-preprocess",
                          "size=16x16")
    chosen.stdout.fnmatch_lines(["invariance: suite factors: * preprocessing: size=16x16*"])
    assert "declares no input size" not in chosen.stdout.str()


def test_the_failure_hint_names_an_expected_failures_key_that_excuses_the_leak(toy):
    import re

    # the suite's own model (its invariance.toml names it): [expected_failures] excuses a leak
    args = ("audits", "--invariance-threshold", "feature_mean=-1000")
    failed = toy.runpytest_subprocess(*args)
    assert failed.ret == 1
    hint = next(line for line in failed.outlines if "under [expected_failures]" in line)
    key, where = re.search(r'record it as a known leak, "([^"]+)" = "why" under \[expected_failures\] there', hint), \
        re.search(r"under \[thresholds\] in (\S+),", hint)
    assert key and where, hint
    toml = toy.path / where.group(1)
    toml.write_text(toml.read_text() + f'\n[expected_failures]\n"{key.group(1)}" = "accepted for this model"\n')
    excused = toy.runpytest_subprocess(*args)
    assert excused.ret == 0
    excused.stdout.fnmatch_lines(["*1 xfailed*"])
    # a --model meets every gate in full: the hint names no [expected_failures]
    user = toy.runpytest_subprocess(*args, "--model", "audits/toy/tiny.onnx")
    assert user.ret == 1
    assert not any("under [expected_failures]" in line for line in user.outlines)
    user.stdout.fnmatch_lines(["*next: if this leak is accepted, relax it with --invariance-threshold feature_mean=VALUE*"])
