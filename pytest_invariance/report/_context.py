"""Turn a results document, plots and history rows into the plain dicts the templates render.

Everything here is pure data shaping (no jinja2, no I/O), so the ordering and the
failure classification can be tested without parsing HTML.
"""
from __future__ import annotations

import base64
import binascii
import math
import operator
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..history._baseline import judge_change

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_HIDDEN_DETAILS = {"baseline", "baseline_value", "delta", "regressed", "baseline_tag"}  # shown in their own row
_RANK = {"FAIL": 0, "ERROR": 1, "INCONCLUSIVE": 2, "REGRESSED": 3, "XFAIL": 4, "PASS": 5, "SKIPPED": 6}
STATUSES = tuple(_RANK)
_N_WORST = 10


def fnum(v: Any, digits: int = 4) -> str:
    """Format a number for humans; None/NaN read as an en dash."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "–" if v is None else str(v)
    if not math.isfinite(v):
        return "–"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def margin(check: Mapping[str, Any]) -> float | None:
    """Distance from the threshold toward passing, in CI half-widths (relative to
    ``|threshold|`` when there is no CI). Negative means the check is on the failing
    side; the most negative check is the worst leak."""
    value, thr, comp = check.get("value"), check.get("threshold"), check.get("comparator")
    if not (_finite(value) and _finite(thr)) or comp not in _OPS:
        return None
    m = (value - thr) if comp in (">", ">=") else (thr - value)
    lo, hi = check.get("ci_low"), check.get("ci_high")
    half = (hi - lo) / 2 if _finite(lo) and _finite(hi) else 0.0
    scale = half if half > 0 else max(abs(thr), 1e-12)
    return float(m / scale)


def _baseline_fields(details: Mapping[str, Any]) -> tuple[Any, Any]:
    """(baseline value, baseline tag). Two spellings are accepted: ``baseline`` = value
    with ``baseline_tag``, or ``baseline`` = tag with ``baseline_value`` (the plugin's)."""
    if "baseline_value" in details:
        return details["baseline_value"], details.get("baseline_tag", details.get("baseline"))
    base = details.get("baseline")
    if isinstance(base, str):
        return None, base
    return base, details.get("baseline_tag")


def _regression(check: Mapping[str, Any]) -> dict[str, Any] | None:
    details = check.get("details") or {}
    if "baseline" not in details and "baseline_value" not in details:
        return None
    base, tag = _baseline_fields(details)
    regressed = details.get("regressed")
    delta = details.get("delta")
    if regressed is None:  # the plugin did not decide: use the default (CI) tolerance
        judged = judge_change(check, {"value": base, "metric": check.get("metric")})
        regressed, d = judged["regressed"], judged["delta"]
        delta = d if delta is None and math.isfinite(d) else delta
    change = str(details.get("change") or "")
    out = {"baseline": fnum(base), "delta": f"{delta:+.4g}" if _finite(delta) else "–",
           "regressed": bool(regressed), "tag": None if tag is None else str(tag)}
    if change.startswith("not compared"):  # other data, no leak direction, ...: said, not "within tolerance"
        out["not_compared"] = change
    return out


def _status(check: Mapping[str, Any], regression: dict[str, Any] | None) -> tuple[str, list[str]]:
    """The displayed status and why: a threshold failure and a regression are different
    findings (the first is absolute, the second is relative to the last release)."""
    verdict = str(check.get("verdict") or ("PASS" if check.get("passed") else "FAIL")).upper()
    status = str(check.get("status") or "").lower()
    if verdict == "ERROR" or status == "error":
        return "ERROR", ["error"]
    if verdict == "SKIPPED" or status == "skipped":
        return "SKIPPED", []
    if verdict == "INCONCLUSIVE" and status != "xfail":
        return "INCONCLUSIVE", ["inconclusive"]  # the CI cannot tell chance from the gate
    reasons = []
    value, thr, comp = check.get("value"), check.get("threshold"), check.get("comparator")
    if _finite(value) and _finite(thr) and comp in _OPS and not _OPS[comp](value, thr):
        reasons.append("threshold")
    if regression and regression["regressed"]:
        reasons.append("regression")
    if verdict == "FAIL" and not reasons:
        reasons.append("threshold")  # e.g. a confident (CI-bound) threshold failed
    if verdict == "PASS" and reasons == ["regression"]:
        return "REGRESSED", reasons  # reported, but the plugin did not fail the test
    known = (check.get("details") or {}).get("expected_failure")
    if verdict == "FAIL" and (status == "xfail" or (not status and known and "regression" not in reasons)):
        return "XFAIL", reasons  # a documented known leak: the test xfailed, the run stays green
    return verdict, reasons


def _plot_view(plot: Mapping[str, Any]) -> dict[str, Any] | None:
    title = str(plot.get("title", ""))
    if plot.get("kind") == "table" or "rows" in plot:
        return {"title": title, "kind": "table", "columns": [str(c) for c in plot.get("columns", [])],
                "rows": [[str(c) for c in row] for row in plot.get("rows", [])]}
    if "svg" in plot:
        data, mime = str(plot["svg"]).encode("utf-8"), "image/svg+xml"
    elif "png" in plot:
        try:  # a PNG must be base64 so it cannot break out of the attribute
            data, mime = base64.b64decode(str(plot["png"]), validate=True), "image/png"
        except (binascii.Error, ValueError):
            return None
    else:
        return None
    # An SVG goes in an <img>, never inline: scripts inside it then cannot run.
    return {"title": title, "kind": str(plot.get("kind", "")),
            "src": f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"}


def sparkline(points: Sequence[Mapping[str, Any]], width: int = 160, height: int = 36) -> dict[str, Any] | None:
    """Coordinates of a tiny trend chart: one dot per version, CI whiskers, the current
    version highlighted. Returns None with fewer than two numeric points."""
    vals = [(i, p) for i, p in enumerate(points) if _finite(p.get("value"))]
    if len(vals) < 2:
        return None
    lows = [p["ci_low"] if _finite(p.get("ci_low")) else p["value"] for _, p in vals]
    highs = [p["ci_high"] if _finite(p.get("ci_high")) else p["value"] for _, p in vals]
    lo, hi = min(lows), max(highs)
    span = (hi - lo) or 1.0
    pad = 4
    n = len(points)

    def xy(i: int, v: float) -> tuple[float, float]:
        x = pad + (width - 2 * pad) * (i / max(n - 1, 1))
        return round(x, 1), round(height - pad - (height - 2 * pad) * (v - lo) / span, 1)

    dots = []
    for (i, p), l, h in zip(vals, lows, highs):
        x, y = xy(i, p["value"])
        dots.append({"x": x, "y": y, "y_lo": xy(i, l)[1], "y_hi": xy(i, h)[1],
                     "current": bool(p.get("current")), "label": f"{p['tag']}: {fnum(p['value'])}"})
    return {"width": width, "height": height, "dots": dots,
            "polyline": " ".join(f"{d['x']},{d['y']}" for d in dots)}


def _trend(rows: Sequence[Mapping[str, Any]], check: Mapping[str, Any], current: str | None) -> dict[str, Any]:
    pts = [dict(r, current=(r.get("tag") == current)) for r in rows]
    if not any(p["current"] for p in pts):  # history written after the report: add this run
        pts.append({"tag": current or "this run", "value": check.get("value"), "ci_low": check.get("ci_low"),
                    "ci_high": check.get("ci_high"), "recorded_at": None, "current": True})
    table = [{"tag": str(p.get("tag")), "value": fnum(p.get("value")),
              "ci": f"[{fnum(p.get('ci_low'))}, {fnum(p.get('ci_high'))}]", "current": p["current"]} for p in pts]
    return {"spark": sparkline(pts), "rows": table}


def _anchor(i: int, check: Mapping[str, Any]) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{check.get('nodeid')}-{check.get('metric')}").strip("-")
    return f"c{i}-{slug[:60]}"


def check_view(i: int, check: Mapping[str, Any]) -> dict[str, Any]:
    """The display fields of one check (strings, already formatted)."""
    regression = _regression(check)
    status, reasons = _status(check, regression)
    m = margin(check)
    comp, thr = check.get("comparator"), check.get("threshold")
    details = [(str(k), fnum(v) if isinstance(v, (int, float)) else str(v))
               for k, v in sorted((check.get("details") or {}).items()) if k not in _HIDDEN_DETAILS]
    return {
        "anchor": _anchor(i, check), "nodeid": str(check.get("nodeid")),
        "metric": str(check.get("metric") or ("(skipped)" if status == "SKIPPED" else "(could not run)")),
        "suite": str(check.get("suite") or "(none)"), "status": status, "reasons": reasons,
        "value": fnum(check.get("value")), "ci": f"[{fnum(check.get('ci_low'))}, {fnum(check.get('ci_high'))}]",
        "chance": fnum(check.get("chance")), "n": fnum(check.get("n")),
        "threshold": f"{comp} {fnum(thr)}" if comp and thr is not None else "–",
        "margin": m, "margin_str": "–" if m is None else f"{m:+.2f}",
        "message": str(check.get("message") or ""), "regression": regression, "details": details,
        "plots": [], "plots_at": None, "trend": None,
    }


def _sort_key(view: Mapping[str, Any]) -> tuple[int, float, str]:
    m = view["margin"]
    return _RANK.get(view["status"], 3), (math.inf if m is None else m), view["nodeid"]


def summarize(views: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per suite and overall, suites with failures first."""
    suites: dict[str, dict[str, Any]] = {}
    total = {"suite": "all", "checks": 0, **{k: 0 for k in STATUSES}, "regressions": 0}
    for v in views:
        row = suites.setdefault(v["suite"], {k: 0 for k in total} | {"suite": v["suite"]})
        for r in (row, total):
            r["checks"] += v["status"] != "SKIPPED"  # a skipped test measured nothing
            r[v["status"]] += 1
            r["regressions"] += "regression" in v["reasons"]
    rows = sorted(suites.values(), key=lambda r: (-(r["FAIL"] + r["ERROR"]), r["suite"]))
    return {"suites": rows, "total": total}


def build_context(doc: Mapping[str, Any], plots: Mapping[Any, Sequence[Mapping[str, Any]]] | None,
                  history: Sequence[Mapping[str, Any]] | None, current_tag: str | None) -> dict[str, Any]:
    """Everything the report template needs, worst checks first."""
    pairs = sorted(((check_view(i, c), c) for i, c in enumerate(doc.get("checks") or [])),
                   key=lambda pair: _sort_key(pair[0]))
    views = [v for v, _ in pairs]
    from ..history import check_identity

    # A check's trend: the same (test, layer, metric) in every stored run, so a sweep's
    # layer4 continues the one-layer runs that read layer4.
    by_key: dict[tuple[Any, Any, Any], list[Mapping[str, Any]]] = {}
    for row in history or ():
        by_key.setdefault(check_identity(row), []).append(row)
    first_of_node: dict[str, dict[str, Any]] = {}
    for v, raw in pairs:
        if history is not None:
            v["trend"] = _trend(by_key.get(check_identity(raw), []), raw, current_tag)
        # a test's plots are shown once, under its worst check; the others link there
        first = first_of_node.setdefault(v["nodeid"], v)
        if first is not v:
            v["plots_at"] = first["anchor"]
    for key, items in (plots or {}).items():
        target = (next((v for v in views if (v["nodeid"], v["metric"]) == tuple(key)), None)
                  if isinstance(key, tuple) else first_of_node.get(str(key)))
        if target is not None:
            target["plots"].extend(p for p in map(_plot_view, items) if p is not None)
    by_anchor = {v["anchor"]: v for v in views}
    for v in views:
        if v["plots_at"] and not by_anchor[v["plots_at"]]["plots"]:
            v["plots_at"] = None
    from ._depth import layer_orders, overview_matrix

    return {"checks": views, "summary": summarize(views), "overview": overview_matrix(pairs, layer_orders(doc)),
            "worst": [v for v in views if v["status"] != "PASS" or v["margin"] is not None][:_N_WORST]}

