"""Per factor: is the level predictable from the embedding, and does enrollment survive it?

Levels come from this folder's invariance.toml, so the test ids are the factor names.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_invariance.studies.faces import perturbation_specs, perturbation_study

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG = tomllib.loads((Path(__file__).parent / "invariance.toml").read_text())
SPECS = {spec.name: (spec, neutral) for spec, neutral in
         perturbation_specs(CONFIG.get("perturbations", {}), CONFIG.get("neutral", {}))}


def _study(audit, ref, factor: str) -> dict:
    from pytest_invariance.data.faces import load_lfw_faces

    data = CONFIG.get("data", {})
    return audit.memo(("face_perturbation", ref.name, ref.layer, factor, ref.key), lambda: perturbation_study(
        audit, ref, load_lfw_faces(), [SPECS[factor]], identity=data.get("identity", "identity"),
        train_fraction=data.get("train_fraction", 0.7), absolute=data.get("absolute", ()),
        n_splits=data.get("n_splits", 20))[factor])


@pytest.fixture
def study(factor, invariance_model, invariance_audit) -> dict:
    # Run in setup: a study that cannot run is a pytest ERROR (JUnit <error>), once per test.
    return _study(invariance_audit, invariance_model, factor)


@pytest.mark.parametrize("factor", list(SPECS))
def test_factor(factor, study, invariance_model, invariance_check):
    fig = study
    base = {"model": invariance_model.name, "factor": factor, "unit": fig["unit"]}
    mae = fig["mae"]
    invariance_check(f"{factor}_mae", mae, details={
        **base, "target": fig["target"], "split": f"by identity, mean of {mae.details['n_repeats']} seeded splits",
        "reading": f"MAE in {fig['unit']} of a ridge regression; chance = predicting the training mean "
                   f"({mae.chance:.3g}); far below chance means the embedding encodes the level"})
    k = fig["strongest"]
    r1 = fig["rank1"]
    invariance_check(f"rank1_{factor}", r1[k], plots=[fig["plot"]], details={
        **base, "role": "task", "level": fig["levels"][k], "gallery_level": fig["neutral"],
        "per_level": {f"{lv:g}": round(e.value, 4) for lv, e in zip(fig["levels"], r1)},
        "note": f"gallery = the unperturbed images (level {fig['neutral']:g}); at that level the probes are "
                "the gallery images themselves, so rank-1 = 1 by construction; the other levels are the figures"})


# --- Stronger probes and concept erasure (pytest_invariance.studies.erasure; docs/probes.md).


def _extras(audit, ref, factor: str, erase: bool) -> dict:
    from pytest_invariance.data.faces import load_lfw_faces
    from pytest_invariance.studies.erasure import ProbeExtras, perturbation_extras

    data, (spec, neutral) = CONFIG.get("data", {}), SPECS[factor]
    cfg = ProbeExtras.from_config(CONFIG.get("probes", {}))
    return audit.memo(("face_perturbation.extras", ref.name, ref.layer, factor, erase, ref.key), lambda: perturbation_extras(
        audit, ref, load_lfw_faces(), spec, neutral, identity=data.get("identity", "identity"),
        train_fraction=data.get("train_fraction", 0.7), absolute=factor in data.get("absolute", ()), cfg=cfg,
        erase=erase))


@pytest.fixture
def extras(factor, invariance_model, invariance_audit) -> dict:
    # Run in setup, like the study: one that cannot run is a pytest ERROR.
    return _extras(invariance_audit, invariance_model, factor, invariance_audit.settings.erase)


@pytest.fixture
def erased(factor, invariance_model, invariance_audit) -> dict:
    from pytest_invariance.studies.erasure import ERASE_HINT

    if not invariance_audit.settings.erase:
        pytest.skip(ERASE_HINT)
    return _extras(invariance_audit, invariance_model, factor, True)


@pytest.mark.parametrize("factor", list(SPECS))
def test_factor_mlp(factor, extras, invariance_model, invariance_check):
    base = {"model": invariance_model.name, "factor": factor}
    for metric in (f"{factor}_mae_mlp", f"{factor}_mae_mlp_control", f"{factor}_mae_mlp_selectivity",
                   f"{factor}_mae_control", f"{factor}_mae_selectivity"):
        invariance_check(metric, extras[metric], details=dict(base))


@pytest.mark.parametrize("factor", list(SPECS))
def test_factor_erasure(factor, erased, invariance_model, invariance_check):
    base = {"model": invariance_model.name, "factor": factor}
    plots = erased["plots"]
    invariance_check(f"{factor}_mae_erased", erased[f"{factor}_mae_erased"], details=dict(base),
                     plots=[plots["erasure_table"], plots["erasure_bars"]])
    for metric in (f"{factor}_mae_mlp_erased", f"rank1_{factor}_erased", f"rank1_{factor}_erasure_cost",
                   f"tar_{factor}_erased", f"tar_{factor}_erasure_cost"):
        invariance_check(metric, erased[metric], details=dict(base))
