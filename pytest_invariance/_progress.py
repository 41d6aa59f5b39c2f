"""Progress lines (tqdm) for the steps that take more than a few seconds.

Written to the real stderr, because pytest captures ``sys.stderr``; drawn only when
wanted (``--invariance-progress auto``: on a terminal and not in CI).
"""
from __future__ import annotations

import os
import sys
from typing import Any


def progress_wanted(mode: str = "auto") -> bool:
    """``on``/``off`` as told; ``auto``: stderr is a terminal and no ``CI`` variable is set."""
    if mode in ("on", "off"):
        return mode == "on"
    return bool(sys.__stderr__ and sys.__stderr__.isatty()) and not os.environ.get("CI")


def bar(total: int, desc: str, enabled: bool, unit: str = "it", **kw: Any) -> Any:
    """A tqdm bar over ``total`` units (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc[:40], unit=unit, file=sys.__stderr__, disable=not enabled,
                leave=False, dynamic_ncols=True, **kw)


class Steps:
    """A bar whose unit is a named step of a study: ``with Steps(...) as s: s.next("fit MAV")``."""

    def __init__(self, names_total: int, desc: str, enabled: bool):
        self._bar = bar(names_total, desc, enabled, unit="step")
        self._started = False

    def next(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name, refresh=True)

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self._bar.update(1)
        self._bar.close()
