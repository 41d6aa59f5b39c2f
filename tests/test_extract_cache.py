"""Extraction equals the direct model call; the cache keys on everything and is atomic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")

from pytest_invariance.data import ArrayImageSet, PerturbationSpec, PerturbedImageSet  # noqa: E402
from pytest_invariance.embeddings import EmbeddingCache, Preprocess, extract  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.testing import export_onnx, tiny_cnn  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model(str(export_onnx(tiny_cnn(), tmp_path_factory.mktemp("m") / "m.onnx")), device="cpu")


@pytest.fixture
def images():
    rng = np.random.default_rng(3)
    return ArrayImageSet(rng.integers(0, 256, (37, 28, 28), dtype=np.uint8), pd.DataFrame({"y": np.arange(37) % 3}), name="t")


def test_batched_extraction_equals_one_call(model, images):
    full = np.stack([images[i].numpy() for i in range(len(images))])
    direct = model.embed(full, "output")
    np.testing.assert_allclose(extract(model, images, batch_size=8), direct, atol=1e-5)


def test_cache_hit_and_key(model, images, tmp_path):
    cache = EmbeddingCache(tmp_path)
    a = extract(model, images, cache=cache, batch_size=16)
    b = extract(model, images, cache=cache, batch_size=16)
    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(a, b)
    extract(model, images, cache=cache, preprocess=Preprocess(scale=2.0))  # new preprocessing: new key
    rotated = PerturbedImageSet(images, PerturbationSpec("rotation", (0.0, 30.0)))
    extract(model, rotated, cache=cache)
    assert cache.misses == 3
    assert not list(tmp_path.glob("*.tmp")), "no temp files left behind"


def test_an_edit_of_the_code_that_makes_embeddings_misses_the_cache(model, images, tmp_path, monkeypatch):
    # the key held the plugin version but not its source: a perturbation's interpolation changed
    # under an unchanged version served the embeddings made before the change (verify14 F2)
    from pytest_invariance import _figures

    cache = EmbeddingCache(tmp_path)
    extract(model, images, cache=cache)
    real = _figures.source_digest
    monkeypatch.setattr(_figures, "source_digest", lambda *sub: real(*sub) + ("-edited" if "data" in sub else ""))
    extract(model, images, cache=cache)
    assert (cache.misses, cache.hits) == (2, 0)
    monkeypatch.setattr(_figures, "source_digest", lambda *sub: real(*sub) + ("-edited" if "probes" in sub else ""))
    extract(model, images, cache=cache)  # an edit outside data/, embeddings/, models/: same embeddings
    assert (cache.misses, cache.hits) == (2, 1)


def test_corrupt_cache_entry_is_recomputed(model, images, tmp_path):
    cache = EmbeddingCache(tmp_path)
    a = extract(model, images, cache=cache)
    for f in tmp_path.glob("*.np[yz]"):
        f.write_bytes(b"broken")
    b = extract(model, images, cache=cache)
    np.testing.assert_array_equal(a, b)
    assert cache.misses == 2


def test_perturbed_set_labels_are_exact(images):
    spec = PerturbationSpec("rotation", (-45, 0, 45))
    s = PerturbedImageSet(images, spec)
    assert len(s) == 3 * len(images)
    assert list(s.labels["rotation"].unique()) == [-45.0, 0.0, 45.0]
    np.testing.assert_allclose(s[len(images) + 5].numpy(), images[5].numpy())  # level 0 is the identity


def test_preprocess_resize_channels_prewhiten():
    import torch

    x = torch.rand(2, 1, 25, 25)
    y = Preprocess(size=(160, 160), channels=3, prewhiten=True)(x)
    assert y.shape == (2, 3, 160, 160)
    assert torch.allclose(y.reshape(2, -1).mean(1), torch.zeros(2), atol=1e-4)


def test_batched_fetch_equals_per_item(images):
    from pytest_invariance.data._source import fetch_batch

    s = PerturbedImageSet(images, PerturbationSpec("rotation", (-30.0, 0.0, 30.0)))
    idx = [0, 5, len(images) + 2, 2 * len(images) + 7, 1]  # crosses levels, out of order
    batched = fetch_batch(s, idx).numpy()
    single = np.stack([s[i].numpy() for i in idx])
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_float16_extraction_does_not_depend_on_where_the_first_overflow_falls(model):
    # Dark images stay in half range; the last one, bright and scaled up, does not: the whole
    # layer must then be full float32, whatever the batch size (no half-rounded rows before it).
    pixels = np.zeros((20, 28, 28), dtype=np.uint8)
    pixels[::3] = 40
    pixels[-1] = 255
    images = ArrayImageSet(pixels, pd.DataFrame({"y": np.arange(20) % 2}), name="overflow")
    pre = Preprocess(scale=3e5)
    full = extract(model, images, preprocess=pre, batch_size=20)
    assert np.abs(full).max() > np.finfo(np.float16).max > np.abs(full[:-1]).max()
    for batch_size in (4, 7, 20):
        half = extract(model, images, preprocess=pre, batch_size=batch_size, dtype="float16")
        assert half.dtype == np.float32
        np.testing.assert_array_equal(half, full)
    # in range everywhere: rounded to half precision, the same for every batch size
    small = extract(model, images, preprocess=Preprocess(scale=1.0), batch_size=20)
    for batch_size in (4, 20):
        half = extract(model, images, preprocess=Preprocess(scale=1.0), batch_size=batch_size, dtype="float16")
        assert half.dtype == np.float16
        np.testing.assert_array_equal(half, small.astype(np.float16))


def test_image_files_are_decoded_straight_to_the_models_size(tmp_path):
    """A fixed-size model reads files resized once (files at its own size: not resized at all),
    whatever size the loader was set to; a dynamic-size model on the factors suite is fed
    the folder's size and its preprocessing says so."""
    import onnxruntime as ort
    from PIL import Image

    from pytest_invariance._audit import Audit
    from pathlib import Path

    from pytest_invariance.checks import Suite
    from pytest_invariance.data.factor_folder import FactorFolder
    from pytest_invariance.data.folder import FileImageSet, files_fingerprint
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.factors import folder_suite
    from pytest_invariance.testing import grid_cnn

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    paths = [tmp_path / f"{i}.png" for i in range(6)]
    for p, a in zip(paths, pixels):
        Image.fromarray(a).save(p)
    images = FileImageSet(paths, pd.DataFrame({"image": [p.name for p in paths]}), size=(160, 160),
                          fingerprint=files_fingerprint(paths, []))
    import torch

    fixed = export_onnx(grid_cnn(4, 3, 5), tmp_path / "fixed.onnx", input_shape=(3, 32, 32))
    got = extract(load_model(str(fixed)), images, preprocess=Preprocess(size=(32, 32)))
    sess = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": (pixels.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # was 32 -> 160 -> 32: ~1e-3 off

    # dynamic H, W: fed the folder's [data] size, recorded in its preprocessing
    torch.onnx.export(grid_cnn(4, 3, 5), torch.zeros(1, 3, 32, 32), str(tmp_path / "dyn.onnx"), dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}, "output": {0: "n"}})

    folder = FactorFolder(tmp_path, images, {}, np.array(["train"] * 6), "seeded", None)
    base = Suite.load(Path(__file__).resolve().parents[1] / "audits" / "factors" / "invariance.toml")
    suite = folder_suite(base, folder)
    for path, size in ((tmp_path / "dyn.onnx", (160, 160)), (fixed, (32, 32))):
        ref = Audit(Settings(model=str(path))).model(suite, "facenet")
        assert ref.preprocess.size == size and f"size={size[0]}x{size[1]}" in ref.preprocess.describe()


def test_a_nan_embedding_names_its_image_file(tmp_path):
    from PIL import Image

    from pytest_invariance.data.folder import FileImageSet, files_fingerprint
    from pytest_invariance.errors import EmbeddingError

    paths = [tmp_path / f"face_{i}.png" for i in range(3)]
    for p in paths:
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(p)
    images = FileImageSet(paths, pd.DataFrame({"image": [p.name for p in paths]}), size=(28, 28),
                          fingerprint=files_fingerprint(paths, []))
    nan = load_model(str(export_onnx(tiny_cnn(nan=True), tmp_path / "nan.onnx")))
    with pytest.raises(EmbeddingError, match=r"embedding of image 'face_0.png' \(row 0\) contains NaN/Inf"):
        extract(nan, images, preprocess=Preprocess(channels=1))


def test_nan_for_some_images_is_named_as_nan_not_as_a_batch_dependent_model(tmp_path):
    """NaN only for dark images, none of them first: the batch-vs-alone comparison met the NaN
    (max difference nan) and blamed eval mode; the image is named at any batch size."""
    import torch

    from pytest_invariance.errors import EmbeddingError

    class DarkNaN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_cnn(seed=1)

        def forward(self, x):
            return self.net(x) * torch.sqrt(x.mean((1, 2, 3))[:, None] - 0.3)

    pixels = np.random.default_rng(0).integers(100, 256, (12, 28, 28), dtype=np.uint8)
    pixels[5] = 0  # dark: NaN
    images = ArrayImageSet(pixels, pd.DataFrame({"y": np.arange(12) % 2}), name="t")
    model = load_model(str(export_onnx(DarkNaN().eval(), tmp_path / "dark.onnx")), device="cpu")
    for batch_size in (1, 4, 12):
        with pytest.raises(EmbeddingError, match=r"embedding of sample 5 contains NaN/Inf") as raised:
            extract(model, images, batch_size=batch_size)
        assert "inference mode" not in str(raised.value)
