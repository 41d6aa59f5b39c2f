"""Tool errors are pytest ERRORs, runs that audit nothing are not green, outputs describe the
run that happened, bad configuration fails at start-up (issue 10), through pytester."""
from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402,F401  (see test_plugin.py: C extensions are imported up front)
import torch.onnx  # noqa: E402,F401

from pytest_invariance._outcomes import EXIT_NOTHING_AUDITED, EXIT_TOOL_ERROR  # noqa: E402
from pytest_invariance.testing import export_onnx, read_results as results, tiny_cnn  # noqa: E402

# Three tests share one study over a folder of real image files; the study's runs are
# counted in a file so the test can tell that a failed study is not run again.
STUDY_SUITE = '''\
import numpy as np, pytest
from pytest_invariance.data.folder import load_image_folder
from pytest_invariance.probes._estimate import Estimate

def _study(audit, ref):
    def run():
        with open("study_runs.txt", "a") as f:
            f.write("run\\n")
        images = load_image_folder("images", "images/labels.csv", size=(28, 28))
        X = audit.embed(ref, images)
        return float(X.mean())
    return audit.memo(("images_study", ref.name, ref.key), run)

@pytest.mark.parametrize("k", [1, 2, 3])
def test_figure(k, invariance_model, invariance_audit, invariance_check):
    m = _study(invariance_audit, invariance_model)
    invariance_check("feature_mean", Estimate(m, m - 1e-3, m + 1e-3, chance=0.0, n=8),
                     details={"model": invariance_model.name})
'''


def _write_images(folder, truncate: str | None = None):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"img{i}.jpg" for i in range(8)]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name, quality=90)
    if truncate:
        data = (folder / truncate).read_bytes()
        (folder / truncate).write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    (folder / "labels.csv").write_text("image,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))


@pytest.fixture
def study(toy):
    (toy.path / "audits" / "toy" / "test_toy.py").write_text(STUDY_SUITE)
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    toml.write_text(toml.read_text() + "\n[preprocess]\nchannels = 1   # the JPEGs are RGB\n")
    return toy


# --------------------------------------------------------------------------- 1. one ERROR per study


def test_truncated_image_is_one_error_per_study_not_a_failure(study):
    _write_images(study.path / "images", truncate="img3.jpg")
    result = study.runpytest_subprocess("audits", "--junitxml=junit.xml")
    result.assert_outcomes(errors=3)
    assert result.ret == EXIT_TOOL_ERROR
    out = result.stdout.str()
    first = [ln for ln in out.splitlines() if "could not run: " in ln and "DataError" in ln]
    assert first and "--invariance-skip-bad" in first[0] and "skip_bad=True" not in out
    assert out.count("img3.jpg") <= 3, "the cause is told once (plus the summary lines), not once per test"
    assert "Traceback" not in out and len(out.splitlines()) < 80
    result.stdout.fnmatch_lines(["*reported at audits/toy/test_toy.py::test_figure?tiny-1?*"])
    assert (study.path / "study_runs.txt").read_text().count("run") == 1, "a failed study is not run again"
    result.stdout.fnmatch_lines([
        "invariance: checks failed: 0",
        "invariance: known leaks (xfail): 0",
        "invariance: could not run (errors): 3 tests*",
    ])
    doc = results(study)
    assert [c["status"] for c in doc["checks"]] == ["error"] * 3
    assert doc["run"]["exit_status"] == EXIT_TOOL_ERROR and doc["run"]["tests"]["errors"] == 3
    assert all(c["verdict"] == "ERROR" and "could not run" in c["message"] for c in doc["checks"])
    assert {c["details"]["model"] for c in doc["checks"]} == {"tiny"}
    assert (study.path / "reports" / "index.html").is_file()
    import xml.etree.ElementTree as ET

    cases = list(ET.parse(study.path / "junit.xml").iter("testcase"))
    assert len(cases) == 3 and not any(c.find("skipped") is not None for c in cases)


def test_gate_failure_exits_1_and_errors_do_not_hide_it(study):
    _write_images(study.path / "images")
    result = study.runpytest_subprocess("audits", "--invariance-threshold", "feature_mean=-5")
    result.assert_outcomes(failed=3)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["invariance: checks failed: 3", "invariance: could not run (errors): 0 tests"])


def test_model_that_does_not_fit_is_an_error_once(study):
    _write_images(study.path / "images")
    # The bundled model of the suite expects 1 channel; feed it 3 by the suite's preprocessing.
    toml = study.path / "audits" / "toy" / "invariance.toml"
    toml.write_text(toml.read_text().replace("channels = 1", "channels = 3"))
    result = study.runpytest_subprocess("audits")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines(["*could not run: InputShapeError: *expects input ?N, 1, 28, 28?*"])
    assert result.ret == EXIT_TOOL_ERROR
    assert (study.path / "study_runs.txt").read_text().count("run") == 1


# --------------------------------------------------------------------------- 2. nothing audited


def test_model_given_and_every_test_skipped_is_not_green(toy):
    export_onnx(tiny_cnn(), toy.path / "rgb.onnx")
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    toml.write_text(toml.read_text().replace("input = [1, 28, 28]", "input = [3, 160, 160]"))
    result = toy.runpytest_subprocess("audits", "--model", "rgb.onnx")
    result.assert_outcomes(skipped=1)
    assert result.ret == EXIT_NOTHING_AUDITED
    result.stdout.fnmatch_lines(["invariance: skipped: 1 tests", "    1 x *expects input*",
                                 "invariance: NOTHING AUDITED: --model was given*"])
    assert results(toy)["checks"][0]["status"] == "skipped"


def test_data_dir_given_and_every_test_skipped_is_not_green(toy):
    (toy.path / "audits" / "toy" / "conftest.py").write_text(
        "import pytest\n@pytest.fixture(autouse=True)\ndef _need(invariance_settings):\n"
        "    pytest.skip('no CelebA under ' + str(invariance_settings.data_dir))\n")
    (toy.path / "data").mkdir()
    result = toy.runpytest_subprocess("audits", "--invariance-data-dir", "data")
    assert result.ret == EXIT_NOTHING_AUDITED
    result.stdout.fnmatch_lines(["*1 x no CelebA under *data*", "invariance: NOTHING AUDITED*"])
    # Without --model or --invariance-data-dir a skipped suite (no optional data) stays green.
    assert toy.runpytest_subprocess("audits").ret == pytest.ExitCode.OK


# --------------------------------------------------------------------------- 3. outputs


def test_crashed_run_replaces_the_previous_green_results(study):
    _write_images(study.path / "images")
    study.runpytest_subprocess("audits").assert_outcomes(passed=3)
    assert all(c["status"] == "passed" for c in results(study)["checks"])
    _write_images(study.path / "images", truncate="img0.jpg")
    (study.path / "images" / "labels.csv").write_text("image,label\nimg0.jpg,0\nimg1.jpg,1\n")
    study.runpytest_subprocess("audits").assert_outcomes(errors=3)
    doc = results(study)
    assert [c["status"] for c in doc["checks"]] == ["error"] * 3 and not any(c["value"] for c in doc["checks"])
    assert "could not run" in (study.path / "reports" / "index.html").read_text()


def test_refused_run_leaves_no_previous_green_results(study):
    _write_images(study.path / "images")
    study.runpytest_subprocess("audits").assert_outcomes(passed=3)
    assert (study.path / "reports" / "results.json").is_file()
    result = study.runpytest_subprocess("audits", "--invariance-threshold", "no_such_metric=3")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not (study.path / "reports" / "results.json").exists()
    assert not (study.path / "reports" / "index.html").exists()


def test_unwritable_output_is_found_at_start_up(toy):
    (toy.path / "blocker").write_text("a file where a folder is needed")
    result = toy.runpytest_subprocess("audits", "--invariance-json", "blocker/results.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-json *blocker/results.json: cannot write there*"])
    assert "collected" not in result.stdout.str()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_report_folder_is_found_at_start_up(toy):
    (toy.path / "ro").mkdir()
    os.chmod(toy.path / "ro", 0o555)
    try:
        result = toy.runpytest_subprocess("audits", "--invariance-report", "ro/index.html")
    finally:
        os.chmod(toy.path / "ro", 0o755)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-report *ro/index.html: cannot write there*"])


# --------------------------------------------------------------------------- 5. configuration


@pytest.mark.parametrize("args,line", [
    (["--invariance-threshold", "feature_maen=1"],
     "ERROR: --invariance-threshold feature_maen=1: no selected suite has metric 'feature_maen'; known metrics: feature_mean"),
    (["--invariance-threshold", "tinny.feature_mean=1"],
     "ERROR: --invariance-threshold tinny.feature_mean: 'tinny' is neither a selected layer nor a qualifier of "
     "the checks (write LAYER.METRIC, QUALIFIER.METRIC or LAYER.QUALIFIER.METRIC); selected layers: output; "
     "qualifiers: tiny"),
    (["--invariance-tolerance", "feature_maen=0.1"], "ERROR: --invariance-tolerance feature_maen=...: no selected suite*"),
    (["--invariance-threshold", "feature_mean=1e999"], "*a threshold must be a finite number*"),
    (["--layer", "output"], "ERROR: --layer output needs --model*"),
])
def test_bad_configuration_fails_before_collection(toy, args, line):
    result = toy.runpytest_subprocess("audits", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([line])
    assert "collected" not in result.stdout.str()


def test_unknown_key_in_suite_toml_names_file_and_key(toy):
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    toml.write_text(toml.read_text().replace("[thresholds]", "[threshold]"))
    result = toy.runpytest_subprocess("audits")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *audits/toy/invariance.toml: unknown table ?threshold?*"])
    toml.write_text(toml.read_text().replace("[threshold]", "[thresholds]").replace("name = ", "nme = "))
    result = toy.runpytest_subprocess("audits")
    result.stderr.fnmatch_lines(["ERROR: *invariance.toml: unknown key 'nme' in ?suite?*"])


def test_reference_suites_declare_their_metrics():
    from pathlib import Path

    from pytest_invariance.checks import Suite

    for toml in sorted((Path(__file__).parents[1] / "audits").glob("*/invariance.toml")):
        suite = Suite.load(toml)  # unknown keys would raise
        assert suite.metrics(), f"{toml} declares no [suite] metrics"


def test_foreign_sqlite_history_is_refused_unaltered(toy):
    other = toy.path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = other.read_bytes()
    result = toy.runpytest_subprocess("audits", "--invariance-history", "other.sqlite")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-history *other.sqlite: *another application's*"])
    assert other.read_bytes() == before
    assert sorted(p.name for p in toy.path.iterdir() if p.name.startswith("other")) == ["other.sqlite"]
    (toy.path / "notes.txt").write_text("not a database at all, but long enough to have a header ....")
    result = toy.runpytest_subprocess("audits", "--invariance-history", "notes.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-history *notes.txt: *not an SQLite database*"])


# --------------------------------------------------------------------------- 6. paths


def test_command_line_paths_are_relative_to_the_invocation_folder(toy, monkeypatch):
    sub = toy.path / "sub"
    sub.mkdir()
    export_onnx(tiny_cnn(), sub / "m.onnx")
    monkeypatch.chdir(sub)
    result = toy.runpytest_subprocess("../audits", "--model", "m.onnx", "--layer", "output",
                                      "--invariance-json", "out/results.json", "--junitxml", "out/junit.xml",
                                      "--invariance-cache-dir", "c", "--rootdir", str(toy.path))
    result.assert_outcomes(passed=1)
    assert (sub / "out" / "results.json").is_file() and (sub / "out" / "junit.xml").is_file()
    doc = json.loads((sub / "out" / "results.json").read_text())
    assert doc["run"]["model_path"] == str(sub / "m.onnx")
    assert list((sub / "c").glob("*.npy")) and (sub / "reports" / "index.html").is_file()


def test_factory_spec_is_not_a_path(tmp_path):
    from pytest_invariance.settings import absolute_path

    assert absolute_path("pytest_invariance.testing:tiny_cnn", tmp_path) == "pytest_invariance.testing:tiny_cnn"
    assert absolute_path("m.onnx", tmp_path) == str(tmp_path / "m.onnx")


def test_errors_and_model_records_cross_xdist(study):
    pytest.importorskip("xdist")
    _write_images(study.path / "images", truncate="img5.jpg")
    result = study.runpytest_subprocess("audits", "-n", "2")
    result.assert_outcomes(errors=3)
    assert result.ret == EXIT_TOOL_ERROR
    result.stdout.fnmatch_lines(["invariance: could not run (errors): 3 tests*--invariance-skip-bad*"])
    run = results(study)["run"]
    # Every audited model's own record, even though its study failed: file, sha256, layer, preprocessing.
    tiny = run["models"]["tiny"]
    assert tiny["model_path"].endswith("tiny.onnx") and len(tiny["model_sha256"]) == 64
    assert tiny["layer"] == "output" and tiny["preprocessing"]["channels"] == 1
    html = (study.path / "reports" / "index.html").read_text()
    assert tiny["model_sha256"] in html and 'id="models"' in html


def test_misspelled_key_in_a_suites_own_thresholds_is_named(toy):
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    text = toml.read_text().replace('input = [1, 28, 28]', 'input = [1, 28, 28]\nmetrics = ["feature_mean"]')
    toml.write_text(text.replace("feature_mean = {", "featur_mean = {"))
    result = toy.runpytest_subprocess("audits")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *invariance.toml: ?thresholds? key 'featur_mean' names an unknown metric*"])
    toml.write_text(text + '\n[expected_failures]\n"tinyy.feature_mean" = "known"\n')
    result = toy.runpytest_subprocess("audits")
    result.stderr.fnmatch_lines(["ERROR: *?expected_failures? key 'tinyy.feature_mean' names an unknown qualifier 'tinyy'; known: tiny"])


def test_a_fault_met_by_every_xdist_worker_is_told_in_full_once(study):
    # each worker remembers its own failures, so each one's first test told it in full
    pytest.importorskip("xdist")
    _write_images(study.path / "images", truncate="img5.jpg")
    result = study.runpytest_subprocess("audits", "-n", "2", "-p", "no:randomly", "--junitxml=junit.xml")
    result.assert_outcomes(errors=3)
    out = result.stdout.str()
    assert len({ln for ln in out.splitlines() if ln.startswith("[gw")}) == 2  # both workers met it
    errors = out.split("= ERRORS =")[1].split("- generated xml")[0]
    full = [ln for ln in errors.splitlines() if ln.startswith("embedding ") and "img5.jpg" in ln]
    assert len(full) == 1, full
    first = re.search(r"ERROR at call of (test_figure\[tiny-\d\])[^\n]*\n[^\n]*\n" + re.escape(full[0]), errors)[1]
    refs = [ln for ln in errors.splitlines() if "(reported at " in ln]
    assert len(refs) == 2 and all(f"(reported at audits/toy/test_toy.py::{first}): DataError; see that error" in ln
                                  for ln in refs), refs
    import xml.etree.ElementTree as ET

    told = [c.find("failure").get("message") or c.find("failure").text for c in
            ET.parse(study.path / "junit.xml").iter("testcase") if c.find("failure") is not None]
    assert len(told) == 3 and sum("cannot decode the image" in t for t in told) == 1


def test_unwritable_cache_dir_is_found_at_start_up(toy):
    (toy.path / "c").write_text("a file, not a folder")
    result = toy.runpytest_subprocess("audits", "--invariance-cache-dir", "c")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-cache-dir *c: cannot write there (it is a file)*"])


def test_study_in_a_fixture_is_a_junit_error(study):
    import xml.etree.ElementTree as ET

    test = study.path / "audits" / "toy" / "test_toy.py"
    test.write_text(test.read_text().replace(
        "@pytest.mark.parametrize(\"k\", [1, 2, 3])\ndef test_figure(k, invariance_model, invariance_audit, invariance_check):\n"
        "    m = _study(invariance_audit, invariance_model)",
        "@pytest.fixture\ndef figure(invariance_model, invariance_audit):\n    return _study(invariance_audit, invariance_model)\n\n"
        "@pytest.mark.parametrize(\"k\", [1, 2, 3])\ndef test_figure(k, figure, invariance_model, invariance_check):\n    m = figure"))
    _write_images(study.path / "images", truncate="img3.jpg")
    result = study.runpytest_subprocess("audits", "--junitxml=junit.xml")
    result.assert_outcomes(errors=3)
    assert result.ret == EXIT_TOOL_ERROR
    cases = list(ET.parse(study.path / "junit.xml").iter("testcase"))
    assert [c.find("error") is not None for c in cases] == [True] * 3
    assert "--invariance-skip-bad" in cases[0].find("error").get("message")


def test_ini_paths_are_relative_to_the_ini_file(toy, monkeypatch):
    toy.makeini("[pytest]\ninvariance_json = out/from_ini.json\n")
    sub = toy.path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    ini = toy.path / "tox.ini"  # what makeini writes
    toy.runpytest_subprocess("../audits", "--rootdir", str(toy.path), "-c", str(ini)).assert_outcomes(passed=1)
    assert (toy.path / "out" / "from_ini.json").is_file() and not (sub / "out").exists()


def test_damaged_bundled_model_is_loaded_once_and_errors_once(study):
    _write_images(study.path / "images")
    (study.path / "audits" / "toy" / "tiny.onnx").write_bytes(b"\0" * 64)
    result = study.runpytest_subprocess("audits")
    result.assert_outcomes(errors=3)
    assert result.ret == EXIT_TOOL_ERROR
    result.stdout.fnmatch_lines(["*model *tiny.onnx could not be loaded: ModelLoadError: *",
                                 "*model *tiny.onnx could not be loaded (reported at *test_figure?tiny-1?): ModelLoadError; see that error"])


def test_unknown_baseline_without_model_is_a_usage_error(toy):
    toy.runpytest_subprocess("audits", "--model-version", "v1").assert_outcomes(passed=1)
    result = toy.runpytest_subprocess("audits", "--invariance-baseline", "v0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --invariance-baseline v0: version 'v0' is not in *; stored versions: v1"])


def test_summary_quotes_the_root_cause_not_a_back_reference():
    from types import SimpleNamespace

    from pytest_invariance._outcomes import Outcomes
    from pytest_invariance.settings import Settings

    def error(nodeid: str, line: str, first: bool) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, invariance_item={"suite": "toy"}, failed=True, skipped=False,
                               passed=False, when="setup", invariance_error=line, invariance_error_first=first)

    outcomes = Outcomes({"checks": [], "plots": {}})
    # the study fails first in a test that sorts last; the back-reference sorts first
    outcomes.pytest_runtest_logreport(error("t.py::test_z", "study toy could not run: DataError: img3.jpg", True))
    outcomes.pytest_runtest_logreport(error("t.py::test_a", "study toy (reported at t.py::test_z): DataError; "
                                            "see that error", False))
    line = next(ln for ln in outcomes.summary_lines(Settings()) if "could not run" in ln)
    assert line.endswith("first: study toy could not run: DataError: img3.jpg") and "2 tests" in line
