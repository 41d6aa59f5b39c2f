"""The face-perturbation study's embeddings: the neutral level's rows are the unperturbed
images' embeddings, run through the model once and shared by every factor (issue 14)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")  # before onnxruntime: importing onnx after it can abort the process
pytest.importorskip("onnxruntime")

from pytest_invariance.data import ArrayImageSet, PerturbationSpec, PerturbedImageSet  # noqa: E402
from pytest_invariance.embeddings import Preprocess, extract  # noqa: E402
from pytest_invariance.models import load_model  # noqa: E402
from pytest_invariance.testing import export_onnx, tiny_cnn  # noqa: E402


def _faces(n: int = 30) -> ArrayImageSet:
    import pandas as pd

    rng = np.random.default_rng(3)
    return ArrayImageSet(rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                         pd.DataFrame({"identity": np.arange(n) // 3}), name="faces")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.embeddings import _extract
    from pytest_invariance.settings import Settings

    # These tests count the images each extraction runs; the check that re-runs three of the
    # first batch's images alone (batch independence) is tested in test_model_torch.
    monkeypatch.setattr(_extract, "_check_alone", lambda *a: None)

    path = export_onnx(tiny_cnn(), tmp_path / "tiny.onnx")
    model = load_model(str(path), device="cpu")
    seen = []
    real = model.forward_many
    model.forward_many = lambda x, ls: seen.append(np.array(x)) or real(x, ls)
    audit = Audit(Settings(cache_dir=str(tmp_path / "cache"), progress="off", rootdir=str(tmp_path), batch_size=16))
    return audit, ModelRef("tiny", model, model.default_layer, Preprocess(), True), str(path), seen


def test_neutral_rows_are_embedded_once_for_all_factors_and_equal_the_full_extraction(setup):
    from pytest_invariance.studies.faces import perturbed_embeddings

    audit, ref, path, seen = setup
    faces = _faces()
    specs = [(PerturbationSpec("rotation", (-30.0, 0.0, 30.0)), 0.0),
             (PerturbationSpec("brightness", (0.5, 1.0, 1.5)), 1.0),
             (PerturbationSpec("occlusion", (0.0, 0.2)), 0.0)]
    for spec, neutral in specs:
        got = perturbed_embeddings(audit, ref, faces, spec, neutral)
        # The rows of the whole level-major set, extracted as before (another model object, another batch size).
        full = extract(load_model(path, device="cpu"), PerturbedImageSet(faces, spec), batch_size=7)
        np.testing.assert_array_equal(got, full)
    inputs = np.concatenate(seen)
    # 30 unperturbed faces once, plus the 2 + 2 + 1 other levels: 180 images, not 240.
    assert len(inputs) == 30 * (1 + 2 + 2 + 1)
    assert len(np.unique(inputs.reshape(len(inputs), -1), axis=0)) == len(inputs)  # no image run twice


def test_a_neutral_level_that_changes_the_images_is_embedded_as_it_is(setup):
    from pytest_invariance.studies.faces import perturbed_embeddings

    audit, ref, path, seen = setup
    faces = _faces()
    spec = PerturbationSpec("brightness", (0.6, 0.8, 1.2))  # a user's [neutral] brightness = 0.8: not the image
    got = perturbed_embeddings(audit, ref, faces, spec, 0.8)
    np.testing.assert_array_equal(got, extract(load_model(path, device="cpu"), PerturbedImageSet(faces, spec)))
    assert len(np.concatenate(seen)) == 90  # every level run


def test_release_closes_the_sessions_and_the_model_runs_again_with_the_same_numbers(setup):
    audit, ref, path, seen = setup
    faces = _faces(12)
    audit._models[("tiny", "cpu")] = ref.embedder  # as Audit.load keeps it
    first = extract(ref.embedder, faces)
    assert ref.embedder._sessions
    audit.release()  # the plugin calls it after a suite folder's last test
    assert not ref.embedder._sessions
    np.testing.assert_array_equal(extract(ref.embedder, faces), first)


def test_a_closed_onnx_model_reads_its_file_again_and_refuses_one_changed_meanwhile(setup, tmp_path):
    from pytest_invariance.errors import ModelLoadError

    audit, ref, path, seen = setup
    faces = _faces(6)
    first = extract(ref.embedder, faces)
    ref.embedder.close()
    assert ref.embedder.output_shapes() and ref.embedder._proto is not None  # read again
    ref.embedder.close()
    np.testing.assert_array_equal(extract(ref.embedder, faces), first)
    ref.embedder.close()
    export_onnx(tiny_cnn(seed=1), path)  # another model under the same name, mid-run
    with pytest.raises(ModelLoadError, match="changed on disk during the run"):
        extract(ref.embedder, faces)
