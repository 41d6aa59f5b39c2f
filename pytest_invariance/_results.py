"""Session end on the controller: the JSON document, the HTML report, the history."""
from __future__ import annotations

import json
from typing import Any

from ._io import atomic_write_bytes
from .settings import Settings


def write_outputs(s: Settings, collected: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """Write JSON, history and report; return the summary lines for the terminal."""
    from ._progress import Steps, progress_wanted

    with Steps(3, "invariance outputs", progress_wanted(s.progress)) as step:
        return _write_outputs(s, collected, run, step)


def _write_outputs(s: Settings, collected: dict[str, Any], run: dict[str, Any], step: Any) -> list[str]:
    step.next("results.json")
    checks = sorted(collected["checks"], key=lambda c: (c["nodeid"], c["metric"] or ""))
    doc: dict[str, Any] = {"run": run, "checks": checks}
    lines = []
    try:  # the figures across layers, as a table (report.depth_table)
        from .report._depth import depth_table

        doc["depth"] = depth_table(doc)
    except ValueError as exc:  # two checks with one identity: no row can be trusted
        doc["depth"] = []
        lines.append(f"invariance: depth table left empty ({exc})")
    json_path = s.resolve_path(s.json)
    atomic_write_bytes(json_path, json.dumps(doc, indent=1, allow_nan=False).encode())  # type: ignore[arg-type]
    lines.insert(0, f"invariance: results {json_path}")
    history_rows = None
    step.next("history")
    try:
        from .history import HistoryStore, not_a_baseline

        store = HistoryStore(s.resolve_path(s.history))  # type: ignore[arg-type]
        why = not_a_baseline(doc)
        if why in ("interrupted", "audited nothing") or run.get("incomplete"):
            # Partial or empty figures would replace a stored run of the same version.
            lines.append(f"invariance: history {s.resolve_path(s.history)} not written: this run "
                         f"{why.split(' (first: ')[0]}")  # the first error line is in the line above
        elif (kept := store.kept_record(run["model_version"], doc)) is not None:
            lines.append(f"invariance: history {s.resolve_path(s.history)} not written: this run {kept}; that record "
                         "is kept, as later baselines compare with it (pass --model-version TAG to record this run "
                         "under its own tag)")
        else:
            # Skipped tests measured nothing: the history keeps figures and errors only.
            store.record({**doc, "checks": [c for c in checks if c.get("status") != "skipped"]},
                         run["model_version"], run.get("git_commit"))
            lines.append(f"invariance: history {s.resolve_path(s.history)} (version {run['model_version']})"
                         + (f"; not an --invariance-baseline 'latest' ({why})" if why else ""))
        history_rows = store.trend_rows() if store.path.is_file() else None
    except Exception as exc:  # the history is a convenience: never lose the JSON over it
        lines.append(f"invariance: history not written ({type(exc).__name__}: {exc})")
    if not s.no_report:
        from .report import write_report

        step.next("HTML report")
        path = s.resolve_path(s.report)
        write_report(doc, path, plots=collected["plots"], history=history_rows)  # type: ignore[arg-type]
        lines.append(f"invariance: report {path}")
    return lines

