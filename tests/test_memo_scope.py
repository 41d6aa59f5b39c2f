"""In-process memo keys hold everything a study depends on (pytest_invariance._scope).

Two copies of a suite with different ``[protocol]`` in one pytest session once got the first
copy's figures: the memo keys named the study, model and layer, not the suite's settings.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_invariance._audit import Audit
from pytest_invariance.checks import Suite
from pytest_invariance.settings import Settings

REPO = Path(__file__).resolve().parents[1]
MNIST_SUITE = REPO / "audits" / "mnist_rotation"


def _suite(root: Path, text: str) -> Suite:
    root.mkdir(parents=True, exist_ok=True)
    (root / "invariance.toml").write_text(text)
    return Suite.find(root)


def test_a_memo_key_without_scope_is_refused(tmp_path):
    audit = Audit(Settings(rootdir=str(tmp_path)))
    with pytest.raises(TypeError, match="ref.key or suite.key"):
        audit.memo(("study", "model", "layer"), lambda: 1)
    assert audit.memo(("mnist", "test"), lambda: 2, shared=True) == 2
    suite = _suite(tmp_path / "s", "[protocol]\ntrain_per_class = 10\n")
    assert audit.memo(("study", suite.key), lambda: 3) == 3


def test_suite_key_covers_its_config_and_folder(tmp_path):
    a = _suite(tmp_path / "a", "[protocol]\ntrain_per_class = 100\n")
    b = _suite(tmp_path / "b", "[protocol]\ntrain_per_class = 200\n")
    a2 = _suite(tmp_path / "a2", "[protocol]\ntrain_per_class = 100\n")
    a_again = Suite.find(tmp_path / "a")
    assert a.key == a_again.key
    assert a.key != b.key  # another [protocol]
    assert a.key != a2.key  # the same text in another folder (its relative paths point elsewhere)
    p = _suite(tmp_path / "p", "[probes]\nn_bootstrap = 100\n")
    p2 = _suite(tmp_path / "p", "[probes]\nn_bootstrap = 200\n")
    assert p.key != p2.key


@pytest.mark.parametrize("cache", [True, False])
def test_disk_memo_keys_in_process_by_the_disk_content(tmp_path, cache):
    # Same memo key, other disk content (another protocol): computed again, also in-process.
    audit = Audit(Settings(rootdir=str(tmp_path), cache_dir=str(tmp_path / "c"), no_cache=not cache))
    one = audit.memo(("study", "m"), lambda: {"v": 1}, disk={"study": "s", "protocol": {"n": 1}})
    two = audit.memo(("study", "m"), lambda: {"v": 2}, disk={"study": "s", "protocol": {"n": 2}})
    again = audit.memo(("study", "m"), lambda: {"v": 3}, disk={"study": "s", "protocol": {"n": 1}})
    assert (one["v"], two["v"], again["v"]) == (1, 2, 1)


def test_model_key_carries_the_suite(tmp_path):
    pytest.importorskip("onnxruntime")
    if not (MNIST_SUITE / "models" / "lenet.onnx").is_file():
        pytest.skip("the bundled LeNet is not built")
    audit = Audit(Settings(rootdir=str(REPO), device="cpu"))
    a = Suite.find(_mnist_copy(tmp_path / "a", {"train_per_class": "100"}))
    b = Suite.find(_mnist_copy(tmp_path / "b", {"train_per_class": "200"}))
    ra, rb = audit.model(a, "lenet"), audit.model(b, "lenet")
    assert ra.key != rb.key and ra.key == audit.model(a, "lenet").key
    assert ra.key != ra.at("conv2").key


def _mnist_copy(dst: Path, protocol: dict[str, str]) -> Path:
    shutil.copytree(MNIST_SUITE, dst, ignore=shutil.ignore_patterns("__pycache__", "models"))
    cfg = dst / "invariance.toml"
    text = cfg.read_text().replace('path = "models/', f'path = "{MNIST_SUITE}/models/')
    text = re.sub(r"^n_bootstrap = \d+", "n_bootstrap = 20", text, flags=re.M)
    for key, value in protocol.items():
        text, n = re.subn(rf"^#? ?{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    cfg.write_text(text)
    return dst


def _figures(tmp_path: Path, name: str, *suites: Path) -> dict[str, dict[str, tuple[float, float, float]]]:
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:warnings",
           "--invariance-progress", "off", "--model", str(MNIST_SUITE / "models" / "lenet.onnx"),
           "-k", "test_angle_mae or test_mav_accuracy", "--invariance-cache-dir", str(tmp_path / f"cache-{name}"),
           "--invariance-json", str(out), "--invariance-report", str(tmp_path / f"{name}.html"),
           "--invariance-history", str(tmp_path / f"{name}.sqlite"), *map(str, suites)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    figs: dict[str, dict[str, tuple[float, float, float]]] = {}
    for c in json.loads(out.read_text())["checks"]:
        if c.get("metric"):
            suite = "suite_b" if "_b.py" in c["nodeid"] else "suite_a"
            figs.setdefault(suite, {})[c["metric"]] = (c["value"], c["ci_low"], c["ci_high"])
    return figs


def test_two_mnist_suites_with_other_protocols_in_one_session_get_their_own_figures(tmp_path):
    """tryout 10: suite B (train_per_class 200, 3 angles) run after suite A (100, 7 angles) in
    one session reported A's figures; each must equal its own run alone."""
    pytest.importorskip("onnxruntime")
    if not (MNIST_SUITE / "models" / "lenet.onnx").is_file():
        pytest.skip("the bundled LeNet is not built")
    try:
        from pytest_invariance.data.mnist import load_mnist

        load_mnist("test")
    except Exception as exc:  # noqa: BLE001 - any missing source means: skip
        pytest.skip(f"MNIST not available: {exc}")
    a = _mnist_copy(tmp_path / "suite_a", {"train_per_class": "100", "n_refits": "1"})  # 7 angles
    b = _mnist_copy(tmp_path / "suite_b", {"train_per_class": "200", "n_refits": "1", "angles": "[-45, 0, 45]"})
    (b / "test_mnist_rotation.py").rename(b / "test_mnist_rotation_b.py")
    alone = _figures(tmp_path, "b", b)["suite_b"]
    both = _figures(tmp_path, "ab", a, b)
    assert set(alone) >= {"angle_mae", "mav_accuracy", "mav_accuracy_drop"}
    assert both["suite_b"] == alone
    assert both["suite_a"]["angle_mae"] != alone["angle_mae"]


def _factors_copy(dst: Path, model: Path, prewhiten: bool) -> Path:
    src = REPO / "audits" / "factors"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    cfg = dst / "invariance.toml"
    text = cfg.read_text()
    text = re.sub(r"^prewhiten = \w+", f"prewhiten = {'true' if prewhiten else 'false'}", text, flags=re.M)
    text = text[:text.index("[models.facenet]")] + f'[models.grid]\npath = "{model}"\nlayer = "output"\npreprocess = {{ size = [16, 16] }}\n'
    cfg.write_text(text)
    return dst


def _run_json(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-p", "no:warnings",
           "--invariance-progress", "off", "--invariance-cache-dir", str(tmp_path / f"cache-{name}"),
           "--invariance-json", str(out), "--invariance-report", str(tmp_path / f"{name}.html"),
           "--invariance-history", str(tmp_path / f"{name}.sqlite"), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_factors_suites_with_other_preprocessing_in_one_session_get_their_own_figures(tmp_path):
    """The factors suite's key named model, layer, folder and factor, not the suite's
    [preprocess]: a second copy that prewhitens no image read the first copy's figures."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from pytest_invariance.testing import export_onnx, grid_cnn, write_noise_folder

    model = export_onnx(grid_cnn(4, 3, 2), tmp_path / "grid.onnx", input_shape=(3, 16, 16))
    data = write_noise_folder(tmp_path / "data", n=120, size=16)
    a = _factors_copy(tmp_path / "fa", model, prewhiten=True)
    b = _factors_copy(tmp_path / "fb", model, prewhiten=False)
    (b / "test_factors.py").rename(b / "test_factors_b.py")

    def figures(report: dict, b_only: bool) -> dict:
        return {(c["nodeid"].split("::")[-1], c["metric"]): (c["value"], c["ci_low"], c["ci_high"])
                for c in report["checks"] if c.get("metric") and ("_b.py" in c["nodeid"]) == b_only}

    common = ("--invariance-data-dir", str(data), "-k", "test_factor")
    alone = figures(_run_json(tmp_path, "b", *common, str(b)), True)
    both = _run_json(tmp_path, "ab", *common, str(a), str(b))
    assert alone and figures(both, True) == alone
    assert figures(both, False) != alone
