"""The SVM's "stopped at max_iter" warning names the setting that raises it (``svm_max_iter``
under ``[probes]`` in the file the suite reads), and that setting reaches the probe."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from pytest_invariance.errors import InvalidParameterError, InvarianceWarning
from pytest_invariance.probes import AttributeSVMProbe
from pytest_invariance.studies.erasure import ProbeExtras
from pytest_invariance.studies.faces import fit_svm, svm_max_iter


def _data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(400, 20)).astype(np.float32)
    Y = (X[:, :3].sum(1, keepdims=True) + rng.normal(scale=2.0, size=(400, 1)) > 0).astype(np.float32)
    return X[:300], Y[:300], X[300:], Y[300:]


def test_the_max_iter_warning_names_svm_max_iter_and_its_file():
    X, Y, Xv, Yv = _data()
    with pytest.warns(InvarianceWarning) as caught:
        probe = fit_svm(AttributeSVMProbe(max_iter=1, n_permutations=0, n_bootstrap=10), X, Y, Xv, Yv,
                        names=["occluded"], where="faces/invariance.toml")
    text = [str(w.message) for w in caught if "max_iter" in str(w.message)]
    assert len(text) == 1 and not probe.converged_.all()
    assert text[0].endswith("Raise it with svm_max_iter = N (now 1) under [probes] in faces/invariance.toml.")
    assert "Raise max_iter." not in text[0]
    with warnings.catch_warnings():  # the setting raised: the same fit converges and says nothing
        warnings.simplefilter("error")
        probe = fit_svm(AttributeSVMProbe(max_iter=svm_max_iter({"svm_max_iter": 500}, "x"), n_permutations=0,
                                          n_bootstrap=10), X, Y, Xv, Yv, names=["occluded"], where="x")
    assert probe.converged_.all()


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "100"])
def test_svm_max_iter_must_be_a_positive_integer(value):
    with pytest.raises(InvalidParameterError, match=r"f.toml: \[probes\] svm_max_iter must be a positive integer"):
        svm_max_iter({"svm_max_iter": value}, "f.toml")
    assert svm_max_iter({}, "f.toml") is None


def test_a_suite_without_an_svm_refuses_svm_max_iter():
    with pytest.raises(InvalidParameterError, match=r"\[probes\] svm_max_iter: this suite fits no attribute SVM"):
        ProbeExtras.from_config({"svm_max_iter": 500, "mlp_hidden": 64})


def test_the_factors_suite_reads_svm_max_iter_from_the_data_folder(pytester, tmp_path):
    pytest.importorskip("onnxruntime")
    import pandas as pd
    from PIL import Image

    from pytest_invariance.testing import StripeEmbedding, copy_suite, export_onnx, run_and_read

    rng = np.random.default_rng(3)
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(120):
        stripe = int(rng.integers(2))
        x = rng.uniform(0, 1, (16, 16, 3))
        x[6:10] = 0.3 + 0.4 * stripe + rng.normal(scale=0.3)
        Image.fromarray((np.clip(x, 0, 1) * 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        rows.append({"image": f"img/{i:03d}.png", "stripe": stripe})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    (root / "invariance.toml").write_text("[probes]\nsvm_max_iter = 1\n")
    model = export_onnx(StripeEmbedding().eval(), tmp_path / "m.onnx", (3, 16, 16))
    suite = copy_suite(pytester, "factors")
    result, doc = run_and_read(suite, "audits/factors/test_factors.py::test_factor", f"--model={model}",
                               f"--invariance-data-dir={root}")
    result.assert_outcomes(passed=1)
    out = " ".join(result.stdout.str().split())
    assert f"Raise it with svm_max_iter = N (now 1) under [probes] in {root / 'invariance.toml'}." in out
    (c,) = [c for c in doc["checks"] if c["metric"] == "balanced_error"]
    assert c["details"]["converged"] is False
