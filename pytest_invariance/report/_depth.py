"""Checks across layers and models, as plain rows: the depth table, the overview matrix.

A check's identity is (suite, test, model, layer, metric, qualifier) (DESIGN.md). A
*series* is that identity without the layer; its points are ordered by the model's
forward order, ``run.models[NAME]["layers"]``, else by first appearance in the document.
Pure data shaping (no matplotlib, no jinja2), so every figure can be checked by hand.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["QUALIFIER_KEYS", "qualifier", "check_layer", "check_model", "test_name", "series_key",
           "layer_orders", "depth_series", "depth_table", "margin_colour", "overview_matrix", "MARGIN_SPAN"]

#: Detail keys that tell two checks of one metric apart (as the plugin's threshold qualifiers).
QUALIFIER_KEYS = ("attribute", "factor", "bin", "group")
#: Margins (CI half-widths) at and beyond which a matrix cell has its full colour.
MARGIN_SPAN = 3.0
_PASS_RGB, _FAIL_RGB, _WHITE = (0x1a, 0x98, 0x50), (0xd7, 0x30, 0x27), (0xff, 0xff, 0xff)


def _details(check: Mapping[str, Any]) -> Mapping[str, Any]:
    return check.get("details") or {}


def qualifier(check: Mapping[str, Any]) -> str:
    """``check["qualifier"]`` when the record has one, else ``key=value`` of its qualifying
    details joined by commas (``""`` for an unqualified metric).

    Examples
    --------
    >>> qualifier({"details": {"factor": "blur", "unit": "px"}})
    'factor=blur'
    """
    if check.get("qualifier") is not None:
        return str(check["qualifier"])
    d = _details(check)
    return ",".join(f"{k}={d[k]}" for k in QUALIFIER_KEYS if d.get(k) is not None)


def check_layer(check: Mapping[str, Any]) -> str | None:
    """The check's layer: its own ``layer`` field, else ``details.layer`` (older records)."""
    layer = check.get("layer", _details(check).get("layer"))
    return None if layer is None else str(layer)


def check_model(check: Mapping[str, Any]) -> str | None:
    model = check.get("model", _details(check).get("model"))
    return None if model is None else str(model)


def test_name(check: Mapping[str, Any]) -> str:
    """The check's ``test`` (its node id as a one-layer run names it), else the node id
    without its parameters (``file::test``), which may name the layer."""
    return str(check.get("test") or str(check.get("nodeid") or "").split("[", 1)[0])


def series_key(check: Mapping[str, Any]) -> tuple[str, str, str, str, str]:
    """(suite, test, model, metric, qualifier): a check's identity without the layer."""
    return (str(check.get("suite") or ""), test_name(check), str(check_model(check) or ""),
            str(check.get("metric") or ""), qualifier(check))


def _measured(check: Mapping[str, Any]) -> bool:
    return bool(check.get("metric")) and check.get("status") not in ("error", "skipped")


def layer_orders(doc: Mapping[str, Any]) -> dict[str, list[str]]:
    """Model name -> its layers in forward order: ``run.models[NAME]["layers"]``, then any
    layer the checks name that the list lacks, in order of first appearance. Models come
    in the order of ``run.models``, then of first appearance."""
    models = (doc.get("run") or {}).get("models") or {}
    out: dict[str, list[str]] = {}
    for name, info in models.items() if isinstance(models, Mapping) else ():
        listed = info.get("layers") if isinstance(info, Mapping) else None
        out[str(name)] = [str(x) for x in listed] if isinstance(listed, (list, tuple)) else []
    for c in doc.get("checks") or ():
        model, layer = check_model(c), check_layer(c)
        if model is not None and layer is not None and layer not in out.setdefault(model, []):
            out[model].append(layer)
    return out


def depth_series(doc: Mapping[str, Any], min_layers: int = 2) -> list[dict[str, Any]]:
    """Every series measured at ``min_layers`` or more layers of one model.

    Returns ``[{"key": series_key, "suite", "test", "model", "metric", "qualifier",
    "points": [(layer_index, layer, check), ...]}]``, points in forward order, series in
    order of (suite, model, test, metric, qualifier).

    Raises
    ------
    ValueError
        Two checks with one identity (the same series at the same layer): which of the two
        figures is the layer's would be a guess.
    """
    orders = layer_orders(doc)
    groups: dict[tuple[str, ...], dict[str, Mapping[str, Any]]] = {}
    for c in doc.get("checks") or ():
        layer = check_layer(c)
        if not _measured(c) or layer is None or check_model(c) is None:
            continue
        at = groups.setdefault(series_key(c), {})
        if layer in at:
            raise ValueError(f"two checks share the identity {series_key(c) + (layer,)}: "
                             f"{at[layer].get('nodeid')} and {c.get('nodeid')}")
        at[layer] = c
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[1], k[3], k[4])):
        at = groups[key]
        if len(at) < min_layers:
            continue
        order = orders.get(key[2], [])
        points = sorted(((order.index(layer), layer, c) for layer, c in at.items()), key=lambda p: p[0])
        out.append({"key": key, "suite": key[0], "test": key[1], "model": key[2], "metric": key[3],
                    "qualifier": key[4], "points": points})
    return out


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def depth_table(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """results.json's ``depth``: one row per (series, layer) of :func:`depth_series`, in its
    order, with the figure, its CI, chance and threshold (None where absent).

    Examples
    --------
    >>> doc = {"run": {"models": {"m": {"layers": ["a", "b"]}}}, "checks": [
    ...     {"nodeid": "t.py::test_x[m-b]", "suite": "s", "metric": "mae", "value": 2.0, "layer": "b",
    ...      "details": {"model": "m"}},
    ...     {"nodeid": "t.py::test_x[m-a]", "suite": "s", "metric": "mae", "value": 1.0, "layer": "a",
    ...      "details": {"model": "m"}}]}
    >>> [(r["layer"], r["layer_index"], r["value"]) for r in depth_table(doc)]
    [('a', 0, 1.0), ('b', 1, 2.0)]
    """
    rows = []
    for s in depth_series(doc):
        for index, layer, c in s["points"]:
            rows.append({"suite": s["suite"], "test": s["test"], "model": s["model"], "metric": s["metric"],
                         "qualifier": s["qualifier"], "layer": layer, "layer_index": index,
                         "value": _num(c.get("value")), "ci_low": _num(c.get("ci_low")),
                         "ci_high": _num(c.get("ci_high")), "chance": _num(c.get("chance")),
                         "threshold": _num(c.get("threshold")), "comparator": c.get("comparator"),
                         "verdict": c.get("verdict"), "nodeid": c.get("nodeid")})
    return rows


def margin_colour(m: float | None) -> str:
    """Cell colour for a margin in CI half-widths: white at 0, blending linearly to green
    (passing side) or red (failing side) at ±:data:`MARGIN_SPAN` and beyond; grey for none.

    Examples
    --------
    >>> margin_colour(-1.5), margin_colour(3.0), margin_colour(None)
    ('#eb9893', '#1a9850', '#e5e7eb')
    """
    if m is None or not math.isfinite(m):
        return "#e5e7eb"
    t = min(abs(m), MARGIN_SPAN) / MARGIN_SPAN
    end = _PASS_RGB if m >= 0 else _FAIL_RGB
    return "#" + "".join(f"{round(w + (e - w) * t):02x}" for w, e in zip(_WHITE, end))


def overview_matrix(entries: Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]],
                    orders: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """Factors x models (x layers) for the top of the report.

    ``entries`` are ``(view, check)`` pairs, ``view`` from :func:`~._context.check_view`
    (its ``anchor``, ``status``, ``margin``). Rows are (suite, metric, qualifier); columns
    (model, layer) in the order of ``orders`` (:func:`layer_orders`: models, then each
    model's forward order). A column is titled
    by its layer when one model was audited, by its model when every model has one layer,
    else by both. Returns ``{"columns": [{"model", "layer", "label"}], "rows": [{"suite",
    "metric", "qualifier", "cells": [cell or None per column]}]}``; a cell holds the
    check's anchor, status, margin, colour and a one-line title.
    """
    cells: dict[tuple[str, str, str], dict[tuple[str, str], dict[str, Any]]] = {}
    columns: list[tuple[str, str]] = []
    for view, check in entries:
        if not check.get("metric"):
            continue
        col = (str(check_model(check) or "–"), str(check_layer(check) or "–"))
        if col not in columns:
            columns.append(col)
        row = (str(check.get("suite") or ""), str(check.get("metric")), qualifier(check))
        m = view.get("margin")
        title = (f"{view.get('status')}: {view.get('value')} {view.get('ci')}, threshold {view.get('threshold')}, "
                 f"margin {view.get('margin_str')}")
        # one identity per cell; another test emitting the same row keeps the worse margin
        old = cells.setdefault(row, {}).get(col)
        if old is None or (m is not None and (old["margin"] is None or m < old["margin"])):
            cells[row][col] = {"anchor": view.get("anchor"), "status": view.get("status"), "margin": m,
                               "margin_str": view.get("margin_str"), "colour": margin_colour(m), "title": title}
    model_order = [m for m in dict.fromkeys([*orders, *(c[0] for c in columns)]) if any(c[0] == m for c in columns)]

    def col_rank(c: tuple[str, str]) -> tuple[int, int]:
        layers = list(orders.get(c[0], ()))
        return model_order.index(c[0]), layers.index(c[1]) if c[1] in layers else len(layers)

    columns.sort(key=col_rank)
    one_model = len(model_order) == 1
    one_layer_each = all(sum(c[0] == m for c in columns) == 1 for m in model_order)
    cols = [{"model": m, "layer": layer,
             "label": layer if one_model else m if one_layer_each else f"{m} · {layer}"} for m, layer in columns]
    rows = [{"suite": r[0], "metric": r[1], "qualifier": r[2], "cells": [cells[r].get(c) for c in columns]}
            for r in sorted(cells)]
    return {"columns": cols, "rows": rows}


def is_task(check: Mapping[str, Any]) -> bool:
    """A task metric (what the network is for: rank-1, MAV accuracy) is marked by its test
    with ``details.role = "task"``; the depth view draws it beside the factors."""
    return _details(check).get("role") == "task"


def _panel(series: Mapping[str, Any]) -> dict[str, Any]:
    pts = series["points"]
    checks = [c for _, _, c in pts]
    title = series["metric"] + (f" [{series['qualifier']}]" if series["qualifier"] else "")
    return {"title": title, "layers": [layer for _, layer, _ in pts],
            "task": is_task(checks[0]), **{k: [_num(c.get(k)) for c in checks]
                                           for k in ("value", "ci_low", "ci_high", "chance", "threshold")}}


def depth_panels(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The depth curves, grouped for drawing: one figure per (suite, model, qualifier) with a
    panel per factor series and, beside them, the (suite, model)'s task series of the same
    qualifier (else its unqualified ones). Returns ``[{"suite", "model", "qualifier",
    "panels": [...]}]`` with panels as :func:`~pytest_invariance.report.plots.depth_curves`
    takes them."""
    series = depth_series(doc)
    tasks = [s for s in series if is_task(s["points"][0][2])]
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for s in series:
        if s not in tasks:
            groups.setdefault((s["suite"], s["model"], s["qualifier"]), []).append(s)
    out, drawn = [], []
    for (suite, model, qual), members in groups.items():
        mine = [t for t in tasks if (t["suite"], t["model"]) == (suite, model)]
        beside = [t for t in mine if t["qualifier"] == qual] or [t for t in mine if not t["qualifier"]]
        drawn += beside
        out.append({"suite": suite, "model": model, "qualifier": qual,
                    "panels": [_panel(s) for s in [*members, *beside]]})
    for t in tasks:  # a task series with no factor beside it still gets its curve
        if t not in drawn:
            out.append({"suite": t["suite"], "model": t["model"], "qualifier": t["qualifier"],
                        "panels": [_panel(t)]})
    return out


__all__ += ["is_task", "depth_panels"]
