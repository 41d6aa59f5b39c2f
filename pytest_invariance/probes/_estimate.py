"""The one value type every probe returns: a figure with its uncertainty and chance level."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Estimate:
    """A measured figure with a percentile-bootstrap CI and a chance level.

    Parameters
    ----------
    value : float
        The point estimate on the full test set.
    ci_low, ci_high : float
        Bounds of the bootstrap confidence interval (``confidence`` level).
    chance : float or None
        The figure a probe reaches when the factor is not in the features
        (permutation baseline), or None when no baseline was computed.
    n : int
        Number of test samples behind the figure.
    p_value : float or None
        One-sided permutation p-value of ``value`` against the chance runs.
    details : dict
        Free, JSON-serialisable extras (counts per bin, chosen C, ...).

    Examples
    --------
    >>> Estimate(0.9, 0.88, 0.92, chance=0.1, n=1000).value
    0.9
    """

    value: float
    ci_low: float
    ci_high: float
    chance: float | None = None
    n: int = 0
    p_value: float | None = None
    confidence: float = 0.95
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
