"""A "close to chance" gate that its CI cannot decide is INCONCLUSIVE (a pytest ERROR naming the
fix), never a FAIL of a leak-free column nor a PASS; a real leak still FAILs (checks._verdict)."""
from __future__ import annotations

import numpy as np
import onnx  # noqa: F401  - imported once here (pytester restores sys.modules between tests)
import pandas as pd
import pytest
import torch
import torch.onnx  # noqa: F401
from PIL import Image

from pytest_invariance.checks import FAIL, INCONCLUSIVE, PASS, Threshold, evaluate
from pytest_invariance.probes._estimate import Estimate
from pytest_invariance.testing import StripeEmbedding, copy_suite, export_onnx, run_and_read


@pytest.mark.parametrize(("est", "threshold", "verdict"), [
    # the tryout's pure-noise column: CI half-width 0.13 > the 0.1 between chance and the gate
    (Estimate(0.3819, 0.2599, 0.5183, chance=0.5, n=60), Threshold(">=", 0.4), INCONCLUSIVE),
    (Estimate(0.45, 0.33, 0.57, chance=0.5, n=60), Threshold(">=", 0.4), INCONCLUSIVE),  # nor a PASS
    (Estimate(0.02, 0.0, 0.05, chance=0.5, n=60), Threshold(">=", 0.4), FAIL),   # a planted factor: CI below
    (Estimate(0.38, 0.33, 0.43, chance=0.5, n=600), Threshold(">=", 0.4), FAIL),  # narrow CI: the point decides
    (Estimate(0.55, 0.42, 0.68, chance=0.5, n=60), Threshold(">=", 0.4), PASS),  # CI wholly on the passing side
    # balanced accuracy whose CI excludes chance: a real leak, not noise; the point decides
    (Estimate(0.40, 0.27, 0.52, chance=0.25, n=60), Threshold("<=", 0.35), FAIL),
    (Estimate(0.30, 0.20, 0.41, chance=0.25, n=60), Threshold("<=", 0.35), INCONCLUSIVE),  # CI covers chance
    (Estimate(0.40, 0.27, 0.52, chance=0.25, n=60), Threshold("<=", 0.35, confident=True), FAIL),  # on the bound
])
def test_verdict_rule(est, threshold, verdict):
    r = evaluate("t", "s", "balanced_error", est, threshold, {"factor": "n3"})
    assert r.verdict == verdict and r.passed == (verdict == PASS)
    if verdict == INCONCLUSIVE:
        assert "the test split is too small" in r.message and "--invariance-threshold n3.balanced_error=VALUE" in r.message



@pytest.mark.parametrize(("metric", "est", "threshold", "verdict"), [
    # a task figure's floor: a model at chance rightly fails it
    ("mav_accuracy", Estimate(0.80, 0.70, 0.90, chance=0.1, n=60), Threshold(">=", 0.85), FAIL),
    ("rank1", Estimate(0.1, 0.05, 0.15, chance=0.1, n=60), Threshold(">=", 0.5), FAIL),
    # pose in radians against a gate in degrees: chance (0.289) fails "> 10" itself
    ("yaw_mae", Estimate(0.2976, 0.27, 0.33, chance=0.2894, n=300), Threshold(">", 10.0), INCONCLUSIVE),
    # a coin-flip attribute whose probe calls 37% of the test rows present: fp chance = q = 0.37
    ("fp_rate", Estimate(0.367, 0.297, 0.441, chance=0.37, n=300), Threshold(">=", 0.4), INCONCLUSIVE),
    ("fp_rate", Estimate(0.367, 0.297, 0.441, chance=0.37, n=300), Threshold(">=", 0.4, confident=True), INCONCLUSIVE),
    # past chance toward the leak: a real leak whatever chance is
    ("fp_rate", Estimate(0.05, 0.02, 0.09, chance=0.37, n=300), Threshold(">=", 0.4), FAIL),
    ("yaw_mae", Estimate(0.10, 0.08, 0.12, chance=0.2894, n=300), Threshold(">", 10.0), FAIL),
])
def test_a_gate_that_chance_itself_fails_shows_no_leak(metric, est, threshold, verdict):
    r = evaluate("t", "s", metric, est, threshold, {"attribute": "Blurry"})
    assert r.verdict == verdict and not r.passed
    if verdict == INCONCLUSIVE:
        assert "so does chance itself" in r.message and f"Blurry.{metric}=VALUE with VALUE" in r.message
        assert ("Blurry.balanced_error=0.4" in r.message) == metric.endswith("_rate")


def test_noise_columns_never_fail_the_default_gate_and_a_planted_one_does(pytester, tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    n, k = 300, 12
    rows = []
    for i in range(n):
        stripe = int(rng.integers(2))
        x = rng.uniform(0, 1, (16, 16, 3))
        x[6:10] = 0.2 + 0.7 * stripe
        Image.fromarray((x * 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        rows.append({"image": f"img/{i:03d}.png", "stripe": stripe, **{f"n{j}": int(rng.integers(2)) for j in range(k)}})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    model = export_onnx(StripeEmbedding().eval(), tmp_path / "m.onnx", (3, 16, 16))
    suite = copy_suite(pytester, "factors")
    result, doc = run_and_read(suite, "audits/factors/test_factors.py::test_factor", f"--model={model}",
                               f"--invariance-data-dir={root}", "--invariance-gate", "all")
    heads = {c["details"]["factor"]: c for c in doc["checks"] if c["metric"] == "balanced_error"}
    assert heads["stripe"]["verdict"] == FAIL and heads["stripe"]["n"] == 60
    noise = [heads[f"n{j}"] for j in range(k)]
    assert all(c["verdict"] in (PASS, INCONCLUSIVE) for c in noise)
    undecided = [c for c in noise if c["verdict"] == INCONCLUSIVE]
    assert undecided and all(c["ci_low"] <= 0.4 <= c["ci_high"] for c in undecided)
    assert all(c["status"] == "inconclusive" for c in undecided)
    result.assert_outcomes(failed=1, passed=k - len(undecided), errors=len(undecided))
    assert result.ret == 1  # the planted leak
    result.stdout.fnmatch_lines([f"invariance: inconclusive: {len(undecided)} check(s) in {len(undecided)} test(s): "
                                 "the test split is too small for the gate*"])
    assert "balanced_error [model=m, factor=n" in result.stdout.str() and "INCONCLUSIVE" in result.stdout.str()
    assert not [c for c in doc["checks"] if c["verdict"] == "ERROR"]  # no extra error rows for those tests


@pytest.mark.parametrize("est, threshold, verdict", [
    # an MLP that blew up: far worse than predicting the mean, yet past "MAE > 10"
    (Estimate(7.0e10, 5.8e9, 1.6e11, chance=25.7, n=70000), Threshold(">", 10.0), "INCONCLUSIVE"),
    # a leak-free probe a little worse than chance, as overfitting leaves it: a pass
    (Estimate(27.0, 25.9, 28.1, chance=25.7, n=70000), Threshold(">", 10.0), "PASS"),
    # an accuracy gate from below: a probe that is reliably anti-predictive
    (Estimate(0.05, 0.02, 0.09, chance=0.5, n=400), Threshold("<=", 0.7), "INCONCLUSIVE"),
    (Estimate(0.45, 0.40, 0.50, chance=0.5, n=400), Threshold("<=", 0.7), "PASS"),
])
def test_a_figure_far_worse_than_chance_is_a_tool_error_not_a_pass(est, threshold, verdict):
    r = evaluate("t::x", "s", "angle_mae", est, threshold)
    assert r.verdict == verdict and r.passed == (verdict == "PASS")
    if verdict == "INCONCLUSIVE":
        assert "worse than chance" in r.message and "probe failed to fit" in r.message


@pytest.mark.parametrize("metric, est, threshold, verdict", [
    # a real leak whose CI excludes chance: the gate decides (was INCONCLUSIVE: "a leak-free
    # embedding crosses it by chance", which this one is not)
    ("balanced_error", Estimate(0.2708, 0.1, 0.4725, chance=0.5, n=20), Threshold(">=", 0.4), "FAIL"),
    # a user's floor below chance on a task metric: far above chance is good identification
    ("rank1", Estimate(0.1027, 0.05479, 0.1575, chance=0.02564, n=300), Threshold(">=", 0.01), "PASS"),
])
def test_the_gate_decides_what_only_looked_undecided(metric, est, threshold, verdict):
    assert evaluate("t::x", "s", metric, est, threshold).verdict == verdict


def test_the_suggested_threshold_decides_when_pasted():
    import re

    est = Estimate(0.45, 0.335, 0.565, chance=0.5, n=66)
    r = evaluate("t::x", "s", "balanced_error", est, Threshold(">=", 0.4))
    assert r.verdict == INCONCLUSIVE
    value = float(re.search(r"VALUE <= ([0-9.]+)$", r.message).group(1))
    assert evaluate("t::x", "s", "balanced_error", est, Threshold(">=", value)).verdict != INCONCLUSIVE
