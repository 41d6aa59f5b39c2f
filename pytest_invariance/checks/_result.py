"""Checks turn an Estimate and a threshold into a verdict. They return data;
only the pytest layer (plugin.py) turns a failed verdict into a test failure."""
from __future__ import annotations

import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ..errors import InvalidParameterError
from ..probes._estimate import Estimate

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
# Keyword -> comparator: the direction lives in the name (min=, max=, above=, below=).
DIRECTIONS = {"min": ">=", "max": "<=", "above": ">", "below": "<"}

PASS, FAIL, ERROR = "PASS", "FAIL", "ERROR"
INCONCLUSIVE = "INCONCLUSIVE"  # the CI cannot tell chance from the gate (checks._verdict.undecided)


@dataclass(frozen=True)
class Threshold:
    """``metric comparator value``; with ``confident`` the conservative CI bound is compared.

    Examples
    --------
    >>> Threshold(">=", 0.45).holds(Estimate(0.5, 0.44, 0.56))
    True
    >>> Threshold(">=", 0.45, confident=True).holds(Estimate(0.5, 0.44, 0.56))
    False
    """

    comparator: str
    value: float
    confident: bool = False

    def __post_init__(self) -> None:
        if self.comparator not in COMPARATORS:
            raise InvalidParameterError(
                f"comparator must be one of {sorted(COMPARATORS)}; got {self.comparator!r}"
            )
        if not math.isfinite(self.value):
            raise InvalidParameterError(f"threshold must be a finite number; got {self.value!r}")

    @classmethod
    def from_kwargs(cls, confident: bool = False, **kw: float) -> "Threshold":
        given = {k: v for k, v in kw.items() if v is not None}
        unknown = set(given) - set(DIRECTIONS)
        if unknown or len(given) != 1:
            raise InvalidParameterError(
                "give exactly one of min=, max=, above=, below= "
                f"(got {sorted(given) or 'none'})"
            )
        (key, value), = given.items()
        return cls(DIRECTIONS[key], float(value), confident)

    @property
    def higher_passes(self) -> bool:
        return self.comparator in (">", ">=")

    def compared_value(self, est: Estimate) -> float:
        """The figure the threshold is applied to: the point estimate, or the CI bound
        nearest to failing when ``confident`` (lower bound for a minimum)."""
        if not self.confident:
            return est.value
        return est.ci_low if self.higher_passes else est.ci_high

    def holds(self, est: Estimate) -> bool:
        v = self.compared_value(est)
        return bool(math.isfinite(v) and COMPARATORS[self.comparator](v, self.value))

    def describe(self) -> str:
        side = " (CI bound)" if self.confident else ""
        return f"{self.comparator} {self.value:g}{side}"


@dataclass
class CheckResult:
    """One audited figure and its verdict; ``to_dict`` gives the JSON fields of DESIGN.md."""

    nodeid: str
    suite: str
    metric: str
    value: float
    threshold: float | None
    comparator: str | None
    passed: bool
    ci_low: float
    ci_high: float
    chance: float | None
    n: int
    verdict: str = PASS
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None  # the layer the figure was read at
    test: str | None = None   # node id as a one-layer run names it (history identity, see check_identity)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(obj: Any) -> Any:
    """NaN/Inf are not JSON; numpy scalars are not JSON-serialisable either."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
