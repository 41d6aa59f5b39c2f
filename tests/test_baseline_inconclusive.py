"""A run with an INCONCLUSIVE check (a gate its CI could not decide) is a complete run: it is the
``latest`` baseline, its undecided checks are the only ones not compared (said once), and every
reader counts it the same way (terminal summary, results.json, ``history``, ``compare``)."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
import onnx  # noqa: E402,F401  - imported once up front (pytester restores sys.modules)
import torch.onnx  # noqa: E402,F401

from pytest_invariance.cli import main  # noqa: E402
from pytest_invariance.history import HistoryStore, not_a_baseline, run_counts  # noqa: E402
from pytest_invariance.testing import read_results  # noqa: E402

# CI half-width 0.12 is wider than the 0.1 between chance (0.5) and the gate (>= 0.4): undecidable
UNDECIDED_TEST = '''
from pytest_invariance.probes._estimate import Estimate

def test_undecided(invariance_model, invariance_check):
    invariance_check("balanced_error", Estimate(0.45, 0.33, 0.57, chance=0.5, n=60), min=0.4,
                     details={"model": invariance_model.name})
'''


def _run(toy, *args):
    return toy.runpytest_subprocess("audits", "-p", "no:cacheprovider", "--invariance-no-report",
                                    "--invariance-progress", "off", *args)


def test_a_run_with_an_inconclusive_check_is_the_latest_baseline(toy, capsys):
    (toy.path / "audits" / "toy" / "test_undecided.py").write_text(UNDECIDED_TEST)
    first = _run(toy, "--model-version", "v1")
    first.assert_outcomes(passed=1, errors=1)
    # every test counted once: 2 checks in 2 audited tests, none "could not run"
    first.stdout.fnmatch_lines(["invariance: 2 checks in 2 audited tests, 1 passed",
                                "invariance: could not run (errors): 0 tests",
                                "invariance: inconclusive: 1 check(s) in 1 test(s): *"])
    assert "not an --invariance-baseline" not in first.stdout.str()
    tests = read_results(toy)["run"]["tests"]
    assert (tests["audited"], tests["errors"], tests["inconclusive"]) == (2, 0, 1)

    second = _run(toy, "--model-version", "v2", "--invariance-baseline", "latest")
    second.assert_outcomes(passed=1, errors=1)
    lines = [ln for ln in second.stdout.lines if ln.startswith("invariance: baseline")]
    assert lines == [lines[0]] and lines[0].startswith("invariance: baseline v1 (")
    assert lines[0].endswith("1 of 2 checks compared in their leak direction, 0 regressed; "
                             "1 inconclusive in v1 not compared (its CI could not decide the gate)")
    base = read_results(toy)["run"]["baseline"]
    assert (base["tag"], base["compared"], base["inconclusive_in_baseline"]) == ("v1", 1, 1)

    history = str(toy.path / "reports" / "history.sqlite")
    capsys.readouterr()
    assert main(["history", "--history", history]) == 0
    head, v1, v2 = capsys.readouterr().out.splitlines()
    assert head.split()[2:6] == ["checks", "failed", "inconclusive", "errors"]
    assert v1.split()[2:] == ["2", "0", "1", "0", "yes"] and v2.split()[2:] == ["2", "0", "1", "0", "yes"]
    assert main(["compare", "latest", "v2", "--history", history, "--out", str(toy.path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "(not compared: inconclusive in the baseline)" in out
    assert out.splitlines()[-1].startswith("0 worse, 0 better of 2 checks (1 not compared: inconclusive in v1)")


def test_runs_stored_before_the_inconclusive_count_are_baselines_too(tmp_path):
    # older plugins counted an undecided test among run.tests.errors
    undecided = {"nodeid": "u", "metric": "balanced_error", "value": 0.45, "verdict": "INCONCLUSIVE"}
    passed = {"nodeid": "t", "metric": "m", "value": 1.0, "verdict": "PASS"}
    error = {"nodeid": "e", "metric": None, "value": None, "verdict": "ERROR"}
    old = {"run": {"tests": {"audited": 1, "errors": 1}}, "checks": [passed, undecided]}
    assert not_a_baseline(old) is None and run_counts(old)["errors"] == 0
    both = {"run": {"tests": {"audited": 1, "errors": 2}}, "checks": [passed, undecided, error]}
    assert not_a_baseline(both) == "1 tool error(s)" and run_counts(both)["errors"] == 1
    only = {"run": {"tests": {"audited": 1, "errors": 0, "inconclusive": 1}}, "checks": [undecided]}
    assert not_a_baseline(only) == "decided nothing (all 1 audited test(s) inconclusive)"
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record(old, "v1")
    store.record(only, "v2")
    assert store.resolve("latest") == "v1" and store.resolve("latest", current="v3") == "v1"
