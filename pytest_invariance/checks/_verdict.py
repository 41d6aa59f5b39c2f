"""Estimate + Threshold -> CheckResult, with the failure message as a small report.

A gate "close to chance" (chance on its passing side, e.g. balanced error >= 0.40 with chance
0.5) cannot decide when the figure's CI is wider than the gap between chance and the
threshold and covers the threshold: a leak-free embedding then lands beyond the gate by
sampling noise alone (2 of 20 pure-noise columns at n = 60). Such a check is INCONCLUSIVE
(a pytest ERROR naming the fix), not a FAIL or a PASS. When the CI half-width is at most that
gap, a leak-free embedding's point estimate crosses the gate with probability at most ~2.5%
(one side of a 95% CI), and the point estimate decides as before; a CI wholly on one side
decides whatever its width. ``confident`` gates (on the CI bound) are already one-sided and
are left as they are. docs/factors.md, "Gates".
"""
from __future__ import annotations

import math
from typing import Any

from ..probes._estimate import Estimate
from ._result import COMPARATORS, FAIL, INCONCLUSIVE, PASS, CheckResult, Threshold
from ._ranges import vacuous
from ._suite import FixHints

MAX_ROWS = 10  # worst rows shown in a failure message


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def evaluate(nodeid: str, suite: str, metric: str, est: Estimate, threshold: Threshold | None,
             details: dict[str, Any] | None = None, hints: FixHints | None = None) -> CheckResult:
    """Build the CheckResult of one figure; no threshold means measured, not gated. ``hints``
    (:meth:`Suite.fix_hints`): what the failure message may name; only what the suite reads.

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
    gap = None if threshold is None else undecided(est, threshold)
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
    if gap is not None:
        result.passed, result.verdict = False, INCONCLUSIVE
        result.message = inconclusive_message(result, threshold, gap)  # type: ignore[arg-type]
    elif threshold is not None and _failed_fit_shows(metric) and worse_than_chance(est, threshold):
        result.passed, result.verdict = False, INCONCLUSIVE
        result.message = worse_than_chance_message(result, threshold)
    elif threshold is not None and not passed and fails_at_chance(metric, est, threshold):
        result.passed, result.verdict = False, INCONCLUSIVE
        result.message = fails_at_chance_message(result, threshold)
    elif not passed:
        result.message = failure_message(result, threshold, hints or FixHints())  # type: ignore[arg-type]
    return result


def undecided(est: Estimate, threshold: Threshold) -> float | None:
    """The gap between chance and the threshold when this gate cannot decide, else None.

    Undecided: chance lies on the gate's passing side, the CI covers the threshold and its
    half-width exceeds that gap (module docstring).

    Examples
    --------
    >>> undecided(Estimate(0.38, 0.26, 0.52, chance=0.5, n=60), Threshold(">=", 0.4))
    0.09999999999999998
    >>> undecided(Estimate(0.02, 0.0, 0.05, chance=0.5, n=60), Threshold(">=", 0.4)) is None  # a real leak
    True
    """
    gap = _chance_gap(est, threshold)
    lo, hi, c = est.ci_low, est.ci_high, est.chance
    if gap is None or not lo <= threshold.value <= hi:
        return None
    # a CI that excludes chance is no leak-free embedding's: the gate decides
    if not lo <= c <= hi:  # type: ignore[operator]
        return None
    return gap if (hi - lo) / 2 > gap else None


def _failed_fit_shows(metric: str) -> bool:
    """Metrics for which a figure far past chance, on the gate's passing side, can only be a
    failed fit: an error (MAE, balanced error). Not a task metric such as rank-1, where a
    user's floor below chance leaves a good figure far past chance on that side."""
    return metric.endswith("mae") or "balanced_error" in metric


def worse_than_chance(est: Estimate, threshold: Threshold) -> bool:
    """True when the whole CI lies beyond chance, away from the gate, by more than the gap
    between chance and the gate: the probe did much worse than a guess (an MAE of 7e10
    degrees against 25.7 at chance), so it failed to fit and the figure cannot show that the
    embedding is invariant, though it passes a gate such as ``MAE > 10``.

    Examples
    --------
    >>> worse_than_chance(Estimate(7e10, 6e9, 2e11, chance=25.7, n=70000), Threshold(">", 10.0))
    True
    >>> worse_than_chance(Estimate(0.52, 0.45, 0.59, chance=0.5, n=60), Threshold(">=", 0.4))  # noise
    False
    """
    gap = _chance_gap(est, threshold)
    if not gap:
        return False
    c = float(est.chance)  # type: ignore[arg-type]
    return est.ci_low > c + gap if threshold.higher_passes else est.ci_high < c - gap


def _chance_is_invariance(metric: str) -> bool:
    """Figures of a probe for the nuisance factor, which a know-nothing probe holds at chance:
    errors, rates, the factor's balanced accuracy, R^2. Not task figures (softmax or MAV
    accuracy, rank-1, TAR), whose gates are floors that a model at chance rightly fails."""
    return metric.endswith(("mae", "r2")) or any(k in metric for k in ("balanced_error", "fn_rate", "fp_rate",
                                                                       "balanced_accuracy"))


def fails_at_chance(metric: str, est: Estimate, threshold: Threshold) -> bool:
    """True when the gate fails at chance itself and the figure cannot be told from chance
    on the leaking side: a probe that knows nothing fails such a gate on this data (an angle
    in radians against ``yaw_mae > 10`` degrees; a rate of a balanced probe whose threshold
    sits off-centre, chance ``fn = 1 - q``), so the failure shows no leak.

    Examples
    --------
    >>> fails_at_chance("yaw_mae", Estimate(0.298, 0.27, 0.33, chance=0.289, n=300), Threshold(">", 10.0))
    True
    >>> fails_at_chance("fp_rate", Estimate(0.05, 0.02, 0.09, chance=0.37, n=300), Threshold(">=", 0.4))  # a leak
    False
    """
    c = est.chance
    if not _chance_is_invariance(metric) or c is None or not math.isfinite(c):
        return False
    if COMPARATORS[threshold.comparator](c, threshold.value):
        return False  # chance passes: the other rules decide
    beyond = est.ci_high < c if threshold.higher_passes else est.ci_low > c  # past chance, toward the leak
    return not beyond


def fails_at_chance_message(r: CheckResult, threshold: Threshold) -> str:
    """One line: chance itself fails the gate and the figure is not past chance; the fixes."""
    side = "<" if threshold.higher_passes else ">"
    key = threshold_key(r)
    if r.metric.endswith(("fn_rate", "fp_rate")):  # chance 1 - q or q: where the probe's threshold sits
        fix = ("gate balanced_error instead, which a probe that knows nothing holds at 0.5 wherever its threshold "
               f"sits (--invariance-threshold {key[: len(key) - len(r.metric)]}balanced_error=0.4)")
    else:
        fix = "check the factor's units and spread (an angle in radians against a gate in degrees?)"
    return (f"{r.metric}{_qualifiers(r)}: INCONCLUSIVE: {_fmt(r.value)} (CI {int(100 * r.details.get('confidence', 0.95))}% "
            f"{_fmt(r.ci_low)}..{_fmt(r.ci_high)}, chance {_fmt(r.chance)}, n={r.n}) fails {threshold.describe()}, but so "
            f"does chance itself and the figure cannot be told from it: a probe that knows nothing about the factor "
            f"fails this gate on this data, so the failure shows no leak; {fix}, or gate a value chance passes: "
            f"--invariance-threshold {threshold_key(r)}=VALUE with VALUE {side} {_fmt(r.chance)}")


def _chance_gap(est: Estimate, threshold: Threshold) -> float | None:
    """``|chance - threshold|`` for a gate on the value (not its CI bound) whose passing side
    holds chance, with finite CI and chance; else None. Both rules above start from it."""
    lo, hi, c = est.ci_low, est.ci_high, est.chance
    if threshold.confident or c is None or not all(math.isfinite(x) for x in (lo, hi, c)):
        return None
    if not COMPARATORS[threshold.comparator](c, threshold.value):
        return None
    return abs(float(c) - threshold.value)


def worse_than_chance_message(r: CheckResult, threshold: Threshold) -> str:
    """One line: the probe did worse than chance by more than the gate's margin; a tool error."""
    return (f"{r.metric}{_qualifiers(r)}: INCONCLUSIVE: {_fmt(r.value)} (CI {int(100 * r.details.get('confidence', 0.95))}% "
            f"{_fmt(r.ci_low)}..{_fmt(r.ci_high)}, chance {_fmt(r.chance)}, n={r.n}) is worse than chance by more than "
            f"chance is from the gate {threshold.describe()}: the probe failed to fit (a guess does better), so this "
            "figure cannot show invariance; check the embedding's values where they come from (the --layer read, or "
            "the --invariance-embeddings shards), e.g. features constant on the training rows but not on test, and "
            "the probe's figures in results.json")


def threshold_key(r: CheckResult) -> str:
    """The narrowest ``--invariance-threshold`` key for this figure: ``[LAYER.][QUALIFIER.]metric``
    with the factor (attribute, bin, group) it measures, and in a layer sweep its layer."""
    sweep = len(r.details.get("layers") or ()) > 1 and r.details.get("layer") is not None
    inner = next((r.details[k] for k in ("factor", "attribute", "bin", "group") if r.details.get(k) is not None), None)
    return ".".join(str(p) for p in (r.details.get("layer") if sweep else None, inner, r.metric) if p is not None)


def inconclusive_message(r: CheckResult, threshold: Threshold, gap: float) -> str:
    """One line: the gate cannot decide, the test split's size and CI width, and the fixes
    (about how many test images would decide, or the widest gate this split can decide)."""
    half = (r.ci_high - r.ci_low) / 2
    need = math.ceil(r.n * (half / gap) ** 2) if r.n and gap > 0 else None
    c = float(r.chance)  # type: ignore[arg-type]
    limit = c - half if threshold.higher_passes else c + half
    side = "<=" if threshold.higher_passes else ">="
    more = f"about {need} test images instead of {r.n}" if need else "more test images"
    shown = _round_away(limit, down=threshold.higher_passes)
    # a gate past what the figure can take (an MAE below 0, an R^2 above 1) would never fail
    larger = ("no gate this split can decide lies within the figure's range" if vacuous(r.metric, threshold.comparator, float(shown))
              else f"gate a larger leak: --invariance-threshold {threshold_key(r)}=VALUE with VALUE {side} {shown}")
    return (f"{r.metric}{_qualifiers(r)}: INCONCLUSIVE: {_fmt(r.value)} (CI {int(100 * r.details.get('confidence', 0.95))}% "
            f"{_fmt(r.ci_low)}..{_fmt(r.ci_high)}, chance {_fmt(r.chance)}, n={r.n}) cannot decide "
            f"{threshold.describe()}: the test split is too small, its CI half-width {half:.3g} is wider than the "
            f"{gap:.3g} between chance and the gate, so a leak-free embedding crosses it by chance; add images "
            f"({more}) or {larger}")


def _round_away(x: float, down: bool) -> str:
    """``x`` to 3 significant digits, rounded away from the undecided side, so that the value
    shown, pasted as the gate, decides (0.3849 shown as 0.385 left the gap equal to the CI
    half-width, still undecided)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:.3g}"
    step = 10 ** (math.floor(math.log10(abs(x))) - 2)
    v = (math.floor if down else math.ceil)(x / step) * step
    v = v - step if down and v >= x else v + step if not down and v <= x else v
    return f"{v:.3g}"


def _qualifiers(r: CheckResult) -> str:
    sweep = len(r.details.get("layers") or ()) > 1 and r.details.get("layer") is not None
    shown = (("layer",) if sweep else ()) + ("model", "attribute", "group", "bin", "factor", "level")
    qual = ", ".join(f"{k}={r.details[k]}" for k in shown if r.details.get(k) is not None)
    return f" [{qual}]" if qual else ""


def failure_message(r: CheckResult, threshold: Threshold, hints: FixHints = FixHints()) -> str:
    """The failed figure, its CI, chance and gate, the worst rows, and the narrowest threshold
    key that relaxes this figure alone (:func:`threshold_key`: ``FACTOR.metric``, in a layer
    sweep ``LAYER.FACTOR.metric``, so other factors and layers keep their gate) and the file
    the suite reads it from (``hints``: a factors folder's own invariance.toml); the gate
    options only for a suite that reads them."""
    lines = [
        f"{r.metric}{_qualifiers(r)}: {_fmt(r.value)} "
        f"(CI {int(100 * r.details.get('confidence', 0.95))}% {_fmt(r.ci_low)}..{_fmt(r.ci_high)}, "
        f"chance {_fmt(r.chance)}, n={r.n}) does not satisfy {threshold.describe()}",
    ]
    rows = r.details.get("worst_rows") or []
    for row in rows[:MAX_ROWS]:
        lines.append(f"    {row}")
    if len(rows) > MAX_ROWS:
        lines.append(f"    ... {len(rows) - MAX_ROWS} more rows")
    key = threshold_key(r)
    # the factors suite's tests are the plugin's: its gates live in the data folder, not in xfail marks
    other = (", or stop gating that column (--invariance-gate / [gate] columns)" if hints.gate
             else f", or record it as a known leak, \"{key}\" = \"why\" under [expected_failures] there "
                  "(the test then xfails with that reason)" if hints.known_leaks else "")
    lines.append(
        f"  next: if this leak is accepted, relax it with --invariance-threshold {key}=VALUE "
        f"or \"{key}\" under [thresholds] in {hints.thresholds_file}{other}"
    )
    return "\n".join(lines)
