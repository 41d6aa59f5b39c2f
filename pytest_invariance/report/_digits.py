"""The rotated-MNIST suite's cross-model figures (paper §4), as rows from check records.

* Fig. 3: absolute angle error per digit, mean ± std, one series per model, from the
  ``angle_mae`` checks' ``details.per_class_mae`` and ``details.per_class_mae_std``.
* Fig. 4: classification error per digit, one series per (model, technique), from
  ``details.per_class_error`` of ``softmax_accuracy``, ``mav_accuracy`` and
  ``per_angle_mav_accuracy``, with a 95% Wilson interval from ``details.per_class_n``
  (the digit's test images; E. B. Wilson, JASA 1927).

Both add a last group "mean", the unweighted mean over the digits, as the paper averages
over the ten labels; its interval is the normal one of a mean of independent proportions,
``z * sqrt(sum p(1 - p) / n) / K``. One pair of figures per (suite, layer); models in the
run's order.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._depth import check_layer, check_model, layer_orders

__all__ = ["TECHNIQUES", "MEAN", "digit_figures", "wilson"]

#: Fig. 4's techniques: metric -> the label of its series.
TECHNIQUES = {"softmax_accuracy": "softmax", "mav_accuracy": "MAV", "per_angle_mav_accuracy": "per-angle MAV"}
MEAN = "mean"


def _class_order(classes: list[str]) -> list[str]:
    try:
        return sorted(classes, key=float)
    except ValueError:
        return sorted(classes)


def _with_mean(per_class: Mapping[str, float]) -> list[tuple[str, float]]:
    keys = _class_order([str(k) for k in per_class])
    vals = [float(per_class[k]) for k in keys]
    return [*zip(keys, vals), (MEAN, sum(vals) / len(vals))]


_Z95 = 1.959963984540054


def wilson(p: float, n: int | float, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials.

    Examples
    --------
    >>> [round(x, 4) for x in wilson(0.15, 200)]
    [0.1071, 0.2061]
    """
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def _error_rows(per_class: Mapping[str, float], counts: Mapping[str, Any] | None) -> list[tuple[str, float, Any, Any]]:
    """(class, error, ci_low, ci_high) per class and for the mean; no counts: no interval."""
    rows = []
    for k, v in _with_mean(per_class):
        if counts is None:
            rows.append((k, v, None, None))
        elif k == MEAN:
            var = sum(p * (1 - p) / float(counts[c]) for c, p in per_class.items())
            half = _Z95 * math.sqrt(var) / len(per_class)
            rows.append((k, v, max(v - half, 0.0), min(v + half, 1.0)))
        else:
            rows.append((k, v, *wilson(v, float(counts[k]))))
    return rows


def digit_figures(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"suite", "layer", "fig3": [{"model", "class", "mean", "std"}], "fig4": [{"series",
    "model", "technique", "class", "error", "ci_low", "ci_high"}]}]``; errors are fractions
    (CI None without the counts), angles as measured. A figure with no data is an empty list;
    a (suite, layer) with neither is left out.
    """
    models = list(((doc.get("run") or {}).get("models") or {}))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for c in doc.get("checks") or ():
        d, metric, model = c.get("details") or {}, c.get("metric"), check_model(c)
        if model is None or c.get("status") in ("error", "skipped"):
            continue
        if model not in models:
            models.append(model)
        key = (str(c.get("suite") or ""), str(check_layer(c) or ""))
        entry = out.setdefault(key, {"suite": key[0], "layer": key[1], "fig3": [], "fig4": []})
        if metric == "angle_mae" and d.get("per_class_mae") and d.get("per_class_mae_std"):
            stds = dict(_with_mean(d["per_class_mae_std"]))
            entry["fig3"] += [{"model": model, "class": k, "mean": v, "std": stds[k]}
                              for k, v in _with_mean(d["per_class_mae"])]
        elif metric in TECHNIQUES and d.get("per_class_error"):
            counts = d.get("per_class_n")
            if counts is not None and not all(counts.get(k) for k in d["per_class_error"]):
                counts = None  # an interval needs every digit's count
            entry["fig4"] += [{"series": f"{model} {TECHNIQUES[metric]}", "model": model,
                               "technique": TECHNIQUES[metric], "class": k, "error": v, "ci_low": lo, "ci_high": hi}
                              for k, v, lo, hi in _error_rows(d["per_class_error"], counts)]
    tech = list(TECHNIQUES.values())
    figures = []
    for entry in out.values():
        if not (entry["fig3"] or entry["fig4"]):
            continue
        entry["fig3"].sort(key=lambda r: models.index(r["model"]))  # stable: digits stay in order
        entry["fig4"].sort(key=lambda r: (models.index(r["model"]), tech.index(r["technique"])))
        figures.append(entry)
    depth = {}  # a layer's earliest position in any model's forward order
    for layers in layer_orders(doc).values():
        for i, layer in enumerate(layers):
            depth[layer] = min(i, depth.get(layer, i))
    return sorted(figures, key=lambda e: (e["suite"], depth.get(e["layer"], len(depth)), e["layer"]))
