"""--invariance-erase: a linear probe of LEACE-erased features reads chance (docs/probes.md).

LEACE leaves no linear information about the concept on the training rows it was fitted on,
so no linear probe fitted there beats the constant predictor. The probes' robust scaling
(probes/_standardise.py) clipped a training row of a unit active on that row alone (what a
post-ReLU layer has); LEACE's edit of that unit on the other rows, a linear function of the
other units that cancels the row, then read the concept again: on 400 rotated digits the
factors suite reported mae_erased 15.97 (chance 21.80, before erasure 15.57) and
balanced_accuracy_erased 0.469 (chance 0.25) where scikit-learn on the same erased features
reads exactly chance.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("concept_erasure")

from pytest_invariance.studies.factors import factor_figures  # noqa: E402

N, D = 600, 32
SPLIT = np.array(["train"] * 360 + ["val"] * 120 + ["test"] * 120)
TR = SPLIT == "train"


def _post_relu(seed: int):
    """Post-ReLU features [N, D] (float32, as embeddings are) holding a continuous, a categorical
    (4 levels) and a binary factor linearly, with two units active on one training row each
    and a few heavy-tailed rows."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(-45, 45, N)
    digit = rng.integers(0, 4, N)
    pos = rng.integers(0, 2, N)
    h = np.column_stack([angle / 30, np.eye(4)[digit], pos, rng.normal(size=(N, 6))])
    X = np.maximum(h @ rng.normal(size=(h.shape[1], D)) * 0.05 + 0.02 + 0.03 * rng.normal(size=(N, D)), 0)
    X[:, :2] = 0.0
    X[3, 0], X[150, 1] = 0.4, 0.7  # sparse units: active on one training row each
    X[[10, 20, 30], 5:9] *= 25  # heavy-tailed rows
    return X.astype(np.float32), {"angle": angle, "digit": digit.astype(float), "pos": pos.astype(float)}


def _erased_figures(X, values, name, kind):
    levels = {"continuous": [], "categorical": ["d0", "d1", "d2", "d3"], "binary": ["0", "1"]}[kind]
    f = SimpleNamespace(name=name, type=kind, values=values, known=np.ones(N, bool), levels=levels,
                        positive="1" if kind == "binary" else None)
    folder = SimpleNamespace(factors={name: f}, split=SPLIT, images=None, root=Path("/nonexistent"), config={},
                             clusters=None)
    settings = SimpleNamespace(device="cpu", max_rows=None, seed=0)
    audit = SimpleNamespace(embed=lambda *a, **k: X, settings=settings, seed=0)
    return factor_figures(audit, SimpleNamespace(name="m"), folder, name, erase=True)["figures"]


def _leace(X, z):
    """concept-erasure's LEACE fitted on the training rows, applied to all (float64)."""
    import torch
    from concept_erasure import LeaceFitter

    f = LeaceFitter(X.shape[1], z.shape[1], dtype=torch.float64)
    f.update(torch.as_tensor(X[TR], dtype=torch.float64), torch.as_tensor(z[TR], dtype=torch.float64))
    return f.eraser(torch.as_tensor(X, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("seed", [0, 2])  # seed 2: the SVM fitted to rounding read 0.38, CI 0.29-0.46
def test_erased_linear_figures_sit_at_chance_as_scikit_learn_reads_them(seed):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import balanced_accuracy_score, mean_absolute_error
    from sklearn.preprocessing import StandardScaler

    X, v = _post_relu(seed)
    te = SPLIT == "test"
    mae = _erased_figures(X, v["angle"], "angle", "continuous")["mae"]
    assert mae.chance == pytest.approx(np.abs(v["angle"][te] - v["angle"][TR].mean()).mean())
    assert mae.ci_low <= mae.chance <= mae.ci_high and mae.value >= mae.chance - 0.5, mae
    # the reference: concept-erasure's LEACE and scikit-learn's linear probes read chance
    Z = StandardScaler().fit(_leace(X, v["angle"][:, None])[TR]).transform(_leace(X, v["angle"][:, None]))
    ref = min(mean_absolute_error(v["angle"][te], Ridge(alpha=a).fit(Z[TR], v["angle"][TR]).predict(Z[te]))
              for a in (1e-3, 1.0, 100.0))
    assert ref == pytest.approx(mae.chance, rel=0.02), (ref, mae.chance)
    assert mae.value == pytest.approx(mae.chance, rel=1e-3), (mae.value, mae.chance)

    ba = _erased_figures(X, v["digit"], "digit", "categorical")["balanced_accuracy"]
    assert ba.value == pytest.approx(0.25, abs=1e-9) and ba.ci_low <= 0.25 <= ba.ci_high, ba
    oh = np.eye(4)[v["digit"].astype(int)]
    Zd = StandardScaler().fit(_leace(X, oh)[TR]).transform(_leace(X, oh))
    ref_ba = balanced_accuracy_score(v["digit"][te], LogisticRegression(class_weight="balanced", max_iter=2000)
                                     .fit(Zd[TR], v["digit"][TR]).predict(Zd[te]))
    assert ref_ba == pytest.approx(0.25, abs=0.05), ref_ba

    be = _erased_figures(X, v["pos"], "pos", "binary")["balanced_error"]
    # the balanced SVM's optimum on erased rows is w = 0: a constant prediction
    assert be.value == pytest.approx(0.5) and be.details["converged"], be


@pytest.mark.parametrize("seed", [0, 2])
def test_the_same_factors_are_read_before_erasure(seed):
    # the planted data is not at chance to begin with: the erased figures above measure the erasure
    from pytest_invariance.probes import AttributeSVMProbe, MultinomialProbe
    from pytest_invariance.studies.factors import _continuous

    X, v = _post_relu(seed)
    tr, va, te = (np.flatnonzero(SPLIT == s) for s in ("train", "val", "test"))
    mae = _continuous(X, v["angle"], tr, va, te, seed=0)["mae"]
    assert mae.ci_high < 0.5 * mae.chance, mae
    ba = MultinomialProbe(n_permutations=0, n_bootstrap=50).fit(X[tr], v["digit"][tr], X[va], v["digit"][va])
    assert ba.evaluate(X[te], v["digit"][te])["balanced_accuracy"].ci_low > 0.5
    svm = AttributeSVMProbe(n_permutations=0, n_bootstrap=50).fit(X[tr], v["pos"][tr, None], X[va], v["pos"][va, None])
    assert svm.evaluate(X[te], v["pos"][te, None])["attr_0"]["balanced_error"].ci_high < 0.3


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_the_rounding_floor_of_the_svm_does_not_hide_a_weak_signal(dtype):
    # a class-mean difference of 0.05 SD in one of 16 features, stored in half or single
    # precision at an offset of 10 SDs: 2.5 standard errors over 10,000 rows (64 times the floor in half
    # precision), so the SVM is fitted;
    # the same rows with it erased by LEACE (float32, as embeddings are) are the constant
    from pytest_invariance.probes import LeaceErasure
    from pytest_invariance.probes._attributes import without_linear_signal
    from pytest_invariance.probes._standardise import Standardiser

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 10_000)
    X = rng.normal(size=(10_000, 16)) + 10.0
    X[:, 3] += 0.05 * y
    Y = np.where(y > 0, 1.0, -1.0)[:, None]
    for rows, robust, flat in ((X.astype(dtype), True, False),
                               (LeaceErasure().fit(X.astype(np.float32), y).transform(X.astype(np.float32)), False, True)):
        st = Standardiser.fit(rows, robust=robust)
        assert without_linear_signal(st.transform(rows, np.float32, fitted=True), Y, st, rows.dtype)[0] == flat


def test_the_multinomial_of_erased_levels_is_the_constant_at_its_optimum():
    # balanced softmax regression: at w = 0 the gradient of level k is n/K (mean of the level
    # means - level k's mean), zero after LEACE of the one-hot levels; the fit is set there, not
    # left to where lbfgs's tolerance stops on rounding
    from pytest_invariance.probes import LeaceErasure, MultinomialProbe

    X, v = _post_relu(0)
    tr, va = np.flatnonzero(TR), np.flatnonzero(SPLIT == "val")
    E = LeaceErasure(kind="categorical").fit(X[tr], v["digit"][tr]).transform(X)
    erased = MultinomialProbe(n_permutations=0, n_bootstrap=20, robust=False).fit(E[tr], v["digit"][tr], E[va], v["digit"][va])
    assert not erased.model_.coef_.any() and not erased.model_.intercept_.any()
    raw = MultinomialProbe(n_permutations=0, n_bootstrap=20).fit(X[tr], v["digit"][tr], X[va], v["digit"][va])
    assert np.abs(raw.model_.coef_).max() > 0.1
