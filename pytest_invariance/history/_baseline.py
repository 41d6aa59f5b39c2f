"""Baseline comparison as pure functions: is this run worse than a stored one?

"Worse" means *more leakage*: toward violating the check's threshold when it has one (for
``value >= threshold`` a lower value is worse), else in the metric's leak direction
(:data:`LEAK_DIRECTION`: a lower balanced error, rate, MAE, rank-1 or TAR, a higher balanced
accuracy or R^2), measured from chance when both runs carry one. An ungated check is thus
compared too; a metric with neither has no bad direction and is "not compared".
:func:`judge_change` is the one comparison: the pytest baseline gate, ``annotate_regressions``,
the report and ``pytest-invariance compare`` all call it.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidParameterError

__all__ = [
    "LEAK_DIRECTION",
    "leak_direction",
    "judge_change",
    "Tolerance",
    "ToleranceError",
    "parse_tolerance",
    "compare_to_baseline",
    "find_tolerance",
    "annotate_regressions",
    "baseline_report",
    "OTHER_DATA",
    "same_data",
    "data_digest",
]

_HIGHER_IS_BETTER = {">": True, ">=": True, "<": False, "<=": False}
# metric names are identifiers with dots/dashes (fn_rate, yaw.mae); "*" or nothing = every metric
_TOLERANCE_RE = re.compile(
    r"^\s*(?:(?P<metric>[A-Za-z_*][\w.\-*]*)\s*=)?\s*(?P<num>[+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|[+]?\.\d+)\s*(?P<pct>%?)\s*$"
)


# +1: a higher value is more leakage (worse invariance), -1: a lower one. Used for a check
# without a threshold (the factors suite measures ungated factors); docs/factors.md "Baselines".
LEAK_DIRECTION = {"balanced_error": -1, "group_balanced_error": -1, "fn_rate": -1, "fp_rate": -1, "mae": -1, "rank1": -1, "tar": -1,
                  "balanced_accuracy": 1, "r2": 1}
# other suites' per-factor names: yaw_mae, rotation_mae_mlp_erased (probe errors), rank1_blur, tar_blur
_LOWER_LEAKS = re.compile(r"^(?:\w+_)?mae(?:_mlp)?(?:_erased)?$|^(?:rank1|tar)_[a-z]+(?:_erased)?$")
NO_DIRECTION = "not compared: no leak direction"
# a baseline check whose gate its CI could not decide: its figure says neither leak nor none
UNDECIDED_BASE = "not compared: inconclusive in the baseline"
# a baseline check measured on other data (images or labels; details.data_digest): its figure and
# this one's differ by the data as much as by the model, so neither "worse" nor "same" means anything
OTHER_DATA = "not compared: other data"
# how to get a comparison instead (the baseline line and `pytest-invariance compare` say it)
OTHER_DATA_FIX = "audit both versions on the same data, or pass --invariance-baseline TAG of a run that was"


def data_digest(check: Mapping[str, Any]) -> str | None:
    """The digest of the data a check measured (``details.data_digest``: the images and labels
    its test embedded, not the seed), or None for a check recorded before checks carried it."""
    value = (check.get("details") or {}).get("data_digest")
    return str(value) if value else None


def same_data(now: Mapping[str, Any], base: Mapping[str, Any]) -> bool | None:
    """Whether two checks measured the same data: None when either lacks a digest (an older
    record: compared as before, and the baseline line says how many were not verified)."""
    a, b = data_digest(now), data_digest(base)
    return None if a is None or b is None else a == b


def leak_direction(metric: str | None, comparator: str | None = None) -> int | None:
    """+1 when a higher value of this check means more leakage, -1 when a lower one, None when unknown.

    The check's comparator wins (the failing side of its gate is the bad side); without one
    the metric's own direction (:data:`LEAK_DIRECTION`, then suffix rules for per-factor names).

    Examples
    --------
    >>> leak_direction("balanced_error"), leak_direction("balanced_accuracy"), leak_direction("yaw_mae")
    (-1, 1, -1)
    >>> leak_direction("mav_accuracy", ">="), leak_direction("top10_variance_share") is None
    (-1, True)
    """
    if comparator is not None:
        if comparator not in _HIGHER_IS_BETTER:
            raise InvalidParameterError(
                f"comparator must be one of {sorted(_HIGHER_IS_BETTER)} or None; got {comparator!r}")
        return -1 if _HIGHER_IS_BETTER[comparator] else 1
    base = metric.removesuffix("_erased") if metric else metric  # after LEACE: the same figure's direction
    if base in LEAK_DIRECTION:
        return LEAK_DIRECTION[base]
    return -1 if metric and _LOWER_LEAKS.match(metric) else None


class ToleranceError(InvalidParameterError, argparse.ArgumentTypeError):
    """A tolerance spec could not be parsed.

    It is also an ``argparse.ArgumentTypeError`` so that, used as an option's
    ``type=``, pytest prints this message instead of a generic "invalid value".
    """


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may move in the bad direction before it counts as a regression.

    Parameters
    ----------
    metric : str or None
        The metric it applies to; None applies to every metric.
    amount : float
        Absolute amount in the metric's units, or a fraction of the baseline when
        ``relative`` (``0.05`` for ``"5%"``).
    relative : bool
        Whether ``amount`` is a fraction of ``|baseline|``.

    Examples
    --------
    >>> Tolerance("fn_rate", 0.05, relative=True).allowed(0.2)
    0.010000000000000002
    """

    metric: str | None
    amount: float
    relative: bool = False

    def allowed(self, baseline_value: float) -> float:
        """The allowed worsening for a given baseline value, in metric units."""
        return self.amount * abs(baseline_value) if self.relative else self.amount


def parse_tolerance(spec: str) -> Tolerance:
    """Parse ``"metric=amount"`` or ``"metric=percent%"`` into a :class:`Tolerance`.

    ``"yaw_mae=0.5"`` allows the metric to get worse by 0.5 (its own units);
    ``"fn_rate=5%"`` allows 5 % of the baseline's magnitude (relative, *not*
    percentage points: write ``fn_rate=0.05`` for five points). Without
    ``metric=`` (or with ``*=``) the tolerance applies to every metric.

    Parameters
    ----------
    spec : str
        The text given on the command line or in an ini file.

    Returns
    -------
    Tolerance

    Raises
    ------
    ToleranceError
        When the text is not of that form or the amount is negative.

    Examples
    --------
    >>> parse_tolerance("yaw_mae=0.5")
    Tolerance(metric='yaw_mae', amount=0.5, relative=False)
    >>> parse_tolerance("fn_rate=5%")
    Tolerance(metric='fn_rate', amount=0.05, relative=True)
    """
    match = _TOLERANCE_RE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ToleranceError(
            f"{spec!r} is not a tolerance like 'yaw_mae=0.5' (absolute) or 'fn_rate=5%' (relative)"
        )
    metric = match["metric"]
    amount = float(match["num"])
    relative = bool(match["pct"])
    if relative:
        amount /= 100.0
    return Tolerance(None if metric in (None, "*") else metric, amount, relative)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _half_width(ci: Sequence[float | None] | None) -> float:
    if ci is None or len(ci) != 2 or not (_finite(ci[0]) and _finite(ci[1])):
        return 0.0
    return abs(float(ci[1]) - float(ci[0])) / 2.0  # type: ignore[arg-type]


def compare_to_baseline(
    value: float | None,
    baseline_value: float | None,
    comparator: str | None,
    tolerance: Tolerance | float | None = None,
    *,
    ci: Sequence[float | None] | None = None,
    baseline_ci: Sequence[float | None] | None = None,
    metric: str | None = None,
    chance: float | None = None,
    baseline_chance: float | None = None,
) -> tuple[bool, float]:
    """Decide whether ``value`` regressed (leaks more) against ``baseline_value``.

    Parameters
    ----------
    value, baseline_value : float or None
        The check's figure now and in the baseline run.
    comparator : {"<", "<=", ">", ">="} or None
        The check's comparator. ``">"``/``">="`` mean lower is worse, ``"<"``/``"<="``
        mean higher is worse; None: the direction of ``metric`` (:func:`leak_direction`),
        and without one no direction (never a regression).
    tolerance : Tolerance, float or None
        Allowed worsening. A float is an absolute amount. None (the default) allows
        the statistical noise of the difference: ``sqrt(h**2 + h_base**2)`` where ``h``
        and ``h_base`` are the CI half-widths of ``ci`` and ``baseline_ci`` (0 when a
        CI is not given), so a change inside both runs' uncertainty is not flagged.
    ci, baseline_ci : (low, high), optional
        Confidence intervals used by the default tolerance.
    metric : str, optional
        The metric's name, for its leak direction when there is no comparator.
    chance, baseline_chance : float, optional
        Each run's chance level. With both, the change judged is that of the distance from
        chance (a binary rate's chance moves with the probe's share of "present" calls),
        so a figure that moved with its chance did not leak more.

    Returns
    -------
    regressed : bool
        True when the value moved in the bad direction by strictly more than allowed.
    delta : float
        ``value - baseline_value`` (signed, in metric units); NaN when either is missing.

    Examples
    --------
    >>> compare_to_baseline(0.40, 0.45, ">=", 0.01)   # accuracy floor: lower is worse
    (True, -0.04999999999999999)
    >>> compare_to_baseline(0.40, 0.45, "<=", 0.01)   # leakage cap: lower is better
    (False, -0.04999999999999999)
    """
    if not (_finite(value) and _finite(baseline_value)):
        return False, math.nan
    delta = float(value) - float(baseline_value)  # type: ignore[arg-type]
    direction = leak_direction(metric, comparator)
    if direction is None:
        return False, delta
    moved = delta
    if _finite(chance) and _finite(baseline_chance):
        moved -= float(chance) - float(baseline_chance)  # type: ignore[arg-type]
    worsening = direction * moved
    if tolerance is None:
        allowed = math.hypot(_half_width(ci), _half_width(baseline_ci))
    elif isinstance(tolerance, Tolerance):
        allowed = tolerance.allowed(float(baseline_value))  # type: ignore[arg-type]
    else:
        allowed = float(tolerance)
    return bool(worsening > allowed), delta


def judge_change(now: Mapping[str, Any], base: Mapping[str, Any],
                 tolerance: Tolerance | float | None = None) -> dict[str, Any]:
    """How a check moved against the same check of a baseline run: the one comparison.

    Parameters
    ----------
    now, base : dict
        The two checks as results.json holds them (``metric``, ``value``, ``ci_low``,
        ``ci_high``, ``chance``, ``comparator``); ``now``'s comparator is used (the baseline's
        when ``now`` has none).
    tolerance : Tolerance, float or None
        Allowed worsening; None: the two CIs' half-widths combined (:func:`compare_to_baseline`).

    Returns
    -------
    dict
        ``change``: "worse" (more leakage beyond the tolerance), "better", "same" (within
        it), :data:`NO_DIRECTION`, :data:`UNDECIDED_BASE` when ``base`` was INCONCLUSIVE,
        :data:`OTHER_DATA` when the two were measured on different data (:func:`same_data`),
        or "not compared: no value" when either figure is missing;
        ``regressed`` (change == "worse"), ``delta`` (``now - base``, NaN when missing) and
        ``same_data`` (:func:`same_data`: None when either check has no data digest).

    Examples
    --------
    >>> judge_change({"metric": "balanced_error", "value": 0.30, "ci_low": 0.25, "ci_high": 0.35},
    ...              {"metric": "balanced_error", "value": 0.50, "ci_low": 0.45, "ci_high": 0.55})["change"]
    'worse'
    >>> judge_change({"metric": "fp_rate", "value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "chance": 0.5667},
    ...              {"metric": "fp_rate", "value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "chance": 0.5333})["change"]
    'same'
    """
    comparator = now.get("comparator") or base.get("comparator")
    metric = now.get("metric") or base.get("metric")
    kw = dict(metric=metric, chance=now.get("chance"), baseline_chance=base.get("chance"))
    worse, delta = compare_to_baseline(now.get("value"), base.get("value"), comparator, tolerance,
                                       ci=(now.get("ci_low"), now.get("ci_high")),
                                       baseline_ci=(base.get("ci_low"), base.get("ci_high")), **kw)
    if worse:  # the figure itself must have moved too: a chance level that moved with the test
        # split (a binary rate's 1 - q) while the figure stayed (0 vs 0) is not a regression
        worse, _ = compare_to_baseline(now.get("value"), base.get("value"), comparator, tolerance,
                                       ci=(now.get("ci_low"), now.get("ci_high")),
                                       baseline_ci=(base.get("ci_low"), base.get("ci_high")), metric=metric,
                                       chance=None, baseline_chance=None)
    if math.isnan(delta):
        change = "not compared: no value"
    elif same_data(now, base) is False:
        change = OTHER_DATA
    elif base.get("verdict") == "INCONCLUSIVE":
        change = UNDECIDED_BASE
    elif leak_direction(metric, comparator) is None:
        change = NO_DIRECTION
    elif worse:
        change = "worse"
    else:
        better, _ = compare_to_baseline(base.get("value"), now.get("value"), comparator, tolerance,
                                        ci=(base.get("ci_low"), base.get("ci_high")),
                                        baseline_ci=(now.get("ci_low"), now.get("ci_high")), metric=metric,
                                        chance=base.get("chance"), baseline_chance=now.get("chance"))
        change = "better" if better else "same"
    return {"change": change, "regressed": change == "worse", "delta": delta, "same_data": same_data(now, base)}


def find_tolerance(metric: str, tolerances: Iterable[Tolerance]) -> Tolerance | None:
    """The tolerance for ``metric``: an exact match wins over a catch-all (metric None)."""
    catch_all = None
    for tol in tolerances:
        if tol.metric == metric:
            return tol
        if tol.metric is None:
            catch_all = tol
    return catch_all


def check_identity(check: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """What makes two checks (of two runs) the same check: ``(test, layer, metric)``.

    ``test`` is the node id as a one-layer run names it (a sweep's ``[model-layer4]`` is
    ``[model]``), which holds the suite (file), the test, the model and the parametrized
    qualifiers; ``layer`` the layer it read (``details.layer`` for results written before
    checks carried it). A sweep's layer4 is thus compared with a one-layer run of layer4.

    Examples
    --------
    >>> check_identity({"nodeid": "t[model-ip1]", "test": "t[model]", "layer": "ip1", "metric": "acc"})
    ('t[model]', 'ip1', 'acc')
    >>> check_identity({"nodeid": "t[model]", "metric": "acc", "details": {"layer": "ip1"}})
    ('t[model]', 'ip1', 'acc')
    """
    layer = check.get("layer") or (check.get("details") or {}).get("layer")
    return check.get("test") or check.get("nodeid"), layer, check.get("metric")


def annotate_regressions(
    checks: list[dict[str, Any]],
    baseline_checks: Iterable[Mapping[str, Any]],
    tolerances: Iterable[Tolerance] = (),
    *,
    baseline_tag: str | None = None,
) -> list[dict[str, Any]]:
    """Add ``details.baseline``, ``details.delta`` and ``details.regressed`` to each check.

    Checks are matched on :func:`check_identity`; checks with no counterpart in the
    baseline are left untouched. The check dicts are modified in place (and returned)
    so the plugin can turn ``details["regressed"]`` into a failure before writing JSON.

    Returns
    -------
    list of dict
        The checks that regressed.

    Examples
    --------
    >>> now = [{"nodeid": "t", "metric": "acc", "value": 0.5, "comparator": "<=", "details": {}}]
    >>> old = [{"nodeid": "t", "metric": "acc", "value": 0.4}]
    >>> [c["details"]["delta"] for c in annotate_regressions(now, old, [parse_tolerance("0.01")])]
    [0.09999999999999998]
    """
    tolerances = list(tolerances)
    by_key = {check_identity(b): b for b in baseline_checks}
    regressed = []
    for check in checks:
        base = by_key.get(check_identity(check))
        if base is None or not _finite(base.get("value")):
            continue
        judged = judge_change(check, base, find_tolerance(str(check.get("metric")), tolerances))
        bad, delta = judged["regressed"], judged["delta"]
        details = check.setdefault("details", {})
        details["baseline"] = base["value"]
        details["delta"] = None if math.isnan(delta) else delta
        details["regressed"] = bad
        details["change"] = judged["change"]
        if judged["same_data"] is not None:  # None: either record has no data digest (not verified)
            details["same_data"] = judged["same_data"]
        if baseline_tag is not None:
            details["baseline_tag"] = baseline_tag
        if bad:
            regressed.append(check)
    return regressed


def baseline_report(checks: Iterable[Mapping[str, Any]], spec: str, tag: str | None,
                    stored_run: Mapping[str, Any] | None, history: str) -> tuple[dict[str, Any], str, bool]:
    """What the comparison with ``--invariance-baseline`` covered, after the run.

    Parameters
    ----------
    checks : iterable of dict
        This run's checks; a compared one carries ``details.baseline_value``.
    spec : str
        The option's value (a tag or ``"latest"``).
    tag : str or None
        The stored version it resolved to; None when ``latest`` found no earlier complete run.
    stored_run : dict or None
        That version's ``run`` block (``recorded_at``, ``plugin_version``, ``git_commit``).
    history : str
        The history file, for the message.

    Returns
    -------
    fields : dict
        results.json's ``run.baseline``: spec, tag, recorded_at, plugin_version, and the
        checks measured, compared and regressed.
    line : str
        One terminal line naming the baseline and how many checks it covered.
    error : bool
        True when a baseline was found but shares no check with this run, or every check it
        shares was measured on other data (:data:`OTHER_DATA`): nothing was compared, so a
        pass would say nothing about regressions.
    """
    measured = [c for c in checks if c.get("status") in ("passed", "failed", "xfail", "inconclusive") and _finite(c.get("value"))]
    matched = [c for c in measured if (c.get("details") or {}).get("baseline_value") is not None]
    undirected = [c for c in matched if (c.get("details") or {}).get("change") == NO_DIRECTION]
    undecided = [c for c in matched if (c.get("details") or {}).get("change") == UNDECIDED_BASE]
    other_data = [c for c in matched if (c.get("details") or {}).get("change") == OTHER_DATA]
    compared = [c for c in matched if c not in undirected and c not in undecided and c not in other_data]
    # compared without knowing the data: the baseline's record (or this check) has no digest
    unverified = [c for c in compared if (c.get("details") or {}).get("same_data") is None]
    regressed = sum(bool((c.get("details") or {}).get("regressed")) for c in compared)
    run = dict(stored_run or {})
    fields = {"spec": spec, "tag": tag, "recorded_at": run.get("recorded_at"),
              "plugin_version": run.get("plugin_version"), "git_commit": run.get("git_commit"),
              "checks": len(measured), "compared": len(compared), "regressed": regressed,
              "no_direction": sorted({str(c.get("metric")) for c in undirected}),
              "inconclusive_in_baseline": len(undecided), "other_data": len(other_data),
              "data_unverified": len(unverified)}
    if tag is None:
        return fields, (f"invariance: baseline: none - --invariance-baseline {spec} found no earlier complete run "
                        f"in {history}; nothing compared (a first run)"), False
    when = f"recorded {run.get('recorded_at') or '?'}, plugin {run.get('plugin_version') or '?'}"
    if measured and not matched:
        return fields, (f"invariance: ERROR --invariance-baseline {spec} is version {tag} ({when}), which shares "
                        f"no check with this run's {len(measured)}: nothing was compared; pass "
                        f"--invariance-baseline TAG of a run of the same suites, model and layers"), True
    if other_data and not compared:
        return fields, (f"invariance: ERROR --invariance-baseline {spec} is version {tag} ({when}), which was "
                        f"measured on other data (images or labels) than this run: none of the {len(other_data)} "
                        f"checks it shares was compared; {OTHER_DATA_FIX}"), True
    skipped = (f"; {len(undirected)} {NO_DIRECTION} ({', '.join(fields['no_direction'])})"
               if undirected else "")
    skipped += (f"; {len(undecided)} inconclusive in {tag} not compared (its CI could not decide the gate)"
                if undecided else "")
    skipped += (f"; {len(other_data)} not compared: other data in {tag} (images or labels differ; "
                f"{OTHER_DATA_FIX})" if other_data else "")
    skipped += (f"; {len(unverified)} compared without knowing whether the data is the same (no data digest: "
                f"{tag} was recorded by a plugin before checks recorded their data, or the test embeds no images)"
                if unverified else "")
    return fields, (f"invariance: baseline {tag} ({when}): {len(compared)} of {len(measured)} checks compared "
                    f"in their leak direction, {regressed} regressed{skipped}"), False
