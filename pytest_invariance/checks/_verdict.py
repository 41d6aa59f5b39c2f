"""Estimate + Threshold -> CheckResult, with the failure message as a small report."""
from __future__ import annotations

from typing import Any

from ..probes._estimate import Estimate
from ._result import FAIL, PASS, CheckResult, Threshold

MAX_ROWS = 10  # worst rows shown in a failure message


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def evaluate(nodeid: str, suite: str, metric: str, est: Estimate, threshold: Threshold | None,
             details: dict[str, Any] | None = None) -> CheckResult:
    """Build the CheckResult of one figure; no threshold means measured, not gated.

    Examples
    --------
    >>> r = evaluate("t::x", "s", "yaw_mae", Estimate(8.0, 7.5, 8.5, chance=20.0, n=100), Threshold(">", 10.0))
    >>> r.passed, r.verdict
    (False, 'FAIL')
    """
    details = {**est.details, **(details or {})}
    if est.p_value is not None:
        details.setdefault("p_value", est.p_value)
    details.setdefault("confidence", est.confidence)
    passed = True if threshold is None else threshold.holds(est)
    result = CheckResult(
        nodeid=nodeid, suite=suite, metric=metric, value=float(est.value),
        threshold=None if threshold is None else threshold.value,
        comparator=None if threshold is None else threshold.comparator,
        passed=passed, ci_low=float(est.ci_low), ci_high=float(est.ci_high),
        chance=None if est.chance is None else float(est.chance), n=int(est.n),
        verdict=PASS if passed else FAIL, details=details,
    )
    if threshold is not None and threshold.confident:
        details["on_ci_bound"] = True
    if not passed:
        result.message = failure_message(result, threshold)  # type: ignore[arg-type]
    return result


def failure_message(r: CheckResult, threshold: Threshold) -> str:
    """The failed figure, its CI, chance and gate, the worst rows, and the one threshold key
    that relaxes this figure alone: in a layer sweep qualified by the layer (and the
    attribute or factor), ``LAYER.FACTOR.metric``, so other layers keep their gate."""
    sweep = len(r.details.get("layers") or ()) > 1 and r.details.get("layer") is not None
    shown = (("layer",) if sweep else ()) + ("model", "attribute", "group", "bin", "factor", "level")
    qual = ", ".join(f"{k}={r.details[k]}" for k in shown if r.details.get(k) is not None)
    lines = [
        f"{r.metric}{f' [{qual}]' if qual else ''}: {_fmt(r.value)} "
        f"(CI {int(100 * r.details.get('confidence', 0.95))}% {_fmt(r.ci_low)}..{_fmt(r.ci_high)}, "
        f"chance {_fmt(r.chance)}, n={r.n}) does not satisfy {threshold.describe()}",
    ]
    rows = r.details.get("worst_rows") or []
    for row in rows[:MAX_ROWS]:
        lines.append(f"    {row}")
    if len(rows) > MAX_ROWS:
        lines.append(f"    ... {len(rows) - MAX_ROWS} more rows")
    key = r.metric
    if sweep:
        inner = next((r.details[k] for k in ("attribute", "factor") if r.details.get(k) is not None), None)
        key = ".".join(str(p) for p in (r.details["layer"], inner, r.metric) if p is not None)
    lines.append(
        f"  next: if this leak is accepted, relax it with --invariance-threshold {key}=VALUE "
        "or in the suite's invariance.toml, or mark the test xfail with a reason"
    )
    return "\n".join(lines)
