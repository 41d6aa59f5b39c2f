"""Parameter and array validation shared by the probes (sklearn-style messages).

The constraint objects mirror ``sklearn.utils._param_validation`` in spirit but are
written small on purpose: the probes need floats, ints, options and grids, nothing more.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
from numpy.typing import NDArray

from .._arrays import all_finite, zero_rows  # noqa: F401  (zero_rows: re-exported for the probes)
from ..errors import DataError, EmbeddingError, InvalidParameterError, NotFittedError


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` ("float" or "int") in a range; ``closed`` names closed ends."""

    kind: str
    low: float | None
    high: float | None
    closed: str = "neither"  # "left", "right", "both", "neither"

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            return False
        if self.kind == "int" and not float(value).is_integer():
            return False
        if not math.isfinite(float(value)):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("left", "both") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("right", "both") else value < self.high)
        return bool(lo_ok and hi_ok)

    def __str__(self) -> str:
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        return f"{'an int' if self.kind == 'int' else 'a float'} in the range {left}{lo}, {hi}{right}"


@dataclass(frozen=True)
class Options:
    """One of a fixed set of values (strings or None)."""

    values: tuple[Any, ...]

    def holds(self, value: Any) -> bool:
        return any(value is v or (isinstance(value, str) and value == v) for v in self.values)

    def __str__(self) -> str:
        return "one of {" + ", ".join(repr(v) for v in self.values) + "}"


@dataclass(frozen=True)
class Grid:
    """A non-empty sequence whose every item satisfies ``item``."""

    item: Interval

    def holds(self, value: Any) -> bool:
        if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
            return False
        return len(value) > 0 and all(self.item.holds(v) for v in value)

    def __str__(self) -> str:
        return f"a non-empty sequence of items, each {self.item}"


@dataclass(frozen=True)
class Device:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available)."""

    def holds(self, value: Any) -> bool:
        return isinstance(value, str) and (value in ("cpu", "cuda", "auto") or value.startswith("cuda:"))

    def __str__(self) -> str:
        return "a device string like 'cpu', 'cuda', 'cuda:0' or 'auto'"


class ProbeMixin:
    """sklearn contract helpers: validated params, ``get_params``, fitted checks."""

    _parameter_constraints: dict[str, list[Any]] = {}

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._parameter_constraints}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _validate_params(self) -> None:
        for name, constraints in self._parameter_constraints.items():
            value = getattr(self, name)
            if not any(c.holds(value) for c in constraints):
                allowed = " or ".join(str(c) for c in constraints)
                raise InvalidParameterError(
                    f"The {name!r} parameter of {type(self).__name__} must be {allowed}. Got {value!r} instead."
                )

    def _check_is_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator."
            )

    def _check_n_features(self, X: NDArray[Any]) -> None:
        if X.shape[1] != self.n_features_in_:  # type: ignore[attr-defined]
            raise EmbeddingError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."  # type: ignore[attr-defined]
            )


_ASSUME_FINITE: ContextVar[bool] = ContextVar("assume_finite", default=False)


@contextmanager
def assume_finite() -> Iterator[None]:
    """Within the block, :func:`check_features` skips its NaN/Inf scan (scikit-learn's
    ``assume_finite`` setting): for a caller that has checked its inputs once and passes
    the same arrays to several probes. Shape and dtype checks still run."""
    token = _ASSUME_FINITE.set(True)
    try:
        yield
    finally:
        _ASSUME_FINITE.reset(token)


def check_features(X: Any, name: str = "X") -> NDArray[np.float64]:
    """2-D finite float array, or an EmbeddingError that says how to fix it."""
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise EmbeddingError(f"{name} must be a 2-D array [n_samples, n_features]; got shape {arr.shape}.")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise EmbeddingError(f"{name} is empty (shape {arr.shape}); pass at least one sample and one feature.")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise EmbeddingError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    if not _ASSUME_FINITE.get() and not all_finite(arr):
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise EmbeddingError(
            f"{name} contains NaN or Inf in {rows.size} rows (first: {rows[:5].tolist()}); "
            "drop or repair those embeddings before probing."
        )
    return arr


def check_lengths(n: int, **arrays: Any) -> None:
    for name, arr in arrays.items():
        if arr is not None and len(arr) != n:
            raise DataError(
                f"{name} has {len(arr)} rows but X has {n}; features and labels must be aligned row by row."
            )


def check_target_vector(y: Any, name: str = "y") -> NDArray[np.float64]:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D [n_samples]; got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or Inf; drop those samples before probing.")
    return arr


def check_min_class_count(labels: NDArray[Any], what: str, minimum: int = 2) -> None:
    values, counts = np.unique(labels, return_counts=True)
    small = values[counts < minimum]
    if small.size:
        raise DataError(
            f"{what} {small[:10].tolist()} has fewer than {minimum} samples; "
            f"collect more samples or drop that {what}."
        )


def check_not_constant(X: NDArray[Any], name: str = "X") -> None:
    """Raise EmbeddingError when every feature of ``X`` is constant: the embedding (a dead
    or wrong layer), not the labels, is at fault, so the fix is another layer."""
    if np.ptp(X, axis=0).max() == 0:
        raise EmbeddingError(
            f"every feature of {name} is constant, so there is nothing to probe: the embedding is constant "
            "at this layer (a dead or wrong layer); audit another layer with --layer NAME"
        )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidParameterError(f"device={device!r} was requested but CUDA is not available; use device='cpu'.")
    return device
