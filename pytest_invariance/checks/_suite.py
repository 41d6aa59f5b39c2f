"""A suite's config file (``invariance.toml`` beside its tests) and threshold lookup.

Example::

    [suite]
    name = "mnist_rotation"
    input = [1, 28, 28]      # C, H, W the protocol feeds; a --model that needs other input skips

    [preprocess]
    channels = 1

    [thresholds]
    mav_accuracy = { min = 0.85 }              # every model
    "mu_lenet.mav_accuracy" = { min = 0.95 }   # one qualifier (details.model, .attribute, .bin ...)
    "Smiling.fn_rate" = { min = 0.45, confident = true }   # on the CI bound, not the point

    [expected_failures]      # known leaks: the test xfails with this reason instead of failing
    "lenet.mav_accuracy_drop" = "paper 4.1: LeNet's ip1 loses 9 points under MAV"

A threshold is looked up from most to least specific: ``QUALIFIER.METRIC`` for each
qualifier the check carries, then ``METRIC``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import InvalidParameterError
from ._result import DIRECTIONS, Threshold

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "invariance.toml"


def threshold_from_table(key: str, table: Mapping[str, Any], where: str) -> Threshold:
    if not isinstance(table, Mapping):
        raise InvalidParameterError(f"{where}: threshold {key!r} must be a table like {{ min = 0.5 }}; got {table!r}")
    unknown = set(table) - set(DIRECTIONS) - {"confident"}
    if unknown:
        raise InvalidParameterError(
            f"{where}: threshold {key!r} has unknown keys {sorted(unknown)}; use one of min, max, above, below (+ confident)"
        )
    try:
        return Threshold.from_kwargs(confident=bool(table.get("confident", False)),
                                     **{k: v for k, v in table.items() if k != "confident"})
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{where}: threshold {key!r}: {exc}") from None


@dataclass(frozen=True)
class Suite:
    """The parsed config of one audit suite."""

    name: str
    root: Path
    config: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Threshold] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Suite":
        try:
            with open(path, "rb") as f:
                cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidParameterError(f"{path}: not valid TOML ({exc})") from None
        thresholds = {k: threshold_from_table(k, v, str(path)) for k, v in cfg.get("thresholds", {}).items()}
        name = cfg.get("suite", {}).get("name", path.parent.name)
        return cls(name=name, root=path.parent, config=cfg, thresholds=thresholds)

    @classmethod
    def find(cls, start: Path, stop: Path | None = None) -> "Suite":
        """The config at or above ``start``; a suite without one is named after its folder."""
        d = start if start.is_dir() else start.parent
        for folder in (d, *d.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls.load(folder / CONFIG_NAME)
            if stop is not None and folder == stop:
                break
        return cls(name=d.name, root=d)

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        shape = self.config.get("suite", {}).get("input")
        return tuple(shape) if shape else None  # type: ignore[return-value]

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name, {}))

    def expected_failure(self, metric: str, qualifiers: Iterable[str]) -> str | None:
        """The documented reason when this check is a known leak (``[expected_failures]``)."""
        known = self.config.get("expected_failures", {})
        return next((str(known[k]) for k in lookup_keys(metric, list(qualifiers)) if k in known), None)


def lookup_keys(metric: str, qualifiers: Iterable[str]) -> list[str]:
    return [f"{q}.{metric}" for q in qualifiers if q] + [metric]


def resolve_threshold(metric: str, qualifiers: Iterable[str], *, call: Threshold | None,
                      marker: Mapping[str, Threshold], suite: Mapping[str, Threshold],
                      overrides: Mapping[str, float]) -> Threshold | None:
    """Suite config > marker > the call's own default; an override then replaces the value."""
    keys = lookup_keys(metric, list(qualifiers))
    found = call
    for source in (marker, suite):
        for k in keys:
            if k in source:
                found = source[k]
                break
    for k in keys:
        if k in overrides:
            if found is None:
                raise InvalidParameterError(
                    f"--invariance-threshold {k}={overrides[k]:g}: check {metric!r} has no threshold "
                    "direction to override; declare it in the suite's invariance.toml"
                )
            found = Threshold(found.comparator, overrides[k], found.confident)
            break
    return found
