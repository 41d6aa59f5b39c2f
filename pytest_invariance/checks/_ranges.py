"""The values a figure can take, read from its metric's name (an MAE is never negative, an
R² never above 1, a rate lies in [0, 1]): a gate outside that range decides nothing."""
from __future__ import annotations

import math

# name terms -> range; differences (selectivity, drops) and free figures are unbounded
_UNBOUNDED = {"selectivity", "drop", "mean"}
_NON_NEGATIVE = {"mae", "std", "mse", "rmse"}
_UNIT = {"accuracy", "error", "rate", "tar", "rank1", "share", "auc", "precision", "recall"}


def metric_range(metric: str) -> tuple[float, float]:
    """``(low, high)`` a figure named ``metric`` can take, e.g. ``yaw_mae`` -> ``(0, inf)``,
    ``r2`` -> ``(-inf, 1)``, ``balanced_error`` -> ``(0, 1)``; ``(-inf, inf)`` when the name
    does not tell."""
    terms = set(metric.lower().split("_"))
    if terms & _UNBOUNDED:
        return -math.inf, math.inf
    if "r2" in terms:
        return -math.inf, 1.0
    if terms & _NON_NEGATIVE:
        return 0.0, math.inf
    if terms & _UNIT:
        return 0.0, 1.0
    return -math.inf, math.inf


def vacuous(metric: str, comparator: str, value: float) -> bool:
    """Whether the gate ``metric comparator value`` passes every value the figure can take."""
    low, high = metric_range(metric)
    return {">": value < low, ">=": value <= low, "<": value > high, "<=": value >= high}.get(comparator, False)
