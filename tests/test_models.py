"""Model backends: layer lists, intermediate extraction equal to a reference, bad files."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from pytest_invariance.errors import EmbeddingError, InputShapeError, LayerNotFoundError, ModelLoadError  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.testing import export_onnx, tiny_cnn  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return tiny_cnn(seed=1)


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)


def reference_act(net, batch):
    with torch.no_grad():
        return net.act(net.conv(torch.from_numpy(batch))).mean((2, 3)).numpy()


def test_onnx_intermediate_layer_equals_reference(net, batch, tmp_path):
    model = load_model(str(export_onnx(net, tmp_path / "m.onnx")), device="cpu")
    layers = model.layers()
    relu = next(n for n in layers if "act" in n)
    assert model.default_layer == "output" and "output" in layers
    np.testing.assert_allclose(model.embed(batch, relu), reference_act(net, batch), atol=1e-5)
    assert model.embed(batch, "output").shape == (5, 10)
    assert model.input_shape == (1, 28, 28) and model.backend == "onnx"


def test_torchscript_nested_and_hook_layers_equal_reference(net, batch, tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.script(net).save(str(path))
    model = load_model(str(path), device="cpu")
    assert {"output", "conv", "act", "pool", "fc"} <= set(model.layers())
    np.testing.assert_allclose(model.embed(batch, "act"), reference_act(net, batch), atol=1e-5)
    pooled = model.embed(batch, "pool")
    assert pooled.shape == (5, 8)  # [N, 8, 4, 4] is global-average-pooled


def test_torch_export_pt2(net, batch, tmp_path):
    path = tmp_path / "m.pt2"
    batch_dim = torch.export.Dim("n", min=1)
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch_dim},)), str(path))
    model = load_model(str(path), device="cpu")
    assert {"output", "conv", "act", "pool", "fc"} <= set(model.layers())
    np.testing.assert_allclose(model.embed(batch, "act"), reference_act(net, batch), atol=1e-5)


def test_factory_with_weights(net, batch, tmp_path):
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    model = load_model("pytest_invariance.testing:tiny_cnn", device="cpu", weights=str(weights))
    np.testing.assert_allclose(model.embed(batch, "act"), reference_act(net, batch), atol=1e-5)


def test_unknown_layer_lists_real_names(net, tmp_path):
    model = load_model(str(export_onnx(net, tmp_path / "m.onnx")), device="cpu")
    with pytest.raises(LayerNotFoundError) as err:
        model.embed(np.zeros((1, 1, 28, 28), np.float32), "ip1")
    assert "Available layers:" in str(err.value) and "output" in str(err.value)


@pytest.mark.parametrize("content,expect", [
    (b"", "is empty"),
    (b"\x00\x01garbage" * 10, "is not a valid ONNX model"),
    ("truncate", "is not a valid ONNX model"),
])
def test_corrupt_onnx_is_one_clear_error(net, tmp_path, content, expect):
    path = tmp_path / "bad.onnx"
    if content == "truncate":
        good = export_onnx(net, tmp_path / "good.onnx").read_bytes()
        path.write_bytes(good[: len(good) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=expect):
        load_model(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(str(tmp_path / "nope.onnx"))


def test_pickled_module_refused_without_trust(net, batch, tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(net, path)
    with pytest.raises(ModelLoadError, match="--invariance-trust-pickle"):
        load_model(str(path))
    trusted = load_model(str(path), trust_pickle=True, device="cpu")
    np.testing.assert_allclose(trusted.embed(batch, "act"), reference_act(net, batch), atol=1e-5)


def test_state_dict_without_factory_says_what_to_do(net, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ModelLoadError, match="module:factory --invariance-weights"):
        load_model(str(path))


def test_wrong_image_shape(net, tmp_path):
    model = load_model(str(export_onnx(net, tmp_path / "m.onnx")), device="cpu")
    with pytest.raises(InputShapeError, match=r"expects input \[N, 1, 28, 28\] \(C, H, W\) but is fed \[2, 3, 28, 28\]"):
        model.embed(np.zeros((2, 3, 28, 28), np.float32), "output")


def test_nan_embedding_names_first_bad_sample(tmp_path):
    import pandas as pd

    from pytest_invariance.data import ArrayImageSet
    from pytest_invariance.embeddings import extract

    model = load_model(str(export_onnx(tiny_cnn(nan=True), tmp_path / "nan.onnx")), device="cpu")
    images = ArrayImageSet(np.ones((4, 28, 28), np.uint8), pd.DataFrame({"y": range(4)}), name="ones")
    with pytest.raises(EmbeddingError, match="sample 0 contains NaN/Inf"):
        extract(model, images, batch_size=2)
