"""A gate outside the range its figure can take decides nothing: refused, never suggested."""
from __future__ import annotations

import math

import pytest

from pytest_invariance.checks._ranges import metric_range, vacuous
from pytest_invariance.checks._result import Threshold
from pytest_invariance.checks._suite import resolve_threshold
from pytest_invariance.checks._verdict import evaluate
from pytest_invariance.errors import InvalidParameterError
from pytest_invariance.probes._estimate import Estimate


@pytest.mark.parametrize("metric,expected", [
    ("yaw_mae", (0.0, math.inf)), ("mae", (0.0, math.inf)), ("angle_mae_std", (0.0, math.inf)),
    ("r2", (-math.inf, 1.0)), ("balanced_error", (0.0, 1.0)), ("fn_rate", (0.0, 1.0)),
    ("mav_accuracy", (0.0, 1.0)), ("angle_mae_selectivity", (-math.inf, math.inf)),
    ("mav_accuracy_drop", (-math.inf, math.inf)), ("feature_mean", (-math.inf, math.inf)),
    ("rotation_mae", (0.0, math.inf)), ("angle_mae_mlp", (0.0, math.inf))])
def test_metric_ranges_from_names(metric, expected):
    assert metric_range(metric) == expected


def test_an_override_that_can_never_fail_is_refused_in_one_line():
    suite = {"mae": Threshold(">=", 10.0), "r2": Threshold("<=", 0.1)}
    for key, value in (("mae", -157.0), ("r2", 2.08e4), ("yaw.mae", -0.5)):
        with pytest.raises(InvalidParameterError, match="could never fail"):
            resolve_threshold(key.split(".")[-1], ["yaw"], call=None, marker={}, suite=suite, overrides={key: value})
    # inside the range: accepted
    assert resolve_threshold("mae", ["yaw"], call=None, marker={}, suite=suite, overrides={"mae": 3.0}).value == 3.0
    assert not vacuous("mae", ">=", 0.5) and vacuous("balanced_error", "<=", 1.0)
    # at the bound: a deliberate "not gated", accepted (never suggested by the advice)
    assert resolve_threshold("mae", ["yaw"], call=None, marker={}, suite=suite, overrides={"mae": 0.0}).value == 0.0


def test_inconclusive_advice_names_no_gate_past_the_figures_range():
    # R^2 CI -15.6..0.91 around chance 0, gate <= 0.1: the widest decidable gate would be >= 8.2
    r = evaluate("t::x", "s", "r2", Estimate(-3.9, -15.6, 0.91, chance=0.0, n=80), Threshold("<=", 0.1),
                 details={"factor": "yaw"})
    assert r.verdict == "INCONCLUSIVE"
    assert "no gate this split can decide lies within the figure's range" in r.message
    assert "yaw.r2=VALUE" not in r.message
    # a decidable one is still suggested
    r = evaluate("t::x", "s", "mae", Estimate(4.5, 2.1, 9.1, chance=7.25, n=80), Threshold(">=", 5.4),
                 details={"factor": "yaw"})
    assert "--invariance-threshold yaw.mae=VALUE with VALUE <= 3.74" in r.message


def test_a_data_folders_gate_that_can_never_fail_is_refused():
    from pytest_invariance.checks._suite import threshold_from_table

    with pytest.raises(InvalidParameterError, match=r"x\.toml: threshold 'yaw\.mae'.*could never fail"):
        threshold_from_table("yaw.mae", {"min": -1}, "x.toml")
    with pytest.raises(InvalidParameterError, match="could never fail"):
        threshold_from_table("yaw.r2", {"max": 5}, "x.toml")
    assert threshold_from_table("yaw.r2", {"max": 0.1}, "x.toml").value == 0.1


def test_a_command_line_gate_that_can_never_fail_is_refused_once_at_start_up():
    from pathlib import Path

    from pytest_invariance._startup import check_overrides
    from pytest_invariance.checks import Suite
    from pytest_invariance.settings import Settings

    factors = Suite.find(Path(__file__).resolve().parents[1] / "audits" / "factors")
    with pytest.raises(pytest.UsageError, match=r"--invariance-threshold mae=-1: .*could never fail"):
        check_overrides(Settings(threshold=[("mae", -1.0)]), [factors])
    check_overrides(Settings(threshold=[("mae", 2.0)]), [factors])  # a real gate
    # a user's metric in points is not the plugin's to bound
    assert metric_range("mav_accuracy_erasure_cost") == (-math.inf, math.inf)
    assert metric_range("attr_accuracy_pct") == (-math.inf, math.inf)
