"""Progress lines (tqdm) for the steps that take more than a few seconds.

Drawn only when wanted (``--invariance-progress auto``: on a terminal and not in CI), on the
terminal's stderr as it was before pytest captured it: pytest's default capture redirects
file descriptor 2 itself while a test runs, so ``sys.__stderr__`` then writes into the
capture file (and is no terminal), and every bar drawn inside a test (extraction, studies)
was lost. The plugin calls :func:`keep_terminal` when it is imported, before capture starts.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Any

_TERMINAL: "IO[str] | None" = None  # a duplicate of the terminal's fd 2, see keep_terminal


def keep_terminal() -> None:
    """Keep a duplicate of file descriptor 2 when it is a terminal, for the bars to write to
    while pytest's capture has redirected fd 2 (called once, at plugin import)."""
    global _TERMINAL
    if _TERMINAL is None:
        try:
            if os.isatty(2):
                _TERMINAL = os.fdopen(os.dup(2), "w", buffering=1)
        except OSError:
            pass


def _stream() -> "IO[str] | None":
    return _TERMINAL or sys.__stderr__


def progress_wanted(mode: str = "auto") -> bool:
    """``on``/``off`` as told; ``auto``: stderr is a terminal and no ``CI`` variable is set."""
    if mode in ("on", "off"):
        return mode == "on"
    stream = _stream()
    return bool(stream and stream.isatty()) and not os.environ.get("CI")


def bar(total: int, desc: str, enabled: bool, unit: str = "it", **kw: Any) -> Any:
    """A tqdm bar over ``total`` units (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc[:40], unit=unit, file=_stream(), disable=not enabled,
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
