"""Paper Sec. 3.2 / Table 1: pose angles regressed linearly from the embedding.

One test per angle (yaw, pitch, roll) with one ``{angle}_mae`` check per |angle| bin and
one for the total (``details.bin``, ``details.count``); the total carries Table 1.
"""
from __future__ import annotations

import pytest

from pytest_invariance.studies.faces import celeba_for_suite, data_notes, pose_study


def _study(audit, ref, suite) -> dict:
    def run() -> dict:
        data = celeba_for_suite(audit, suite, splits=("train", "test"))
        bins = suite.section("celeba").get("bins", (0, 15, 30, 45))
        notes = data_notes(data)
        return {"angles": pose_study(audit, ref, data["train"], data["test"], bins=bins),
                "data": {"n_skipped": sum(d.get("n_skipped", 0) for d in notes.values()), "data": notes,
                         "crop": notes["test"].get("crop")}}

    return audit.memo(("face_pose", ref.name, ref.layer, ref.embedder.sha256, ref.key), run)


@pytest.fixture
def study(invariance_model, invariance_audit, invariance_suite) -> dict:
    # Run in setup: a study that cannot run is a pytest ERROR (JUnit <error>), once per test.
    return _study(invariance_audit, invariance_model, invariance_suite)


@pytest.mark.parametrize("angle", ["yaw", "pitch", "roll"])
def test_pose(angle, study, invariance_model, invariance_check):
    if angle not in study["angles"]:
        pytest.skip(f"pose.csv has no {angle} values")
    fig = study["angles"][angle]
    for row in fig["bins"]:
        last = row["bin"] == "total"
        invariance_check(f"{angle}_mae", row["estimate"], plots=[fig["plot"]] if last else None, details={
            "model": invariance_model.name, "bin": row["bin"], "count": row["count"], "target": fig["target"],
            **study["data"],
            "reading": f"mean absolute error in degrees of {fig['target']} predicted from the embedding; "
                       "chance = predicting the training mean"})
