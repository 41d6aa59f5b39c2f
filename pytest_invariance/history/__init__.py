"""Run history (SQLite) and baseline comparison.

``HistoryStore`` keeps every audited model version's figures; the pure functions
``parse_tolerance`` and ``judge_change`` (through ``compare_to_baseline``) decide whether a
figure regressed: more leakage, in its gate's or its metric's leak direction.
"""
from __future__ import annotations

from ._baseline import (
    OTHER_DATA,
    Tolerance,
    ToleranceError,
    annotate_regressions,
    baseline_report,
    check_identity,
    compare_to_baseline,
    find_tolerance,
    judge_change,
    leak_direction,
    parse_tolerance,
)
from ._store import (
    LATEST,
    SCHEMA_VERSION,
    HistoryError,
    HistoryStore,
    TrendPoint,
    UnknownVersionError,
    default_tag,
    figure_keys,
    measures_fewer,
    not_a_baseline,
    run_counts,
)

__all__ = [
    "HistoryStore", "HistoryError", "UnknownVersionError", "TrendPoint", "default_tag",
    "SCHEMA_VERSION", "LATEST", "Tolerance", "ToleranceError", "parse_tolerance",
    "compare_to_baseline", "find_tolerance", "annotate_regressions", "check_identity", "not_a_baseline", "run_counts",
    "figure_keys", "measures_fewer",
    "baseline_report", "judge_change", "leak_direction", "OTHER_DATA",
]
