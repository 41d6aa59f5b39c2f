"""Views across layers and models: the depth table, the overview matrix, paper Fig. 3/4.

Synthetic check records in the results.json layout (a ``layer`` per check,
``run.models[NAME].layers`` in forward order); every expected figure is computed by hand.
"""
from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from pytest_invariance.report import render_report
from pytest_invariance.report._context import build_context, check_view, margin
from pytest_invariance.report._depth import depth_panels, depth_table, margin_colour, overview_matrix
from pytest_invariance.report._digits import digit_figures

LAYERS = ["conv1", "conv2", "ip1"]


def _check(model, layer, metric, value, half=0.5, threshold=None, comparator=None, chance=None, **details):
    passed = True if threshold is None else bool({">=": value >= threshold, "<=": value <= threshold,
                                                 ">": value > threshold, "<": value < threshold}[comparator])
    return {"nodeid": f"audits/mnist_rotation/test_mnist_rotation.py::test_{metric}[{model}-{layer}]",
            "suite": "mnist_rotation", "metric": metric, "layer": layer, "value": value,
            "ci_low": value - half, "ci_high": value + half, "chance": chance, "threshold": threshold,
            "comparator": comparator, "passed": passed, "verdict": "PASS" if passed else "FAIL", "n": 70000,
            "status": "passed" if passed else "failed", "details": {"model": model, "layer": layer, **details}}


def depth_doc():
    """LeNet at three layers (listed out of order), mu-LeNet at ip1 only."""
    angle = {"conv1": 21.0, "conv2": 14.0, "ip1": 7.0}
    mav = {"conv1": 0.40, "conv2": 0.75, "ip1": 0.90}
    checks = []
    for layer in ("ip1", "conv1", "conv2"):  # results.json sorts by node id, not by depth
        checks.append(_check("lenet", layer, "angle_mae", angle[layer], 0.2, 10.0, ">", 25.7))
        checks.append(_check("lenet", layer, "mav_accuracy", mav[layer], 0.01, 0.85, ">=", 0.1, role="task"))
    checks.append(_check("mu_lenet", "ip1", "angle_mae", 8.0, 0.3, 10.0, ">", 25.7))
    run = {"models": {"lenet": {"layers": LAYERS}, "mu_lenet": {"layers": ["ip1"]}}}
    return {"run": run, "checks": checks}


def test_depth_table_rows_in_forward_order():
    rows = depth_table(depth_doc())
    assert [(r["metric"], r["layer"], r["layer_index"]) for r in rows] == [
        ("angle_mae", "conv1", 0), ("angle_mae", "conv2", 1), ("angle_mae", "ip1", 2),
        ("mav_accuracy", "conv1", 0), ("mav_accuracy", "conv2", 1), ("mav_accuracy", "ip1", 2)]
    first = rows[0]
    assert first == {"suite": "mnist_rotation", "test": "audits/mnist_rotation/test_mnist_rotation.py::test_angle_mae",
                     "model": "lenet", "metric": "angle_mae", "qualifier": "", "layer": "conv1", "layer_index": 0,
                     "value": 21.0, "ci_low": 20.8, "ci_high": 21.2, "chance": 25.7, "threshold": 10.0,
                     "comparator": ">", "verdict": "PASS", "nodeid": first["nodeid"]}
    assert json.loads(json.dumps(rows)) == rows  # plain JSON
    # mu-LeNet was measured at one layer: no curve, no rows
    assert not [r for r in rows if r["model"] == "mu_lenet"]


def test_forward_order_falls_back_to_first_appearance():
    doc = depth_doc()
    del doc["run"]["models"]
    rows = depth_table(doc)
    assert [r["layer"] for r in rows if r["metric"] == "angle_mae"] == ["ip1", "conv1", "conv2"]


def test_layers_missing_from_the_model_list_come_after_it():
    doc = depth_doc()
    doc["run"]["models"]["lenet"]["layers"] = ["conv2", "ip1"]
    assert [r["layer"] for r in depth_table(doc) if r["metric"] == "angle_mae"] == ["conv2", "ip1", "conv1"]


def test_qualified_series_are_apart_and_task_sits_beside_its_factor():
    checks = []
    for i, layer in enumerate(("block1", "block2")):
        for factor in ("rotation", "blur"):
            checks.append(dict(_check("facenet", layer, f"{factor}_mae", 10.0 + i, factor=factor), suite="faces"))
            checks.append(dict(_check("facenet", layer, f"rank1_{factor}", 0.5 + i / 10, factor=factor,
                                      role="task"), suite="faces"))
    doc = {"run": {"models": {"facenet": {"layers": ["block1", "block2"]}}}, "checks": checks}
    assert {r["qualifier"] for r in depth_table(doc)} == {"factor=rotation", "factor=blur"}
    groups = {g["qualifier"]: [p["title"] for p in g["panels"]] for g in depth_panels(doc)}
    assert groups == {"factor=blur": ["blur_mae [factor=blur]", "rank1_blur [factor=blur]"],
                      "factor=rotation": ["rotation_mae [factor=rotation]", "rank1_rotation [factor=rotation]"]}
    panel = depth_panels(doc)[0]["panels"][1]
    assert panel["task"] and panel["layers"] == ["block1", "block2"] and panel["value"] == [0.5, 0.6]


def test_two_checks_with_one_identity_are_refused():
    doc = depth_doc()
    doc["checks"].append(dict(doc["checks"][0]))
    with pytest.raises(ValueError, match="identity"):
        depth_table(doc)
    # the report still renders, and says why there are no curves
    assert 'id="depth-error"' in render_report(doc)


def test_margin_colour_against_hand_computation():
    # angle_mae at conv2: 14.0 > 10, CI half-width 0.2 -> margin (14 - 10) / 0.2 = 20: full green
    # a failing check: 9.4 with half-width 0.4 against > 10 -> (9.4 - 10) / 0.4 = -1.5 -> half red
    fail = _check("lenet", "ip1", "angle_mae", 9.4, 0.4, 10.0, ">")
    assert margin(fail) == pytest.approx(-1.5)
    # white (255) halfway to (0xd7, 0x30, 0x27): 255 - 40/2, 255 - 207/2, 255 - 216/2
    assert margin_colour(margin(fail)) == "#%02x%02x%02x" % (235, round(151.5), 147)
    assert margin_colour(20.0) == margin_colour(3.0) == "#1a9850"
    assert margin_colour(0.0) == "#ffffff" and margin_colour(None) == "#e5e7eb"
    # +1 half-width: a third of the way to green
    assert margin_colour(1.0) == "#%02x%02x%02x" % tuple(round(255 + (e - 255) / 3) for e in (0x1a, 0x98, 0x50))


def test_overview_matrix_layers_of_one_model_and_links():
    doc = depth_doc()
    doc["checks"] = [c for c in doc["checks"] if c["details"]["model"] == "lenet"]
    doc["checks"][0] = _check("lenet", "ip1", "angle_mae", 9.4, 0.4, 10.0, ">")
    ctx = build_context(doc, None, None, None)
    mat = ctx["overview"]
    assert [c["label"] for c in mat["columns"]] == LAYERS  # one model: columns are its layers, forward order
    assert [(r["metric"], r["qualifier"]) for r in mat["rows"]] == [("angle_mae", ""), ("mav_accuracy", "")]
    cell = mat["rows"][0]["cells"][2]  # angle_mae at ip1
    assert cell["margin"] == pytest.approx(-1.5) and cell["colour"] == margin_colour(-1.5)
    assert cell["status"] == "FAIL"
    anchors = {v["anchor"] for v in ctx["checks"]}
    assert all(c["anchor"] in anchors for r in mat["rows"] for c in r["cells"])
    html = render_report(doc)
    assert f'href="#{cell["anchor"]}"' in html and f'id="{cell["anchor"]}"' in html
    assert html.index('id="overview-matrix"') < html.index('id="depth"') < html.index("<h2>Checks</h2>")


def test_overview_matrix_columns_name_models_or_both():
    doc = depth_doc()
    cols = overview_matrix([(check_view(i, c), c) for i, c in enumerate(doc["checks"])],
                           {"lenet": LAYERS, "mu_lenet": ["ip1"]})["columns"]
    assert [c["label"] for c in cols] == ["lenet · conv1", "lenet · conv2", "lenet · ip1", "mu_lenet · ip1"]
    one_each = [c for c in doc["checks"] if c["layer"] == "ip1"]
    cols = overview_matrix([(check_view(i, c), c) for i, c in enumerate(one_each)], {})["columns"]
    assert [c["label"] for c in cols] == ["lenet", "mu_lenet"]
    rows = overview_matrix([(check_view(i, c), c) for i, c in enumerate(one_each)], {})["rows"]
    assert rows[1]["metric"] == "mav_accuracy" and rows[1]["cells"][1] is None  # mu-LeNet has no such check


def per_digit_doc(rng):
    """Per-digit records as the rotated-MNIST study writes them, for three models at ip1."""
    checks, truth = [], {}
    for model in ("lenet", "mu_lenet", "pair_lenet"):
        mae = {str(d): float(rng.uniform(5, 20)) for d in range(10)}
        std = {str(d): float(rng.uniform(3, 9)) for d in range(10)}
        checks.append(_check(model, "ip1", "angle_mae", 10.0, per_class_mae=mae, per_class_mae_std=std))
        truth[model, "angle"] = (mae, std)
        for metric in ("softmax_accuracy", "mav_accuracy", "per_angle_mav_accuracy"):
            if model == "mu_lenet" and metric == "softmax_accuracy":
                continue  # mu-LeNet has no classifier
            n = {str(d): int(rng.integers(6000, 8000)) for d in range(10)}
            err = {str(d): int(rng.integers(0, 0.2 * n[str(d)])) / n[str(d)] for d in range(10)}
            role = {"role": "task"} if metric == "mav_accuracy" else {}
            checks.append(_check(model, "ip1", metric, 0.9, per_class_error=err, per_class_n=n, **role))
            truth[model, metric] = err, n
    return {"run": {"models": {"lenet": {}, "mu_lenet": {}, "pair_lenet": {}}}, "checks": checks}, truth


def test_fig3_fig4_data_equal_hand_computation():
    doc, truth = per_digit_doc(np.random.default_rng(3))
    (fig,) = digit_figures(doc)
    assert (fig["suite"], fig["layer"]) == ("mnist_rotation", "ip1")
    digits = [str(d) for d in range(10)]
    for model in ("lenet", "mu_lenet", "pair_lenet"):
        mae, std = truth[model, "angle"]
        rows = [r for r in fig["fig3"] if r["model"] == model]
        assert [r["class"] for r in rows] == [*digits, "mean"]
        assert [r["mean"] for r in rows[:10]] == [mae[d] for d in digits]
        assert [r["std"] for r in rows[:10]] == [std[d] for d in digits]
        assert rows[10]["mean"] == pytest.approx(np.mean(list(mae.values())))
        assert rows[10]["std"] == pytest.approx(np.mean(list(std.values())))
    series = list(dict.fromkeys(r["series"] for r in fig["fig4"]))
    assert series == ["lenet softmax", "lenet MAV", "lenet per-angle MAV", "mu_lenet MAV", "mu_lenet per-angle MAV",
                      "pair_lenet softmax", "pair_lenet MAV", "pair_lenet per-angle MAV"]
    got = [r for r in fig["fig4"] if r["series"] == "mu_lenet MAV"]
    err, n = truth["mu_lenet", "mav_accuracy"]
    assert [r["error"] for r in got[:10]] == [err[d] for d in digits]
    assert got[10]["class"] == "mean" and got[10]["error"] == pytest.approx(sum(err.values()) / 10)
    # per digit: the Wilson interval of errors / images (scipy as reference)
    from scipy.stats import binomtest

    for r in got[:10]:
        ref = binomtest(round(err[r["class"]] * n[r["class"]]), n[r["class"]]).proportion_ci(method="wilson")
        assert (r["ci_low"], r["ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # the mean over digits: normal interval of a mean of independent proportions
    half = 1.959963984540054 * np.sqrt(sum(err[d] * (1 - err[d]) / n[d] for d in digits)) / 10
    assert (got[10]["ci_low"], got[10]["ci_high"]) == pytest.approx((got[10]["error"] - half, got[10]["error"] + half))


def test_fig4_without_counts_has_no_interval():
    doc, _ = per_digit_doc(np.random.default_rng(4))
    for c in doc["checks"]:
        c["details"].pop("per_class_n", None)
    (fig,) = digit_figures(doc)
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in fig["fig4"])


def _decoded_svgs(html, kind):
    srcs = re.findall(rf'<img src="data:image/svg\+xml;base64,([^"]+)" alt="([^"]*)" class="plot plot-{kind}"', html)
    return [(base64.b64decode(s).decode(), alt) for s, alt in srcs]


def test_report_draws_curves_and_fig3_fig4():
    doc, _ = per_digit_doc(np.random.default_rng(0))  # every model at ip1
    doc["checks"] += [c for c in depth_doc()["checks"] if c["layer"] != "ip1"]  # and LeNet deeper down
    doc["run"]["models"]["lenet"]["layers"] = LAYERS
    html = render_report(doc)
    curves = _decoded_svgs(html, "depth_curves")
    # LeNet's angle_mae, with the task (MAV accuracy) beside it
    assert [alt for _, alt in curves] == ["mnist_rotation · lenet across depth"]
    assert curves[0][0].count("<svg") == 1
    assert [[p["title"] for p in g["panels"]] for g in depth_panels(doc)] == [["angle_mae", "mav_accuracy"]]
    assert [alt for _, alt in _decoded_svgs(html, "angle_error_bars")] == [
        "Fig. 3: absolute angle error per digit (mnist_rotation, layer ip1)"]
    assert [alt for _, alt in _decoded_svgs(html, "error_bars")] == [
        "Fig. 4: classification error per digit, 95% CI (mnist_rotation, layer ip1)"]
    # the curve's points are in the report as a table too, forward order
    table = html[html.index('class="depth-table"'):]
    assert table.index("conv1") < table.index("conv2") < table.index(">ip1<")


def test_series_follow_the_checks_test_field_when_present():
    doc = depth_doc()
    for c in doc["checks"]:
        c["test"] = c["nodeid"].replace(f"-{c['layer']}]", "]")
    rows = depth_table(doc)
    assert {r["test"] for r in rows} == {"audits/mnist_rotation/test_mnist_rotation.py::test_angle_mae[lenet]",
                                         "audits/mnist_rotation/test_mnist_rotation.py::test_mav_accuracy[lenet]"}
    assert len(rows) == 6


def test_overview_columns_follow_the_run_models_not_the_worst_first_order():
    doc = depth_doc()
    doc["run"]["models"] = {"mu_lenet": {"layers": ["ip1"]}, "lenet": {"layers": LAYERS}}
    doc["checks"][0] = _check("lenet", "ip1", "angle_mae", 9.4, 0.4, 10.0, ">")  # lenet fails: sorted first
    labels = [c["label"] for c in build_context(doc, None, None, None)["overview"]["columns"]]
    assert labels == ["mu_lenet · ip1", "lenet · conv1", "lenet · conv2", "lenet · ip1"]


def test_a_sweep_writes_depth_rows_in_forward_order_and_draws_them(toy):
    """A real run over every layer of a small ONNX CNN: node ids sort the layers by name
    (``/act`` before ``/conv``), the depth rows follow the network, as the model lists them."""
    pytest.importorskip("jinja2")
    from pytest_invariance.models import load_model
    from pytest_invariance.testing import read_results

    forward = [name for name, _ in load_model(str(toy.path / "audits" / "toy" / "tiny.onnx"), device="cpu")
               .trace_layers()]
    result = toy.runpytest_subprocess("audits", "--model", "audits/toy/tiny.onnx", "--invariance-layers", "all",
                                      "--invariance-progress", "off")
    assert result.ret == 0, result.stdout.str()
    doc = read_results(toy)
    assert [c["layer"] for c in doc["checks"]] != forward  # so the order below is not the file's
    rows = doc["depth"]
    assert [r["layer"] for r in rows] == forward and [r["layer_index"] for r in rows] == list(range(len(forward)))
    by_layer = {c["layer"]: c for c in doc["checks"]}
    assert [r["value"] for r in rows] == [by_layer[la]["value"] for la in forward]
    assert {(r["model"], r["metric"], r["threshold"]) for r in rows} == {("tiny", "feature_mean", 1000.0)}
    html = (toy.path / "reports" / "index.html").read_text()
    assert 'id="overview-matrix"' in html and html.count("plot-depth_curves") == 1
    heads = re.findall(r'<th class="col" title="[^"]*">([^<]*)</th>', html)
    assert heads == forward  # one model: the matrix's columns are its layers, forward order
