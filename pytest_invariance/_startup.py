"""Start-up checks on the controller, before any test runs: each fault is one usage error.

* ``--layer`` needs ``--model``;
* the suites under the given paths load (unknown keys in an invariance.toml are named);
* every ``--invariance-threshold``/``--invariance-tolerance`` names a metric that a selected
  suite emits (a qualifier that is no suite's is checked against the selected layers later);
* the output files can be written, the history file is ours, and the previous run's
  results.json and report are removed, so they never pass for this run's.
"""
from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pytest

if TYPE_CHECKING:
    from .checks import Suite
    from .settings import Settings

_SKIP_DIRS = {"node_modules", "site-packages", "__pycache__"}
_CONFIG = "invariance.toml"  # checks._suite.CONFIG_NAME, named here so that plain runs import nothing


def check_options(settings: "Settings") -> None:
    if settings.layer and not settings.model and not settings.embeddings:
        raise pytest.UsageError(
            f"--layer {settings.layer[0]} needs --model: the bundled models use the layer their suite declares "
            "(--invariance-layers selects layers of the bundled models)")


def find_suites(config: pytest.Config) -> list["Suite"]:
    """The suites (invariance.toml) under and above the paths pytest was given, loaded and checked."""
    files: dict[Path, None] = {}
    ignore = [str(p) for p in config.getini("norecursedirs")]
    for arg in config.args:
        path = Path(str(arg).split("::")[0])
        path = path if path.is_absolute() else config.invocation_params.dir / path
        if path.is_dir():
            files.update((f.resolve(), None) for f in _walk(path, ignore, _CONFIG))
        folder = path if path.is_dir() else path.parent
        for above in (folder, *folder.parents):  # the suite a test file or sub-folder belongs to
            if (above / _CONFIG).is_file():
                files[(above / _CONFIG).resolve()] = None
                break
            if above == config.rootpath:
                break
    if not files:
        return []  # not an audit run: import nothing heavy
    from .checks import Suite
    from .errors import InvarianceError

    try:
        return [Suite.load(f) for f in files]
    except InvarianceError as exc:
        raise pytest.UsageError(str(exc)) from None


def _walk(root: Path, ignore: list[str], name: str) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS
                   and not any(fnmatch.fnmatch(d, pat) for pat in ignore)]
        if name in files:
            yield Path(folder) / name


def check_overrides(settings: "Settings", suites: list["Suite"]) -> None:
    """Every threshold/tolerance override must name a metric (and qualifier) a selected suite
    has, and must be able to fail (:func:`~.checks._ranges.refuse_vacuous`)."""
    from .checks._ranges import refuse_vacuous
    from .checks._result import Threshold
    from .errors import InvalidParameterError
    from .history import leak_direction

    if not settings.threshold and not settings.tolerance:
        return
    metrics: set[str] = set()
    qualifiers: set[str] = set()
    for suite in suites:
        metrics |= suite.metrics() or {k.rsplit(".", 1)[-1] for k in suite.thresholds}
        qualifiers |= suite.qualifiers()
    known = ", ".join(sorted(metrics)) or "none (no suite under the given paths declares [suite] metrics)"
    for key, value in settings.threshold:
        qualifier, _, metric = key.rpartition(".")
        if metric not in metrics:
            raise pytest.UsageError(f"--invariance-threshold {key}={value:g}: no selected suite has metric "
                                    f"{metric!r}; known metrics: {known}")
        # a gate that could never fail, told once here (the checks would each refuse it): in the
        # direction a suite's [thresholds] give the metric, and in the one that keeps leakage
        # out (a gate given for an ungated factor's figure gets that one)
        directions = {t.comparator for s in suites for k, t in s.thresholds.items() if k.rsplit(".", 1)[-1] == metric}
        leak = leak_direction(metric)
        if leak is not None:
            directions.add(">=" if leak < 0 else "<=")
        for comparator in directions:
            try:
                refuse_vacuous(metric, Threshold(comparator, value), f"--invariance-threshold {key}={value:g}")
            except InvalidParameterError as exc:
                raise pytest.UsageError(str(exc)) from None
        # A qualifier no suite declares may be a layer: checked against the selected
        # layers once the models are loaded (plugin._check_layer_qualifiers).
    for tol in settings.tolerance:
        if tol.metric is not None and tol.metric not in metrics:
            raise pytest.UsageError(f"--invariance-tolerance {tol.metric}=...: no selected suite has metric "
                                    f"{tol.metric!r}; known metrics: {known}")


def prepare_outputs(settings: "Settings") -> None:
    """Fail now, not after the audits, when an output cannot be written; remove stale outputs."""
    outputs = [("--invariance-json", settings.json), ("--invariance-history", settings.history)]
    if not settings.no_report:
        outputs.append(("--invariance-report", settings.report))
    seen: dict[Any, str] = {}
    for flag, value in outputs:  # one file for two outputs: the later write would destroy the other
        path = settings.resolve_path(value)
        assert path is not None
        # a symbolic link, ../ spelling or hard link of the same file is the same file
        real = (path.stat().st_dev, path.stat().st_ino) if path.is_file() else path.resolve()
        if real in seen:
            raise pytest.UsageError(f"{seen[real]} and {flag} name the same file {path}: give each output its own path")
        seen[real] = flag
    for flag, value in outputs:
        path = settings.resolve_path(value)
        assert path is not None
        problem = _unwritable(path)
        if problem:
            raise pytest.UsageError(f"{flag} {path}: cannot write there ({problem}); pass a writable path")
    cache = settings.resolve_path(settings.cache_dir)
    if not settings.no_cache and cache is not None:
        problem = "it is a file" if cache.is_file() else _unwritable(cache / "entry")
        if problem:
            raise pytest.UsageError(f"--invariance-cache-dir {cache}: cannot write there ({problem}); "
                                    "pass a writable folder or --invariance-no-cache")
    _check_history(settings)


def remove_stale_outputs(settings: "Settings") -> None:
    """A run refused or dead before its end must not leave the last run's green results in place."""
    for value in (settings.json, settings.report):
        path = settings.resolve_path(value)
        if path is not None and path.is_file():
            path.unlink()


def _unwritable(path: Path) -> str | None:
    if path.is_dir():
        return "it is a folder"
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Try for real: os.access is wrong for root and for some network filesystems.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.probe-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            return "the file is read-only"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror or exc}"
    return None


def _check_history(settings: "Settings") -> None:
    from .history import HistoryStore
    from .history._store import HistoryError

    path = settings.resolve_path(settings.history)
    if path is None or not path.exists():
        return
    try:
        HistoryStore(path).check()
    except HistoryError as exc:
        raise pytest.UsageError(f"--invariance-history {path}: {exc}") from None


def run_all(config: pytest.Config, settings: "Settings", collected: dict[str, Any]) -> None:
    suites = find_suites(config)
    audit_run = bool(suites or settings.model or settings.data_dir or settings.embeddings) and not config.option.collectonly
    if audit_run:
        remove_stale_outputs(settings)  # first: any check below may refuse the run
    check_options(settings)
    check_overrides(settings, suites)
    if audit_run:
        collected["audit_run"] = True
        prepare_outputs(settings)
        from .checks._suite import not_applied

        collected["not_applied"] = not_applied(settings, suites)
