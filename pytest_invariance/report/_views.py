"""Figures that compare checks across layers and models, drawn when the report is written.

Each study draws its own per-check plots on the workers; these need every check of the
run, so the controller draws them from the results document: the depth curves
(:func:`~._depth.depth_panels`) and the rotated-MNIST suite's Fig. 3 and Fig. 4
(:func:`~._digits.digit_figures`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._depth import depth_panels
from ._digits import digit_figures

__all__ = ["depth_figures", "digit_plots"]


def depth_figures(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"title", "plot", "rows"}]``: one depth-curve figure per (suite, model, qualifier),
    with the table of its points (strings) for the report."""
    from . import plots
    from ._context import fnum

    out = []
    for g in depth_panels(doc):
        title = f"{g['suite']} · {g['model']}" + (f" · {g['qualifier']}" if g["qualifier"] else "") + " across depth"
        rows = []
        for p in g["panels"]:
            for i, layer in enumerate(p["layers"]):
                ci = f"[{fnum(p['ci_low'][i])}, {fnum(p['ci_high'][i])}]"
                rows.append([p["title"], layer, fnum(p["value"][i]), ci, fnum(p["chance"][i]),
                             fnum(p["threshold"][i])])
        out.append({"title": title, "plot": plots.depth_curves(g["panels"], title), "rows": rows})
    return out


def digit_plots(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Paper Fig. 3 and Fig. 4 per (suite, layer) that has per-digit figures."""
    from . import plots

    out = []
    for f in digit_figures(doc):
        where = f"{f['suite']}, layer {f['layer']}" if f["layer"] else f["suite"]
        if f["fig3"]:
            out.append(plots.angle_error_bars(
                f["fig3"], title=f"Fig. 3: absolute angle error per digit ({where})"))
        if f["fig4"]:
            bars = [{"series": r["series"], "class": r["class"], "value": 100.0 * r["error"],
                     "lo": None if r["ci_low"] is None else 100.0 * r["ci_low"],
                     "hi": None if r["ci_high"] is None else 100.0 * r["ci_high"]} for r in f["fig4"]]
            dark = [r["series"] for r in f["fig4"] if r["technique"] == "softmax"]
            title = f"Fig. 4: classification error per digit, 95% CI ({where})"
            out.append(plots.class_bars(bars, "classification error (%)", title, "error_bars", dark))
    return out
