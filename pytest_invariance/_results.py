"""Session end on the controller: the JSON document, the HTML report, the history."""
from __future__ import annotations

import json
from typing import Any

from ._io import atomic_write_bytes
from .settings import Settings


def write_outputs(s: Settings, collected: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Write JSON, history and report; return the summary lines for the terminal."""
    checks = sorted(collected["checks"], key=lambda c: (c["nodeid"], c["metric"]))
    doc = {"run": run, "checks": checks}
    json_path = s.resolve_path(s.json)
    atomic_write_bytes(json_path, json.dumps(doc, indent=1, allow_nan=False).encode())  # type: ignore[arg-type]
    failed = [c for c in checks if not c["passed"]]
    known = sum(bool(c["details"].get("expected_failure")) and not c["details"].get("regressed") for c in failed)
    lines = [f"invariance: {len(checks)} checks, {len(failed)} failed ({known} of them known leaks, xfail) -> {json_path}"]
    history_rows = None
    try:
        from .history import HistoryStore

        store = HistoryStore(s.resolve_path(s.history))  # type: ignore[arg-type]
        store.record(doc, run["model_version"], run.get("git_commit"))
        history_rows = store.trend_rows()
        lines.append(f"invariance: history {s.resolve_path(s.history)} (version {run['model_version']})")
    except Exception as exc:  # the history is a convenience: never lose the JSON over it
        lines.append(f"invariance: history not written ({type(exc).__name__}: {exc})")
    if not s.no_report:
        from .report import write_report

        path = s.resolve_path(s.report)
        write_report(doc, path, plots=collected["plots"], history=history_rows)  # type: ignore[arg-type]
        lines.append(f"invariance: report {path}")
    return lines
