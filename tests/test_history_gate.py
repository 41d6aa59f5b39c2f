"""A baseline must be a finished run that measured something, say which it is, and never
pass silently when it covers none of this run's checks (docs/ci.md)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402,F401  - imported once up front (pytester restores sys.modules)
import torch.onnx  # noqa: E402,F401

from pytest_invariance.history import HistoryStore  # noqa: E402
from pytest_invariance.testing import export_onnx, read_results, tiny_cnn  # noqa: E402

MODEL = "audits/toy/tiny.onnx"


def _run(toy, *args):
    return toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-no-report",
                                    "--invariance-progress", "off", *args)


def _lower_stored(toy, tag, by=1.0):
    """Make the stored figures of ``tag`` lower, so the same model now reads as a regression of a
    ``<=`` gate (higher is worse) - a real later run against a known earlier figure."""
    store = HistoryStore(toy.path / "reports" / "history.sqlite")
    doc = store.run(tag)
    for c in doc["checks"]:
        c["value"] -= by
        c["ci_low"] -= by
        c["ci_high"] -= by
    store.record(doc, tag)
    return store


def test_an_all_error_run_is_never_latest_and_a_regression_against_the_last_good_run_fails(toy):
    _run(toy, "--model-version", "v1").assert_outcomes(passed=1)
    store = _lower_stored(toy, "v1")
    good = export_onnx(tiny_cnn(), toy.path / "good.onnx").read_bytes()
    export_onnx(tiny_cnn(nan=True), toy.path / MODEL)  # v2: every embedding NaN, every test an ERROR
    bad = _run(toy, "--model-version", "v2")
    bad.assert_outcomes(errors=1)
    assert bad.ret == 3
    bad.stdout.fnmatch_lines(["*history * not written: this run audited nothing*"])
    assert store.versions() == ["v1"]
    (toy.path / MODEL).write_bytes(good)
    result = _run(toy, "--model-version", "v3", "--invariance-baseline", "latest",
                  "--invariance-tolerance", "feature_mean=0.01")
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["invariance: baseline v1 (recorded *, plugin *): 1 of 1 checks compared in their leak direction, 1 regressed"])
    base = read_results(toy)["run"]["baseline"]
    assert (base["spec"], base["tag"], base["checks"], base["compared"], base["regressed"]) == ("latest", "v1", 1, 1, 1)
    assert base["recorded_at"] == store.run("v1")["run"]["recorded_at"]


def test_latest_passes_over_stored_runs_that_were_interrupted_or_had_errors(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    check = {"nodeid": "t", "metric": "m", "value": 1.0, "verdict": "PASS"}
    error = {"nodeid": "u", "metric": None, "value": None, "verdict": "ERROR"}
    store.record({"run": {"tests": {"audited": 2, "errors": 0}}, "checks": [check]}, "v1")
    store.record({"run": {"interrupted": True, "tests": {"audited": 1, "errors": 0}}, "checks": [check]}, "v2")
    store.record({"run": {"tests": {"audited": 0, "errors": 2}}, "checks": [error]}, "v3")
    store.record({"run": {"tests": {"audited": 1, "errors": 1}}, "checks": [check, error]}, "v4")
    assert store.resolve("latest") == "v1" and store.resolve("latest", current="v2") == "v1"
    assert store.resolve("v3") == "v3"  # an explicit tag is taken as given
    store.record({"run": {"tests": {"audited": 2, "errors": 0}}, "checks": [check]}, "v5")
    assert store.resolve("latest") == "v5" and store.resolve("latest", current="v5") == "v1"


def test_history_counts_errors_apart_from_failures(tmp_path, capsys):
    from pytest_invariance.cli import main

    store = HistoryStore(tmp_path / "h.sqlite")
    errors = [{"nodeid": f"t{k}", "metric": None, "value": None, "verdict": "ERROR"} for k in range(16)]
    store.record({"run": {"tests": {"audited": 0, "errors": 16}}, "checks": errors}, "v2")
    store.record({"run": {"tests": {"audited": 2, "errors": 0}}, "checks": [
        {"nodeid": "t", "metric": "a", "value": 1.0, "verdict": "FAIL"},
        {"nodeid": "t", "metric": "b", "value": 1.0, "verdict": "PASS"}]}, "v3")
    assert main(["history", "--history", str(store.path)]) == 0
    head, v2, v3 = capsys.readouterr().out.splitlines()
    assert head.split()[:6] == ["version", "recorded", "checks", "failed", "inconclusive", "errors"]
    assert v2.split()[2:] == ["0", "0", "0", "16", "no:", "audited", "nothing"]
    assert v3.split()[2:] == ["2", "1", "0", "0", "yes"]


def test_a_baseline_that_shares_no_check_is_one_error_line(toy):
    _run(toy, "--model-version", "v1").assert_outcomes(passed=1)
    export_onnx(tiny_cnn(seed=1), toy.path / "other.onnx")  # another model: another test id
    result = _run(toy, "--model", "other.onnx", "--model-version", "v2", "--invariance-baseline", "v1")
    result.assert_outcomes(passed=1)
    assert result.ret == 3
    lines = [ln for ln in result.stdout.lines if "shares no check" in ln]
    assert len(lines) == 1 and "--invariance-baseline v1 is version v1" in lines[0]
    assert read_results(toy)["run"]["baseline"]["compared"] == 0


def test_an_interrupted_run_says_so_and_is_not_recorded(toy):
    _run(toy, "--model-version", "v1").assert_outcomes(passed=1)
    toy.makeconftest("import pytest\n\n@pytest.hookimpl(tryfirst=True)\n"
                     "def pytest_runtest_call(item):\n    raise KeyboardInterrupt\n")
    result = _run(toy, "--model", MODEL, "--model-version", "v1")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "NOTHING AUDITED" not in out and "exit status 5" not in out
    result.stdout.fnmatch_lines(["invariance: INTERRUPTED (exit status 2): 0 audit test(s) reached a verdict*"])
    run = read_results(toy)["run"]
    assert run["interrupted"] and run["exit_status"] == 2
    store = HistoryStore(toy.path / "reports" / "history.sqlite")
    assert store.run("v1")["run"]["interrupted"] is False  # the good v1 is kept, not replaced
