"""Run-level notes gathered from the checks: skipped images, image conversions, crops,
attributes that could not be measured, and figures from probe fits that did not converge.

Checks carry these in ``details`` (``n_skipped``, ``data`` = per split the loader's notes,
``not_measurable``, ``converged``); several checks share one data set, so notes are
de-duplicated per (suite, split) before counting. Plain dicts in, plain dicts out.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any, Iterable, Mapping

_SHOW = 5


def run_notes(checks: Iterable[Mapping[str, Any]],
              not_applied: Mapping[str, list[str]] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(fields for results.json's run block, terminal summary lines)``; ``not_applied`` is
    ``{option: [suite names]}`` of the options given that those suites do not apply
    (:func:`~pytest_invariance.checks._suite.not_applied`), one line each."""
    data: dict[tuple[str, str], dict[str, Any]] = {}
    unconverged, not_measurable = [], {}
    read_as_unknown: dict[str, dict[str, int]] = {}
    for c in checks:
        d = c.get("details") or {}
        read_as_unknown.update(d.get("read_as_unknown") or {})
        for split, note in (d.get("data") or {}).items():
            if isinstance(note, Mapping):
                data.setdefault((str(c.get("suite")), str(split)), dict(note))
        not_measurable.update(d.get("not_measurable") or {})
        if d.get("converged") is False:
            unconverged.append(f"{c.get('nodeid')}::{c.get('metric')}")
    # the same split loaded by two suites is the same images: count it once
    unique = {json.dumps(n, sort_keys=True, default=str): (split, n) for (_, split), n in data.items()}
    skipped: Counter[str] = Counter()
    conversions: Counter[str] = Counter()
    crops = set()
    for split, note in unique.values():
        skipped[split] += int(note.get("n_skipped") or 0)
        conversions.update({k: int(v) for k, v in (note.get("conversions") or {}).items()})
        crop = note.get("crop") or {}
        if crop.get("method"):
            crops.add(str(crop["method"]))
    fields = {"n_skipped": sum(skipped.values()), "skipped_by_split": dict(skipped),
              "conversions": dict(conversions), "crop": sorted(crops), "not_measurable": not_measurable,
              "unconverged": unconverged, "options_not_applied": dict(not_applied or {}),
              "read_as_unknown": read_as_unknown}
    lines = [f"invariance: {flag} was not applied by suite(s) {', '.join(names)} (they have no such step; "
             "their figures are as without it)" for flag, names in (not_applied or {}).items()]
    if fields["n_skipped"]:
        per = ", ".join(f"{k} {v}" for k, v in skipped.items() if v)
        lines.append(f"invariance: {fields['n_skipped']} image(s) left out as unreadable, undecodable or badly "
                     f"labelled (--invariance-skip-bad): {per}")
    if conversions:
        lines.append("invariance: images converted on decoding: "
                     + ", ".join(f"{k} {v}" for k, v in sorted(conversions.items())))
    if read_as_unknown:
        shown = "; ".join(f"{col} " + ", ".join(f"{n} {v!r}" for v, n in cells.items())
                          for col, cells in sorted(read_as_unknown.items())[:_SHOW])
        lines.append(f"invariance: factor cells spelled as unknown were left out of their factor: {shown}; if one is "
                     "a level, set [data] unknown = [\"\"] in the folder's invariance.toml (only empty cells unknown)")
    if crops:
        lines.append(f"invariance: CelebA crop: {'; '.join(sorted(crops))}")
    if not_measurable:
        shown = "; ".join(f"{k} ({v})" for k, v in sorted(not_measurable.items())[:_SHOW])
        lines.append(f"invariance: {len(not_measurable)} attribute(s) not measurable, skipped: {shown}")
    if unconverged:
        lines.append(f"invariance: WARNING {len(unconverged)} figure(s) from probe fits that did not converge "
                     f"(details.converged = False), e.g. {', '.join(unconverged[:3])}")
    return fields, lines


def check_n_skipped(check: dict[str, Any]) -> dict[str, Any]:
    """Lift ``details.n_skipped`` to the check's top-level ``n_skipped`` (0 when none)."""
    d = check.get("details") or {}
    if "n_skipped" in d:
        check["n_skipped"] = int(d["n_skipped"] or 0)
    else:
        check.setdefault("n_skipped", 0)
    return check
