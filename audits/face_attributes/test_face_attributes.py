"""Paper Sec. 3.1 / Fig. 2: how well balanced linear SVMs recover CelebA's 40 attributes.

One test per attribute (the id is the CelebA name) with three checks, ``fn_rate`` and
``fp_rate`` (Fig. 2) and ``balanced_error`` (their mean, which the suite gates);
``test_attribute_overview`` records the mean balanced error per group
(``group_balanced_error``, measured; a gate ``GROUP.balanced_error`` gates each attribute
of the group) and carries the Fig. 2 plot. The SVMs are fitted once per model (``invariance_audit.memo``).
"""
from __future__ import annotations

import pytest

from pytest_invariance.data.celeba import ATTRIBUTES, attribute_groups
from pytest_invariance.studies.faces import attribute_study, celeba_for_suite, svm_max_iter

GROUP = {name: group for group, names in attribute_groups().items() for name in names}


def _study(audit, ref, suite) -> dict:
    return audit.memo(("face_attributes", ref.name, ref.layer, ref.embedder.sha256, ref.key), lambda: attribute_study(
        audit, ref, celeba_for_suite(audit, suite), attributes=ATTRIBUTES, groups=GROUP,
        C_grid=suite.section("celeba").get("C_grid"), where=str(suite.root / "invariance.toml"),
        max_iter=svm_max_iter(suite.section("probes"), str(suite.root / "invariance.toml"))))


@pytest.fixture
def study(invariance_model, invariance_audit, invariance_suite) -> dict:
    # Run in setup: a study that cannot run is a pytest ERROR (JUnit <error>), once per test.
    return _study(invariance_audit, invariance_model, invariance_suite)


def _data(study: dict) -> dict:
    """What the loader did (skipped images, RGB conversions, crop), carried by every check."""
    return {"n_skipped": sum(d.get("n_skipped", 0) for d in study["data"].values()), "data": study["data"],
            "crop": study["data"]["test"].get("crop")}


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_attribute(attribute, study, invariance_model, invariance_check):
    if attribute in study["not_measurable"]:
        pytest.skip(f"{attribute} not measurable: {study['not_measurable'][attribute]}")
    fig = study["attributes"][attribute]
    base = {"model": invariance_model.name, "attribute": attribute, "group": GROUP[attribute], **_data(study)}
    invariance_check("fn_rate", fig["fn_rate"], details={
        **base, "reading": "share of test images WITH the attribute that the probe calls absent; chance = 1 - q, "
                           "q the probe's share of test images called present"})
    invariance_check("fp_rate", fig["fp_rate"], details={
        **base, "reading": "share of test images WITHOUT the attribute that the probe calls present; chance = q, "
                           "the probe's positive share"})
    invariance_check("balanced_error", fig["balanced_error"], details={
        **base, "reading": "(fn_rate + fp_rate) / 2; 0.5 = chance wherever the probe's threshold sits"})


def test_attribute_overview(study, invariance_model, invariance_check):
    for i, (group, est) in enumerate(study["groups"].items()):
        invariance_check("group_balanced_error", est, plots=[study["plot"]] if i == 0 else None, details={
            "model": invariance_model.name, "group": group, "images": study["n"], **_data(study),
            "not_measurable": study["not_measurable"],
            "reading": "mean over the group's attributes of (fn_rate + fp_rate) / 2; 0.5 = chance"})
