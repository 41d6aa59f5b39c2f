"""The values a figure of the plugin's own metrics can take (an MAE is never negative, an R²
never above 1, a rate lies in [0, 1]): a gate outside that range decides nothing.

Only names the plugin's studies produce are known; any other metric (a user's own, or an
erasure cost in points that can be negative) is unbounded here, so no gate on it is refused.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._result import Threshold

_UNIT = (0.0, 1.0)
_NON_NEGATIVE = (0.0, math.inf)
# exact names (the factors suite's, the attribute and MNIST suites')
_EXACT = {"balanced_error": _UNIT, "group_balanced_error": _UNIT, "fn_rate": _UNIT, "fp_rate": _UNIT, "accuracy": _UNIT,
          "balanced_accuracy": _UNIT, "mav_accuracy": _UNIT, "per_angle_mav_accuracy": _UNIT,
          "softmax_accuracy": _UNIT, "top10_variance_share": _UNIT, "rank1": _UNIT, "tar": _UNIT,
          "r2": (-math.inf, 1.0), "mae": _NON_NEGATIVE}
# name endings: a factor's regression MAE (rotation_mae, angle_mae, angle_mae_mlp) and its spread
_ENDINGS = {"_mae": _NON_NEGATIVE, "_mae_mlp": _NON_NEGATIVE, "_mae_std": _NON_NEGATIVE,
            "_mae_control": _NON_NEGATIVE, "_mae_mlp_control": _NON_NEGATIVE}


def metric_range(metric: str) -> tuple[float, float]:
    """``(low, high)`` a figure named ``metric`` can take, e.g. ``rotation_mae`` -> ``(0, inf)``,
    ``r2`` -> ``(-inf, 1)``, ``balanced_error`` -> ``(0, 1)``; ``(-inf, inf)`` for a name the
    plugin does not produce."""
    if metric in _EXACT:
        return _EXACT[metric]
    for ending, bounds in _ENDINGS.items():
        if metric.endswith(ending):
            return bounds
    return -math.inf, math.inf


def vacuous(metric: str, comparator: str, value: float, at_bound: bool = True) -> bool:
    """Whether the gate ``metric comparator value`` passes every value the figure can take;
    with ``at_bound=False`` only a value beyond the range counts (``mae >= 0`` is how a user
    stops gating a figure on purpose; ``mae >= -157`` is a mistake)."""
    low, high = metric_range(metric)
    if not at_bound:
        return (comparator in (">", ">=") and value < low) or (comparator in ("<", "<=") and value > high)
    return {">": value < low, ">=": value <= low, "<": value > high, "<=": value >= high}.get(comparator, False)


def refuse_vacuous(metric: str, threshold: "Threshold", where: str) -> None:
    """Raise :class:`~..errors.InvalidParameterError` naming ``where`` (the option or file that
    set it) when ``threshold`` on ``metric`` could never fail."""
    from ..errors import InvalidParameterError

    if vacuous(metric, threshold.comparator, threshold.value, at_bound=False):
        low, high = metric_range(metric)
        raise InvalidParameterError(
            f"{where}: {threshold.value:g} lies beyond every value {metric} can take ({low:g}..{high:g}), so "
            f"{metric} {threshold.comparator} {threshold.value:g} could never fail; pick a value inside that range "
            "(a value at its bound stops gating the figure)")

