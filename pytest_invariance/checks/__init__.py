"""Figures + thresholds -> verdicts with readable failure messages."""
from __future__ import annotations

from ._result import COMPARATORS, DIRECTIONS, ERROR, FAIL, INCONCLUSIVE, PASS, CheckResult, Threshold
from ._suite import CONFIG_NAME, Suite, resolve_threshold
from ._verdict import evaluate

__all__ = ["COMPARATORS", "CONFIG_NAME", "DIRECTIONS", "ERROR", "FAIL", "INCONCLUSIVE", "PASS", "CheckResult",
           "Suite", "Threshold", "evaluate", "resolve_threshold"]
