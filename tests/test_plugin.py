"""The plugin through pytester: options, errors before collection, checks, JSON, cache, xdist."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
# pytester restores sys.modules after each test; C extensions imported *during* a test
# would be dropped and re-imported (which aborts). Import them here, once, up front.
import onnx  # noqa: E402,F401
import torch.onnx  # noqa: E402,F401

from pytest_invariance.testing import export_onnx, read_results as results, tiny_cnn  # noqa: E402


def test_help_lists_options(pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines([
        "*embedding invariance audits*",
        "*--model=PATH*",
        "*--layer=NAME*",
        "*--device=DEV*auto|cpu|cuda*",
        "*--invariance-baseline=TAG*",
        "*--invariance-threshold=M=V*",
        "*invariance_seed*",
    ])


@pytest.mark.parametrize("args,line", [
    (["--device", "gpu"], "*'gpu' is not a device; use auto, cpu, cuda or cuda:N*"),
    (["--invariance-batch-size", "0"], "*'0' is not a positive integer*"),
    (["--invariance-threshold", "mav_accuracy"], "*is not METRIC=VALUE*"),
    (["--invariance-threshold", "mae=nan"], "*'mae=nan': a threshold must be a finite number*"),
    (["--invariance-threshold", "mae=-inf"], "*'mae=-inf': a threshold must be a finite number*"),
    (["--invariance-threshold", "mae=ten"], "*'mae=ten': 'ten' is not a number*"),
])
def test_bad_option_values_fail_before_collection(pytester, args, line):
    result = pytester.runpytest(*args)
    result.stderr.fnmatch_lines([line])
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_bad_ini_value(pytester):
    pytester.makeini("[pytest]\ninvariance_device = tpu\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(["*ini key invariance_device*'tpu' is not a device*"])


@pytest.mark.parametrize("content,line", [
    (b"not a model at all", "*is not a valid ONNX model*"),
    (None, "*model file not found*"),
])
def test_bad_model_file_is_one_clear_error(pytester, content, line):
    if content is not None:
        (pytester.path / "m.onnx").write_bytes(content)
    result = pytester.runpytest_subprocess("--model", "m.onnx")
    result.stderr.fnmatch_lines(["ERROR: " + line])
    assert "Traceback" not in result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_unknown_layer_lists_real_names(toy):
    result = toy.runpytest_subprocess("--model", "audits/toy/tiny.onnx", "--layer", "ip1")
    result.stderr.fnmatch_lines(["ERROR: --layer ip1: layer 'ip1' is not in *Available layers: *output*"])


def test_check_records_json_report_and_history(toy):
    result = toy.runpytest_subprocess("audits", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    doc = results(toy)
    (check,) = doc["checks"]
    assert check["metric"] == "feature_mean" and check["comparator"] == "<=" and check["threshold"] == 1000.0
    assert check["passed"] is True and check["details"]["model"] == "tiny"
    for key in ("nodeid", "suite", "value", "ci_low", "ci_high", "chance", "n", "details"):
        assert key in check
    for key in ("plugin_version", "model_path", "model_sha256", "layer", "backend", "device", "seed", "started", "finished"):
        assert key in doc["run"]
    assert (toy.path / "reports" / "index.html").is_file()
    assert (toy.path / "reports" / "history.sqlite").is_file()


def test_threshold_override_fails_with_a_small_report(toy):
    result = toy.runpytest_subprocess("audits", "--invariance-threshold", "feature_mean=-5")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*feature_mean*does not satisfy <= -5*", "*next: *--invariance-threshold*"])
    assert results(toy)["checks"][0]["passed"] is False
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_user_model_runs_the_suite_and_second_run_hits_the_cache(toy):
    args = ["audits", "--model", "audits/toy/tiny.onnx", "--layer", "/act/Relu_output_0", "--invariance-cache-dir", "c"]
    toy.runpytest_subprocess(*args).assert_outcomes(passed=1)
    entries = sorted(p.name for p in (toy.path / "c").glob("*.npy"))
    assert len(entries) == 1
    stamp = (toy.path / "c" / entries[0]).stat().st_mtime_ns
    first = results(toy)["checks"][0]["value"]
    toy.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert (toy.path / "c" / entries[0]).stat().st_mtime_ns == stamp, "second run must not recompute"
    assert results(toy)["checks"][0]["value"] == first
    assert results(toy)["run"]["layer"] == "/act/Relu_output_0"


def test_suite_that_does_not_fit_the_model_is_one_line_before_the_tests(toy):
    export_onnx(tiny_cnn(), toy.path / "rgb.onnx")  # 1x28x28 model ...
    (toy.path / "audits" / "toy" / "invariance.toml").write_text(
        (toy.path / "audits" / "toy" / "invariance.toml").read_text().replace("input = [1, 28, 28]", "input = [3, 160, 160]"))
    result = toy.runpytest_subprocess("audits", "--model", "rgb.onnx", "-rs")
    result.assert_outcomes(skipped=1)
    assert result.ret == 5  # --model given and nothing audited: not green (test_errors.py)
    line = ("invariance: suite toy: skipped: *rgb.onnx expects input float32[[]N, 1, 28, 28[]] (NCHW) but suite "
            "toy feeds float32[[]N, 3, 160, 160[]] (NCHW); to feed it, pass --invariance-preprocess channels=1 "
            "--invariance-preprocess size=28x28")
    result.stdout.fnmatch_lines([line, "*collected 1 item*"])  # in the header, before the tests
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    # With a second suite that fits, the one that does not is skipped with the same reason.
    other = toy.path / "audits" / "toy2"
    other.mkdir()
    for name in ("invariance.toml", "test_toy.py"):
        text = (toy.path / "audits" / "toy" / name).read_text()
        (other / name).write_text(text.replace("input = [3, 160, 160]", "input = [1, 28, 28]").replace('"toy"', '"toy2"'))
    (other / "test_toy.py").rename(other / "test_toy2.py")
    result = toy.runpytest_subprocess("audits", "--model", "rgb.onnx", "-rs")
    result.assert_outcomes(skipped=1, passed=1)
    result.stdout.fnmatch_lines(["*expects input float32[[]N, 1, 28, 28[]] (NCHW) but suite toy feeds*"])


def test_same_json_with_xdist(toy):
    pytest.importorskip("xdist")
    toy.runpytest_subprocess("audits", "-p", "no:xdist").assert_outcomes(passed=1)
    plain = results(toy)["checks"]
    toy.runpytest_subprocess("audits", "-n", "2").assert_outcomes(passed=1)
    assert results(toy)["checks"] == plain


def test_plugin_can_be_disabled(toy):
    result = toy.runpytest_subprocess("audits", "-p", "no:invariance")
    result.assert_outcomes(errors=1)  # the suite's fixtures are gone, nothing else breaks
    assert not (toy.path / "reports" / "results.json").exists()


def test_baseline_regression_is_reported_as_such(toy):
    toy.runpytest_subprocess("audits", "--model-version", "v1").assert_outcomes(passed=1)
    # v2: same model, tighter cap on the figure's allowed growth => a pretend regression is
    # produced by lowering the stored baseline value through the history API.
    from pytest_invariance.history import HistoryStore

    store = HistoryStore(toy.path / "reports" / "history.sqlite")
    doc = store.run("v1")
    for c in doc["checks"]:
        c["value"] -= 1.0
        c["ci_low"] -= 1.0
        c["ci_high"] -= 1.0
    store.record(doc, "v1")
    result = toy.runpytest_subprocess("audits", "--model-version", "v2", "--invariance-baseline", "v1",
                                      "--invariance-tolerance", "feature_mean=0.01")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*feature_mean: regression against v1*"])
    (check,) = results(toy)["checks"]
    assert check["details"]["baseline"] == "v1" and check["details"]["delta"] == pytest.approx(1.0)


def test_expected_failure_xfails_with_reason(toy):
    toml = toy.path / "audits" / "toy" / "invariance.toml"
    toml.write_text(toml.read_text() + '\n[expected_failures]\n"tiny.feature_mean" = "known leak, see docs"\n')
    result = toy.runpytest_subprocess("audits", "--invariance-threshold", "feature_mean=-5", "-rx")
    result.assert_outcomes(xfailed=1)
    result.stdout.fnmatch_lines(["*XFAIL*known leak, see docs*"])
    (check,) = results(toy)["checks"]
    assert check["passed"] is False and check["details"]["expected_failure"] == "known leak, see docs"
    # the known leak is the bundled model's: a --model with the same file name meets the gate in full
    user = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx",
                                    "--invariance-threshold", "feature_mean=-5")
    user.assert_outcomes(failed=1)
    (check,) = results(toy)["checks"]
    assert check["status"] == "failed" and "expected_failure" not in check["details"]


def test_junitxml_carries_each_figure_once(toy):
    import xml.etree.ElementTree as ET

    toy.runpytest_subprocess("audits", "--junitxml=junit.xml").assert_outcomes(passed=1)
    props = [p.attrib for p in ET.parse(toy.path / "junit.xml").iter("property")]
    figures = [p for p in props if p["name"] == "invariance.feature_mean"]
    assert len(figures) == 1
    assert float(figures[0]["value"]) == results(toy)["checks"][0]["value"]
