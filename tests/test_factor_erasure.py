"""--invariance-erase in the factors suite: each factor's headline figure again on embeddings with
that factor erased by LEACE (fitted on the training split), checked against concept-erasure's
LeaceEraser called directly; and a suite-specific option a selected suite does not apply is
named once, never dropped silently."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx  # noqa: F401  - imported once here (pytester restores sys.modules between tests)
import pandas as pd
import pytest
import torch
import torch.onnx  # noqa: F401
from PIL import Image

from pytest_invariance.studies.factors import erase_factor
from pytest_invariance.testing import StripeEmbedding, copy_suite, export_onnx, run_and_read


@pytest.mark.parametrize("kind", ["binary", "categorical", "continuous"])
def test_erase_factor_is_concept_erasures_leace(kind):
    from concept_erasure import LeaceEraser

    rng = np.random.default_rng(1)
    n, d = 400, 12
    v = {"binary": rng.integers(0, 2, n).astype(float), "categorical": rng.integers(0, 3, n).astype(float),
         "continuous": rng.normal(size=n)}[kind]
    X = rng.normal(size=(n, d)) + np.outer(v, rng.normal(size=d))
    train = np.arange(n)[: n * 3 // 5]
    got, rank = erase_factor(X, SimpleNamespace(type=kind, values=v), train)
    z = np.eye(3)[v[train].astype(int)] if kind == "categorical" else v[train, None]
    ref = LeaceEraser.fit(torch.as_tensor(X[train]), torch.as_tensor(z), svd_tol=1e-9)
    want = ref(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    assert rank == (2 if kind == "categorical" else 1)
    # no linear read-out of the concept is left on the training rows: zero cross-covariance
    zc = z - z.mean(0)
    assert np.abs((got[train] - got[train].mean(0)).T @ zc).max() < 1e-8



def test_the_factors_suite_erases_with_the_option_and_names_suites_that_ignore_it(pytester, tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "d"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(240):
        stripe = int(rng.integers(2))
        x = rng.uniform(0, 1, (16, 16, 3))
        x[6:10] = 0.2 + 0.7 * stripe
        Image.fromarray((x * 255).astype(np.uint8)).save(root / "img" / f"{i:03d}.png")
        rows.append({"image": f"img/{i:03d}.png", "stripe": stripe})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    model = export_onnx(StripeEmbedding().eval(), tmp_path / "m.onnx", (3, 16, 16))
    from pytest_invariance.testing import write_toy_suite

    suite = copy_suite(pytester, "factors")
    write_toy_suite(suite.path, "../../t.onnx", "output")  # a suite with no erasure step
    export_onnx(StripeEmbedding().eval(), suite.path / "t.onnx", (1, 28, 28))
    result, doc = run_and_read(suite, "audits/factors/test_factors.py::test_factor", f"--model={model}",
                               f"--invariance-data-dir={root}", "--invariance-erase")
    by = {c["metric"]: c for c in doc["checks"]}
    assert by["balanced_error"]["value"] < 0.1  # the stripe is read
    erased = by["balanced_error_erased"]
    assert erased["ci_low"] <= 0.5 <= erased["ci_high"] and "LEACE of stripe" in erased["details"]["erased"]
    assert "not applied" not in result.stdout.str()
    result, doc = run_and_read(suite, "audits/factors/test_factors.py::test_factor", "audits/toy", f"--model={model}",
                               f"--invariance-data-dir={root}", "--invariance-erase")
    result.stdout.fnmatch_lines(["invariance: --invariance-erase was not applied by suite(s) toy (*"])
    assert doc["run"]["options_not_applied"] == {"--invariance-erase": ["toy"]}
