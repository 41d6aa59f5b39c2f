"""A synthetic but realistic results document, plots and history, for the report's
own tests and for previewing template changes::

    python -m pytest_invariance.report._sample reports/sample.html

The figures are made up (seeded); they only have the shapes the real studies produce.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np

SAMPLE_SHA = "3f5a9c0e7b1d44c2a8e6f0b9d2c7a1e5f4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9"


def _check(nodeid: str, suite: str, metric: str, value: float, half: float, comparator: str | None,
           threshold: float | None, chance: float | None, n: int, **details: Any) -> dict[str, Any]:
    ops = {"<": value < (threshold or 0), "<=": value <= (threshold or 0),
           ">": value > (threshold or 0), ">=": value >= (threshold or 0), None: True}
    passed = bool(ops[comparator])
    return {"nodeid": nodeid, "suite": suite, "metric": metric, "value": value,
            "threshold": threshold, "comparator": comparator, "passed": passed,
            "ci_low": value - half, "ci_high": value + half, "chance": chance, "n": n,
            "verdict": "PASS" if passed else "FAIL",
            "message": "" if passed else f"{metric} = {value:.3g} violates {comparator} {threshold:g} "
                                         f"(chance {chance}); raise the limit or mark xfail with a reason",
            "details": details}


def sample_document(attribute: str = "Smiling") -> dict[str, Any]:
    """A results document with passing, failing, erroring and regressed checks."""
    checks = [
        _check("audits/test_celeba.py::test_attribute_leak[Smiling]", "celeba", "balanced_accuracy",
               0.912, 0.006, "<=", 0.65, 0.5, 19962, model="face", attribute=attribute,
               group="identity-independent"),
        _check("audits/test_celeba.py::test_attribute_leak[Eyeglasses]", "celeba", "balanced_accuracy",
               0.641, 0.011, "<=", 0.65, 0.5, 19962, attribute="Eyeglasses", group="identity-independent",
               baseline=0.60, delta=0.041, regressed=True, baseline_tag="1a2b3c4d5e6f"),
        _check("audits/test_celeba.py::test_yaw", "celeba", "yaw_mae", 7.13, 0.21, ">=", 15.0, 21.4,
               19962, bin="all", count=19962),
        _check("audits/test_mnist.py::test_rotation_leak[lenet]", "mnist", "angle_r2", 0.31, 0.02,
               "<=", 0.5, 0.0, 10000, model="lenet"),
        _check("audits/test_mnist.py::test_rotation_leak[lenet]", "mnist", "mav_accuracy", 0.899, 0.003,
               ">=", 0.85, 0.1, 10000, model="lenet", baseline=0.902, delta=-0.003, regressed=False,
               baseline_tag="1a2b3c4d5e6f"),
        _check("audits/test_mnist.py::test_spectrum", "mnist", "energy_top_k", 0.93, 0.0, ">=", 0.9, None,
               10000, k=10),
    ]
    checks.append({"nodeid": "audits/test_blur.py::test_blur_curve", "suite": "blur", "metric": "auc",
                   "value": None, "threshold": 0.8, "comparator": ">=", "passed": False, "ci_low": None,
                   "ci_high": None, "chance": None, "n": 0, "verdict": "ERROR",
                   "message": "DatasetNotFoundError: LFW not under data/lfw; set --invariance-data-dir",
                   "details": {}})
    run = {"plugin_version": "0.1.0", "model_path": "models/face-resnet50.onnx", "model_sha256": SAMPLE_SHA,
           "model_version": "v2.1.0", "layer": "layer4", "backend": "onnxruntime", "device": "cuda",
           "seed": 1234, "started": "2024-06-01T10:00:00+00:00", "finished": "2024-06-01T10:07:31+00:00",
           "git_commit": "9fceb02d0ae598e95dc970b74767f19372d61af8",
           "versions": {"torch": "2.4.0", "onnxruntime": "1.18.0", "python": "3.11.7"},
           "preprocessing": {"size": "112x112", "mean": "0.5", "std": "0.5"}}
    return {"run": run, "checks": checks}


def sample_plots() -> dict[str, list[dict[str, Any]]]:
    """One of each figure kind, attached to the sample checks."""
    from . import plots

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(120, 2000)) + np.repeat(rng.normal(size=(120, 10)) * 2, 200, axis=1)
    s = np.sort(np.abs(rng.normal(size=120)))[::-1] * np.r_[np.full(10, 8.0), np.ones(110)]
    rows = [{"attribute": a, "group": g, "fn_rate": r, "fn_ci": (r - 0.01, r + 0.012),
             "fp_rate": r / 2, "fp_ci": (r / 2 - 0.008, r / 2 + 0.01)}
            for a, g, r in [("Male", "identity-dependent", 0.03), ("Bald", "identity-dependent", 0.12),
                            ("Young", "identity-correlated", 0.2), ("Smiling", "identity-independent", 0.09),
                            ("Eyeglasses", "identity-independent", 0.05)]]
    return {
        "audits/test_celeba.py::test_attribute_leak[Smiling]": [plots.fn_fp_bars(rows, "Attribute errors")],
        "audits/test_celeba.py::test_yaw": [plots.bin_table([
            {"bin": "0-15", "mae": 7.13, "ci": (6.9, 7.4), "count": 14255},
            {"bin": "15-30", "mae": 5.9, "ci": (5.6, 6.2), "count": 4120},
            {"bin": "30-45", "mae": 6.4, "ci": (5.8, 7.0), "count": 1290}])],
        "audits/test_mnist.py::test_rotation_leak[lenet]": [
            plots.angle_error_bars([{"model": m, "class": c, "mean": 12 + 3 * (m == "lenet") + c % 3,
                                     "std": 4.0} for m in ("lenet", "pair") for c in range(10)]),
            plots.heatmap(feats, "ip1 feature", "sample", "ip1 activations (class, then angle)",
                          col_groups=np.repeat(np.arange(10), 200))],
        "audits/test_mnist.py::test_spectrum": [plots.scree_plot(s, k=10, title="Scree: ip1")],
        "audits/test_blur.py::test_blur_curve": [plots.curve(
            [0, 1, 2, 4], {"lenet": ([0.98, 0.95, 0.8, 0.5], [0.97, 0.94, 0.78, 0.47], [0.99, 0.96, 0.82, 0.53])},
            "blur sigma (px)", "identification accuracy", "Accuracy vs blur")],
    }


def sample_history(doc: dict[str, Any], n_versions: int = 4) -> list[dict[str, Any]]:
    """Trend rows of ``n_versions`` earlier made-up versions of the same checks."""
    rng = np.random.default_rng(1)
    rows = []
    for v in range(n_versions):
        for c in doc["checks"]:
            if c["value"] is None:
                continue
            val = float(c["value"]) * (1 - 0.03 * (n_versions - v)) + rng.normal(scale=0.002)
            rows.append({"tag": f"v1.{v}.0", "nodeid": c["nodeid"], "metric": c["metric"], "value": val,
                         "ci_low": val - 0.01, "ci_high": val + 0.01, "recorded_at": f"2024-0{v + 1}-01"})
    return rows


if __name__ == "__main__":  # pragma: no cover - preview helper
    from . import write_report

    d = sample_document()
    print(write_report(d, sys.argv[1] if len(sys.argv) > 1 else "reports/sample.html",
                       plots=sample_plots(), history=sample_history(d)))
