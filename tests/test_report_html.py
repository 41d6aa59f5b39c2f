"""The HTML report: escaping, self-containment, atomic write, ordering and content."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest

pytest.importorskip("jinja2")

from pytest_invariance.report import _html, atomic_write_text, render_report, template_dirs, write_report
from pytest_invariance.report._context import build_context, margin
from pytest_invariance.report._sample import SAMPLE_SHA, sample_document, sample_history

XSS = "<script>alert(1)</script>"


def _png_plot():
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), "red").save(buf, format="PNG")
    return {"title": "tiny", "kind": "heatmap", "png": base64.b64encode(buf.getvalue()).decode()}


def test_user_strings_are_escaped(tmp_path):
    doc = sample_document(attribute=XSS)
    doc["run"]["model_path"] = f"models/{XSS}.onnx"
    doc["checks"][0]["metric"] = XSS
    doc["checks"][0]["message"] = f'bad "{XSS}"'
    plots = {doc["checks"][0]["nodeid"]: [{"title": XSS, "kind": "table", "columns": [XSS], "rows": [[XSS]]},
                                          dict(_png_plot(), title=XSS)]}
    html = write_report(doc, tmp_path / "r.html", plots=plots, title=XSS).read_text()
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("&lt;script&gt;") >= 6  # title, path, metric, attribute, message, table


def test_svg_plots_are_images_not_inline_markup(tmp_path):
    evil_svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    doc = sample_document()
    html = render_report(doc, plots={doc["checks"][0]["nodeid"]: [{"title": "s", "kind": "x", "svg": evil_svg}]})
    assert "<script" not in html and "<svg xmlns" not in html
    assert 'src="data:image/svg+xml;base64,' in html


def test_malformed_png_is_dropped():
    doc = sample_document()
    html = render_report(doc, plots={doc["checks"][0]["nodeid"]: [{"title": "t", "kind": "k",
                                                                   "png": '" onerror="alert(1)'}]})
    assert "onerror" not in html


def test_self_contained(tmp_path):
    doc = sample_document()
    from pytest_invariance.report._sample import sample_plots

    html = write_report(doc, tmp_path / "r.html", plots=sample_plots(), history=sample_history(doc)).read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs, "expected images and anchors"
    external = [r for r in refs if not (r.startswith("#") or r.startswith("data:"))]
    assert external == []
    assert "http://" not in html and "https://" not in html
    assert "@import" not in html and "url(" not in html and "<link" not in html
    assert html.count('src="data:image/') == 5  # scree, heat map, FN/FP, angle bars, curve


def test_header_and_summary(tmp_path):
    doc = sample_document()
    html = render_report(doc, history=sample_history(doc))
    assert f'id="model-sha256" class="mono">{SAMPLE_SHA}<' in html
    for key, value in [("count-checks", 7), ("count-pass", 3), ("count-fail", 2), ("count-error", 1),
                       ("count-regressions", 1)]:
        assert f'id="{key}">{value}<' in html
    for text in ("layer4", "onnxruntime / cuda", "torch 2.4.0", "9fceb02d0ae5", "1234"):
        assert text in html


def test_worst_first_and_regression_is_distinct():
    doc = sample_document()
    ctx = build_context(doc, None, None, None)
    statuses = [c["status"] for c in ctx["checks"]]
    assert statuses == ["FAIL", "FAIL", "ERROR", "REGRESSED", "PASS", "PASS", "PASS"]
    # among failures the larger violation (in CI half-widths) comes first
    assert ctx["checks"][0]["metric"] == "balanced_accuracy" and ctx["checks"][0]["margin"] < ctx["checks"][1]["margin"]
    regressed = ctx["checks"][3]
    assert regressed["reasons"] == ["regression"] and regressed["regression"]["delta"] == "+0.041"
    html = render_report(doc)
    assert html.count("regressed vs baseline") == 1 and html.count("threshold violated") == 2


def test_regression_that_also_fails_has_both_reasons():
    doc = sample_document()
    c = doc["checks"][0]
    c["details"].update(baseline=0.85, delta=0.062, regressed=True)
    view = next(v for v in build_context(doc, None, None, None)["checks"] if v["nodeid"] == c["nodeid"])
    assert view["status"] == "FAIL" and view["reasons"] == ["threshold", "regression"]


def test_regression_decided_from_baseline_when_plugin_did_not():
    doc = sample_document()
    c = doc["checks"][3]  # angle_r2 <= 0.5, value 0.31, CI half-width 0.02
    c["details"]["baseline"] = 0.2
    view = next(v for v in build_context(doc, None, None, None)["checks"] if v["metric"] == "angle_r2")
    assert view["status"] == "REGRESSED" and view["regression"]["delta"] == "+0.11"


def test_margin():
    assert margin({"value": 0.6, "threshold": 0.5, "comparator": "<=", "ci_low": 0.55, "ci_high": 0.65}) == pytest.approx(-2)
    assert margin({"value": 0.6, "threshold": 0.5, "comparator": ">=", "ci_low": None, "ci_high": None}) == pytest.approx(0.2)
    assert margin({"value": None, "threshold": 0.5, "comparator": ">="}) is None


def test_trend_marks_current_and_appends_unrecorded_run():
    doc = sample_document()
    hist = sample_history(doc, n_versions=3)
    view = build_context(doc, None, hist, "v2.1.0")["checks"][0]
    assert [r["tag"] for r in view["trend"]["rows"]] == ["v1.0.0", "v1.1.0", "v1.2.0", "v2.1.0"]
    assert view["trend"]["rows"][-1]["current"] and len(view["trend"]["spark"]["dots"]) == 4
    hist.append(dict(hist[0], tag="v2.1.0"))  # already recorded: not added twice
    view = build_context(doc, None, hist, "v2.1.0")["checks"]
    assert sum(r["current"] for v in view for r in v["trend"]["rows"]) == len(view)


def test_plots_attach_to_first_check_of_a_test():
    doc = sample_document()
    node = "audits/test_mnist.py::test_rotation_leak[lenet]"
    ctx = build_context(doc, {node: [_png_plot()]}, None, None)
    views = [v for v in ctx["checks"] if v["nodeid"] == node]
    assert len(views[0]["plots"]) == 1 and views[1]["plots"] == []
    assert views[1]["plots_at"] == views[0]["anchor"]
    ctx = build_context(doc, {(node, "mav_accuracy"): [_png_plot()]}, None, None)
    assert [len(v["plots"]) for v in ctx["checks"] if v["nodeid"] == node] == [0, 1]


def test_empty_document(tmp_path):
    html = write_report({"run": {}, "checks": []}, tmp_path / "r.html").read_text()
    assert 'id="no-checks"' in html and 'id="count-checks">0<' in html


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "index.html"
    target.write_text("old report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    from pytest_invariance import _io

    monkeypatch.setattr(_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(sample_document(), target)
    assert target.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]  # temp file removed


def test_atomic_write_creates_folders_and_readable_file(tmp_path):
    out = atomic_write_text(tmp_path / "a" / "b" / "r.html", "x")
    assert out.read_text() == "x"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_templates_found_in_checkout_and_installed_prefix(tmp_path, monkeypatch):
    dirs = template_dirs()
    assert dirs and (dirs[0] / "report.html").is_file()
    # an installed layout: <prefix>/share/pytest-invariance/templates
    share = tmp_path / "share" / "pytest-invariance" / "templates"
    share.mkdir(parents=True)
    for f in dirs[0].glob("*.html"):
        (share / f.name).write_text(f.read_text().replace("Worst leaks first", "Installed copy"))
    import pytest_invariance

    monkeypatch.setattr(pytest_invariance, "__file__", str(tmp_path / "site" / "pytest_invariance" / "__init__.py"))
    monkeypatch.setattr(_html.sys, "prefix", str(tmp_path))
    _html._environment.cache_clear()
    try:
        assert template_dirs()[0] == share
        assert "Installed copy" in render_report(sample_document())
        monkeypatch.setattr(_html.sys, "prefix", str(tmp_path / "nowhere"))
        monkeypatch.setattr(_html.sysconfig, "get_path", lambda name: str(tmp_path / "nowhere"))
        monkeypatch.setattr(_html.site, "USER_BASE", None)
        _html._environment.cache_clear()
        with pytest.raises(FileNotFoundError, match="report templates not found"):
            render_report(sample_document())
    finally:
        _html._environment.cache_clear()


def test_input_document_is_not_modified():
    doc = sample_document()
    before = copy.deepcopy(doc)
    render_report(doc, history=sample_history(doc))
    assert doc == before


def test_plugin_spelling_of_baseline_fields():
    # plugin.py writes baseline=<tag>, baseline_value=<number>
    doc = sample_document()
    c = doc["checks"][3]
    c["details"].update(baseline="0123456789ab", baseline_value=0.2, delta=0.11, regressed=True)
    view = next(v for v in build_context(doc, None, None, None)["checks"] if v["metric"] == "angle_r2")
    assert view["regression"] == {"baseline": "0.2", "delta": "+0.11", "regressed": True, "tag": "0123456789ab"}
    assert all(k not in dict(view["details"]) for k in ("baseline", "baseline_value", "delta", "regressed"))


def test_summary_tells_gate_failures_known_leaks_regressions_and_errors_apart():
    from pytest_invariance.report import render_report

    def check(nodeid, status, **kw):
        base = {"nodeid": nodeid, "suite": "s", "metric": "m", "value": 1.0, "threshold": 2.0, "comparator": ">=",
                "passed": status == "passed", "ci_low": 0.9, "ci_high": 1.1, "chance": 0.5, "n": 10,
                "verdict": {"passed": "PASS", "error": "ERROR", "skipped": "SKIPPED"}.get(status, "FAIL"),
                "status": status, "details": {}}
        return {**base, **kw}

    doc = {"run": {"models": {"lenet": {"model_path": "/m/lenet.onnx", "model_sha256": "ab" * 32, "layer": "ip1",
                                        "pool": "avg", "preprocessing": {"channels": 1}}}},
           "checks": [check("t::a", "failed"),
                      check("t::b", "xfail", details={"expected_failure": "known"}),
                      check("t::c", "xfail", details={"expected_failure": "known"}),
                      check("t::d", "failed", value=3.0, details={"baseline": "v1", "baseline_value": 5.0,
                                                                   "delta": -2.0, "regressed": True}),
                      check("t::e", "error", value=None, metric=None, message="study x could not run: DataError"),
                      check("t::f", "passed", value=3.0)]}
    html = render_report(doc)
    from pytest_invariance.report._context import build_context

    total = build_context(doc, None, None, None)["summary"]["total"]
    assert (total["FAIL"], total["XFAIL"], total["regressions"], total["ERROR"], total["PASS"]) == (2, 2, 1, 1, 1)
    assert 'id="count-xfail">2<' in html and 'id="count-fail">2<' in html and 'id="count-error">1<' in html
    assert "known leaks (xfail)" in html and "ab" * 32 in html and "pool" in html and "channels=1" in html
