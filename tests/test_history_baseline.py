"""Tolerance parsing and the direction of a regression."""
from __future__ import annotations

import argparse
import math

import pytest

from pytest_invariance.history import (
    Tolerance,
    ToleranceError,
    annotate_regressions,
    compare_to_baseline,
    find_tolerance,
    parse_tolerance,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("yaw_mae=0.5", Tolerance("yaw_mae", 0.5, False)),
        ("fn_rate=5%", Tolerance("fn_rate", 0.05, True)),
        (" acc = 1e-2 ", Tolerance("acc", 0.01, False)),
        ("leakage.linear_svm=.25", Tolerance("leakage.linear_svm", 0.25, False)),
        ("0.1", Tolerance(None, 0.1, False)),
        ("*=2%", Tolerance(None, 0.02, True)),
    ],
)
def test_parse_tolerance(spec, expected):
    assert parse_tolerance(spec) == expected


@pytest.mark.parametrize("spec", ["", "yaw_mae=", "yaw_mae=-1", "=0.5", "a=b", "yaw_mae=5%%", "x=1 2"])
def test_parse_tolerance_rejects(spec):
    with pytest.raises(ToleranceError, match="is not a tolerance like 'yaw_mae=0.5'"):
        parse_tolerance(spec)


def test_tolerance_error_works_as_argparse_type():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--tol", type=parse_tolerance)
    assert parser.parse_args(["--tol", "fn_rate=5%"]).tol.relative
    with pytest.raises(argparse.ArgumentError, match="'nope' is not a tolerance"):
        parser.parse_args(["--tol", "nope"])
    assert issubclass(ToleranceError, ValueError)


@pytest.mark.parametrize(
    ("value", "base", "comparator", "regressed"),
    [
        (0.40, 0.45, ">=", True),   # minimum: lower is worse
        (0.50, 0.45, ">=", False),
        (0.40, 0.45, ">", True),
        (0.50, 0.45, "<=", True),   # maximum: higher is worse
        (0.40, 0.45, "<=", False),
        (0.50, 0.45, "<", True),
        (0.50, 0.45, None, False),  # no direction, never a regression
    ],
)
def test_direction(value, base, comparator, regressed):
    got, delta = compare_to_baseline(value, base, comparator, 0.0)
    assert got is regressed
    assert delta == pytest.approx(value - base)


def test_absolute_tolerance_is_strict_inequality():
    assert compare_to_baseline(10.5, 10.0, "<=", parse_tolerance("yaw_mae=0.5"))[0] is False
    assert compare_to_baseline(10.51, 10.0, "<=", parse_tolerance("yaw_mae=0.5"))[0] is True
    assert compare_to_baseline(10.51, 10.0, "<=", 0.5)[0] is True


def test_relative_tolerance_scales_with_baseline():
    tol = parse_tolerance("fn_rate=5%")
    assert compare_to_baseline(0.209, 0.2, "<=", tol)[0] is False  # +4.5 %
    assert compare_to_baseline(0.211, 0.2, "<=", tol)[0] is True   # +5.5 %
    # relative to |baseline|, so a negative baseline still gives a positive allowance
    assert compare_to_baseline(-1.04, -1.0, ">=", tol)[0] is False


def test_default_tolerance_is_combined_ci_half_width():
    # half-widths 0.03 and 0.04 -> allowed 0.05
    kw = dict(ci=(0.47, 0.53), baseline_ci=(0.41, 0.49))
    assert compare_to_baseline(0.549, 0.50, "<=", **kw)[0] is False
    assert compare_to_baseline(0.551, 0.50, "<=", **kw)[0] is True
    # without CIs the default allows nothing
    assert compare_to_baseline(0.5001, 0.50, "<=")[0] is True
    assert compare_to_baseline(0.55, 0.50, "<=", ci=(None, None))[0] is True


def test_missing_values_do_not_regress():
    regressed, delta = compare_to_baseline(None, 0.5, "<=")
    assert regressed is False and math.isnan(delta)
    assert compare_to_baseline(float("nan"), 0.5, "<=")[0] is False


def test_bad_comparator():
    with pytest.raises(ValueError, match="comparator must be one of"):
        compare_to_baseline(1.0, 0.5, "==", 0.0)


def test_find_tolerance_prefers_exact_metric():
    tols = [parse_tolerance("1%"), parse_tolerance("yaw_mae=0.5")]
    assert find_tolerance("yaw_mae", tols) == Tolerance("yaw_mae", 0.5)
    assert find_tolerance("acc", tols) == Tolerance(None, 0.01, True)
    assert find_tolerance("acc", tols[1:]) is None


def test_annotate_regressions_marks_only_worse_checks():
    now = [
        {"nodeid": "a", "metric": "acc", "value": 0.60, "comparator": "<=", "details": {}},
        {"nodeid": "b", "metric": "acc", "value": 0.30, "comparator": "<=", "details": {}},
        {"nodeid": "c", "metric": "acc", "value": 0.30, "comparator": "<="},
    ]
    base = [{"nodeid": "a", "metric": "acc", "value": 0.50}, {"nodeid": "b", "metric": "acc", "value": 0.50}]
    bad = annotate_regressions(now, base, [parse_tolerance("acc=0.01")], baseline_tag="v1")
    assert [c["nodeid"] for c in bad] == ["a"]
    assert now[0]["details"] == {"baseline": 0.5, "delta": pytest.approx(0.1), "regressed": True,
                                 "change": "worse", "baseline_tag": "v1"}
    assert now[1]["details"]["regressed"] is False
    assert "details" not in now[2]  # no counterpart in the baseline
