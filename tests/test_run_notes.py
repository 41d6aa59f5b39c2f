"""Run-level notes: skipped images, conversions, crops, unmeasurable attributes, unconverged fits."""
from __future__ import annotations

from pytest_invariance._notes import check_n_skipped, run_notes


def _check(suite, metric, data, **details):
    return {"nodeid": f"audits/{suite}/test.py::t", "suite": suite, "metric": metric, "details": {"data": data, **details}}


def test_notes_count_each_split_once_across_checks_and_suites():
    train = {"n": 500, "n_skipped": 2, "conversions": {"grayscale": 3}, "crop": {"method": "fixed box"}}
    test = {"n": 299, "n_skipped": 1, "conversions": {"exif_orientation": 1}, "crop": {"method": "fixed box"}}
    checks = [_check("face_attributes", "fn_rate", {"train": train, "test": test}, not_measurable={"Bald": "0 present"}),
              _check("face_attributes", "fp_rate", {"train": train, "test": test}, converged=False),
              _check("face_pose", "yaw_mae", {"train": train, "test": test})]
    fields, lines = run_notes(checks)
    assert fields["n_skipped"] == 3 and fields["skipped_by_split"] == {"train": 2, "test": 1}
    assert fields["conversions"] == {"grayscale": 3, "exif_orientation": 1} and fields["crop"] == ["fixed box"]
    assert fields["not_measurable"] == {"Bald": "0 present"}
    assert fields["unconverged"] == ["audits/face_attributes/test.py::t::fp_rate"]
    assert lines[0] == ("invariance: 3 image(s) left out as unreadable, undecodable or badly labelled (--invariance-skip-bad): "
                        "train 2, test 1")
    assert any("WARNING 1 figure(s) from probe fits that did not converge" in ln for ln in lines)
    assert run_notes([{"suite": "s", "details": {}}]) == ({"n_skipped": 0, "skipped_by_split": {}, "conversions": {},
                                                           "crop": [], "not_measurable": {}, "unconverged": [],
                                                           "options_not_applied": {}, "read_as_unknown": {}}, [])


def test_check_n_skipped_is_lifted_to_the_check():
    assert check_n_skipped({"details": {"n_skipped": 4}})["n_skipped"] == 4
    assert check_n_skipped({"details": {}})["n_skipped"] == 0


def test_report_header_shows_skipped_images_conversions_and_unconverged_fits():
    from pytest_invariance.report._html import render_report

    doc = {"run": {"n_skipped": 3, "conversions": {"cmyk": 2}, "crop": ["box scaled to each image's size"],
                   "not_measurable": {"Bald": "1 present / 298 absent in the test split"},
                   "unconverged": ["a::fn_rate"]}, "checks": []}
    html = render_report(doc)
    for text in ("<dt>images skipped</dt><dd>3</dd>", "<dt>image conversions</dt><dd>cmyk 2</dd>",
                 "<dt>unconverged probe fits</dt><dd>1</dd>", "Bald (1 present / 298 absent in the test split)"):
        assert text in html, text
