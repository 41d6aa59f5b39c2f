"""Rotated MNIST (paper §4): how much of the rotation angle survives in ip1.

One test per figure, so that a known leak xfails alone; the study runs once per model.
"""
from __future__ import annotations

import pytest

from pytest_invariance.studies.mnist_rotation import Protocol, no_classifier, run_study


@pytest.fixture
def study(invariance_model, invariance_audit, invariance_suite):
    protocol = Protocol.from_config(invariance_suite.section("protocol"))
    return invariance_audit.memo(("mnist_rotation", invariance_model.embedder.sha256, invariance_model.layer, invariance_model.key),
                                 lambda: run_study(invariance_audit, invariance_model, protocol,
                                                   where=str(invariance_suite.root / "invariance.toml")))


def _check(check, study, model, metric, plots=(), **details):
    if metric not in study:
        pytest.skip(f"{no_classifier(model)}, so {metric} is not defined")
    check(metric, study[metric], details={"model": model.name, **details},
          plots=[study["plots"][p] for p in plots])


def test_softmax_accuracy(invariance_check, study, invariance_model):
    _check(invariance_check, study, invariance_model, "softmax_accuracy")


def test_mav_accuracy(invariance_check, study, invariance_model):
    # the task at the audited layer: the report draws it beside the angle across depth
    _check(invariance_check, study, invariance_model, "mav_accuracy", role="task")


def test_mav_accuracy_drop(invariance_check, study, invariance_model):
    _check(invariance_check, study, invariance_model, "mav_accuracy_drop")


def test_per_angle_mav_accuracy(invariance_check, study, invariance_model):
    _check(invariance_check, study, invariance_model, "per_angle_mav_accuracy")


def test_angle_mae(invariance_check, study, invariance_model):
    _check(invariance_check, study, invariance_model, "angle_mae")
    _check(invariance_check, study, invariance_model, "angle_mae_std")


def test_top10_variance_share(invariance_check, study, invariance_model):
    _check(invariance_check, study, invariance_model, "top10_variance_share",
           plots=("scree", "heatmap", "block_diagonal"))


# --- Stronger probes and concept erasure (pytest_invariance.studies.erasure; docs/probes.md).


@pytest.fixture
def extras(invariance_model, invariance_audit, invariance_suite, study):
    from pytest_invariance.studies.erasure import ProbeExtras, mnist_extras

    cfg = ProbeExtras.from_config(invariance_suite.section("probes"))
    protocol = Protocol.from_config(invariance_suite.section("protocol"))
    return invariance_audit.memo(("mnist_rotation.extras", invariance_model.embedder.sha256, invariance_model.layer,
                                  invariance_model.key),
                                 lambda: mnist_extras(invariance_audit, invariance_model, protocol, cfg))


def test_angle_mae_mlp(invariance_check, extras, invariance_model):
    for metric in ("angle_mae_mlp", "angle_mae_mlp_control", "angle_mae_mlp_selectivity"):
        _check(invariance_check, extras, invariance_model, metric)


def test_angle_mae_selectivity(invariance_check, extras, invariance_model):
    for metric in ("angle_mae_control", "angle_mae_selectivity"):
        _check(invariance_check, extras, invariance_model, metric)


@pytest.fixture
def erased(invariance_model, invariance_audit, invariance_suite, study, extras):
    from pytest_invariance.studies.erasure import ERASE_HINT, ProbeExtras, mnist_erasure

    if not invariance_audit.settings.erase:
        pytest.skip(ERASE_HINT)
    cfg = ProbeExtras.from_config(invariance_suite.section("probes"))
    protocol = Protocol.from_config(invariance_suite.section("protocol"))
    return invariance_audit.memo(
        ("mnist_rotation.erasure", invariance_model.embedder.sha256, invariance_model.layer, invariance_model.key),
        lambda: mnist_erasure(invariance_audit, invariance_model, protocol, cfg, {**study, **extras}))


def test_angle_erasure(invariance_check, invariance_model, erased):
    _check(invariance_check, erased, invariance_model, "angle_mae_erased", plots=("erasure_table", "erasure_bars"))
    for metric in ("angle_mae_mlp_erased", "mav_accuracy_erased", "mav_accuracy_erasure_cost"):
        _check(invariance_check, erased, invariance_model, metric)
