"""Beyond the paper's linear figures: MLP probes, control-task selectivity, LEACE erasure.

The paper (§3.2) expects non-linear probes to read more than linear ones, and its second
half asks whether a representation can be made invariant. For each leaking factor of a
suite this module measures, on the suite's own splits:

* ``*_mlp``: the factor read by a one-hidden-layer MLP (:class:`~..probes.MLPProbe`),
  beside the linear figure, with the same chance level;
* ``*_control`` and ``*_selectivity`` for both probes (Hewitt & Liang, 2019): the score on
  a control task whose labels are fixed per input cluster, and real minus control;
* with ``--invariance-erase``, LEACE (Belrose et al., 2023) fitted on the training split
  and applied to test: both probes again (``*_erased``), and what the edit costs the task
  (``*_erasure_cost``, percentage points), with a table and a before/after figure.

Choices, all seeded by ``--invariance-seed``:

* the MLP is fitted on at most ``[probes] mlp_max_train`` training rows (rotated MNIST has
  350,000), holding out whole source images (or identities) for early stopping;
* the MLP is fitted ``[probes] mlp_refits`` times (3) from seeded initialisations and each
  MLP figure is their mean, its CI covering the initialisation
  (:func:`~..probes.stats.repeated_estimate`);
* control groups are k-means clusters (``control_clusters``) of the training embeddings,
  test rows assigned to the nearest centre; their CIs resample clusters;
* rotated MNIST's angle is erased within each class (the concept is ``angle x one-hot(class)``,
  ten columns), because the suite's probe is per class and every training image appears
  at every angle, so the within-class cross-covariance is then zero as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from ..probes._estimate import Estimate
from ..probes._validation import resolve_device

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from .._audit import Audit, ModelRef
    from .mnist_rotation import Protocol

ERASE_HINT = "concept erasure is opt-in: pass --invariance-erase"


@dataclass(frozen=True)
class ProbeExtras:
    """The ``[probes]`` table of a suite's invariance.toml."""

    mlp_hidden: int = 128
    mlp_max_train: int = 20_000
    # MLP fits from as many seeded initialisations; each figure is their mean with a CI that
    # covers the initialisation (one fit's CI did not: LeNet's angle_mae_mlp read 7.58, 7.67
    # and 7.73 at seeds 0-2, each with a CI half-width of 0.05)
    mlp_refits: int = 3
    control_clusters: int = 100
    n_bootstrap: int = 1000

    @classmethod
    def from_config(cls, table: Mapping[str, Any]) -> "ProbeExtras":
        if "svm_max_iter" in table:  # the attribute SVM's (studies.faces.svm_max_iter): never a silent no-op
            from ..errors import InvalidParameterError

            raise InvalidParameterError("[probes] svm_max_iter: this suite fits no attribute SVM (face_attributes "
                                        "and the factors suite's binary factors do); remove it")
        return cls(**dict(table))


Rows = Callable[["NDArray[Any]", "NDArray[Any]", "NDArray[Any]"], "NDArray[np.float64]"]


def mlp_refits(Xtr: "NDArray[Any]", Ytr: "NDArray[Any]", Xte: "NDArray[Any]", *, cfg: ProbeExtras, device: str,
               seed: int, classes: tuple[Any, Any] = (None, None), groups_train: Any = None
               ) -> tuple[list["NDArray[np.float64]"], list[dict[str, Any]]]:
    """Test predictions [n_test] (or [n_test, k]) of ``cfg.mlp_refits`` MLP probes fitted on
    ``Xtr`` / ``Ytr`` from seeds :func:`~..probes.stats.repeat_seed` ``(seed, r)``, and each
    fit's details. One after the other: two at once on the two cores held 0.6 GB more at the
    rotated-MNIST suite's peak (2.75 GB against the 2.5 GB target, docs/performance.md)."""
    from ..probes import MLPProbe
    from ..probes.stats import repeat_seed

    def fit(r: int) -> tuple["NDArray[np.float64]", dict[str, Any]]:
        mlp = MLPProbe(hidden=cfg.mlp_hidden, max_train=cfg.mlp_max_train, device=device, n_bootstrap=0,
                       random_state=repeat_seed(seed, r)).fit(Xtr, Ytr, classes=classes[0], groups=groups_train)
        return mlp.predict(Xte, classes=classes[1]), {"train_rows": mlp.n_train_,
                                                      "best_epoch": mlp.weights_.epochs.tolist()}

    fits = [fit(r) for r in range(max(1, cfg.mlp_refits))]
    return [f[0] for f in fits], [f[1] for f in fits]


def over_refits(estimates: list[Estimate], bounds: tuple[float, float] = (-np.inf, np.inf)) -> Estimate:
    """One figure from the MLP refits (:func:`mlp_refits`): their mean, the CI covering the
    initialisation (:func:`~..probes.stats.repeated_estimate`); one fit is returned as it is."""
    from ..probes.stats import repeated_estimate

    if len(estimates) == 1:
        return estimates[0]
    est = repeated_estimate(estimates, bounds=bounds)
    est.details["repeats_of"] = "MLP initialisation seed"
    return est


def factor_extras(Xtr: "NDArray[Any]", ytr: "NDArray[Any]", Xte: "NDArray[Any]", yte: "NDArray[Any]", *,
                  metric: str, linear_rows: Rows, chance: Callable[["NDArray[Any]", "NDArray[Any]"], float],
                  classes: tuple[Any, Any] = (None, None), groups_train: Any = None,
                  cfg: ProbeExtras, device: str, seed: int, progress: bool = False,
                  name: str = "") -> dict[str, Estimate]:
    """MLP, control and selectivity figures for one regressed factor (errors: lower is better).

    Parameters
    ----------
    Xtr, ytr, Xte, yte : arrays
        Embeddings [n, d] and factor values [n] of the train and test splits; ``Xtr`` and
        ``Xte`` may each be a list holding the one array, handed over: emptied here, the
        embeddings are freed once the probes are fitted, before the bootstrap.
    metric : str
        Name of the linear figure, e.g. ``"angle_mae"``; the keys returned are
        ``{metric}_mlp``, ``{metric}_control``, ``{metric}_selectivity`` and the same
        with ``_mlp_`` for the MLP.
    linear_rows : callable
        ``linear_rows(Xtr, Ytr [n, k], Xte) -> predictions [n_test, k]``: the suite's linear
        probe, fitted on the real and the control labels at once.
    chance : callable
        ``chance(ytr, yte)`` -> the MAE of the know-nothing prediction (the linear
        probe's chance), applied to the real and to the control labels.
    classes : (train, test) or (None, None)
        Class of each row when the suite's probe is per class (one-hot input to the MLP).
    groups_train : array, optional
        Source image or identity of each training row, held out together for early stopping.
    progress, name : bool, str
        A progress line named ``name`` over the steps (see :mod:`.._progress`).
    """
    from .._progress import Steps

    with Steps(4, f"{name} {metric} extras".strip(), progress) as step:
        step.next("control clusters")
        # A list of one array is emptied in _factor_extras, which then holds the only reference:
        # the embeddings are freed once the probes are fitted, before the bootstrap (rotated
        # MNIST's 350 + 140 MB under the suite's peak). A local here would keep them to the end.
        return _factor_extras(Xtr if isinstance(Xtr, list) else [Xtr], ytr,
                              Xte if isinstance(Xte, list) else [Xte], yte, metric=metric,
                              linear_rows=linear_rows, chance=chance, classes=classes,
                              groups_train=groups_train, cfg=cfg, device=device, seed=seed, step=step)


def _factor_extras(handed_tr: "list[NDArray[Any]]", ytr: "NDArray[Any]", handed_te: "list[NDArray[Any]]", yte: "NDArray[Any]", *,
                   metric: str, linear_rows: Rows, chance: Callable[["NDArray[Any]", "NDArray[Any]"], float],
                   classes: tuple[Any, Any], groups_train: Any, cfg: ProbeExtras, device: str, seed: int,
                   step: Any) -> dict[str, Estimate]:
    from ..probes import control_labels, input_clusters, row_scores_estimate, selectivity

    nb = cfg.n_bootstrap
    Xtr, Xte = handed_tr.pop(), handed_te.pop()
    gtr, gte = input_clusters(Xtr, Xte, n_clusters=cfg.control_clusters, random_state=seed)
    ctr, cte = control_labels(ytr, gtr, gte, random_state=seed)
    step.next("MLP probes")
    preds, fits = mlp_refits(Xtr, np.column_stack([ytr, ctr]), Xte, cfg=cfg, device=device, seed=seed,
                             classes=classes, groups_train=groups_train)
    step.next("linear probe")
    lin = linear_rows(Xtr, np.column_stack([ytr, ctr]), Xte)
    del Xtr, Xte  # the only references when the caller handed them over (see factor_extras)
    rows = {"": [(np.abs(lin[:, 0] - yte), np.abs(lin[:, 1] - cte))],
            "_mlp": [(np.abs(p[:, 0] - yte), np.abs(p[:, 1] - cte)) for p in preds]}
    step.next("bootstrap")
    kw = dict(n_bootstrap=nb, random_state=seed)
    about = {"_mlp": [{"probe": f"MLP, 1 hidden layer of {cfg.mlp_hidden}", **f} for f in fits],
             "": [{"probe": "linear"}]}
    ctrl_note = {"control": f"labels fixed per k-means cluster ({cfg.control_clusters}) of the embeddings, "
                            "drawn from the training labels"}
    out: dict[str, Estimate] = {}
    mae = (0.0, np.inf)
    for tag, per_fit in rows.items():
        ab = about[tag]
        if tag:
            out[f"{metric}{tag}"] = over_refits([row_scores_estimate(real, chance=chance(ytr, yte), **kw, **a)
                                                 for (real, _), a in zip(per_fit, ab)], mae)
        out[f"{metric}{tag}_control"] = over_refits(
            [row_scores_estimate(ctrl, chance=chance(ctr, cte), groups=gte, **kw, **a, **ctrl_note)
             for (_, ctrl), a in zip(per_fit, ab)], mae)
        out[f"{metric}{tag}_selectivity"] = over_refits(
            [selectivity(real, ctrl, higher_is_better=False, groups=gte, **kw, **a, **ctrl_note)
             for (real, ctrl), a in zip(per_fit, ab)])
    return out


# ----------------------------------------------------------------------------- rotated MNIST


def _per_class_linear(ytr_class: "NDArray[Any]", yte_class: "NDArray[Any]", device: str) -> Rows:
    """The suite's per-class least squares (§4.1), several target columns per fit: the
    same :func:`..probes.functional.group_moments` and minimum-norm solve as
    :class:`LinearRegressionProbe` with ``alpha=0``, so the per-class scatter matrices of
    the study's fit are reused (only the cross-products with the new targets are computed)."""
    from ..probes import functional as F

    classes, codes = np.unique(ytr_class, return_inverse=True)

    def rows(X: "NDArray[Any]", Y: "NDArray[Any]", Xt: "NDArray[Any]") -> "NDArray[np.float64]":
        Y = np.asarray(Y, np.float64).reshape(len(Y), -1)
        mo = F.group_moments(X, codes, len(classes), Y, device)
        out = np.empty((len(Xt), Y.shape[1]))
        for c, label in enumerate(classes):
            te = yte_class == label
            coef, b = F.ridge_solve(*F.ridge_eig(mo.scatter[c], 0.0), mo.cross[c], mo.means[c], mo.y_means[c])
            out[te] = np.asarray(Xt[te], np.float64) @ coef.T + b
        return out

    return rows


def _per_class_chance(ytr_class: "NDArray[Any]", yte_class: "NDArray[Any]") -> Callable[..., float]:
    def chance(y: "NDArray[Any]", yt: "NDArray[Any]") -> float:
        k = max(ytr_class.max(), yte_class.max()) + 1
        means = np.bincount(ytr_class, weights=y, minlength=k) / np.maximum(np.bincount(ytr_class, minlength=k), 1)
        return float(np.abs(means[yte_class] - yt).mean())

    return chance


def mnist_extras(audit: "Audit", ref: "ModelRef", protocol: "Protocol", cfg: ProbeExtras) -> dict[str, Any]:
    """``angle_mae_mlp`` and the control/selectivity figures of the rotated-MNIST suite.

    The probes of :func:`..studies.mnist_rotation.run_study` (per class, §4.1), on the
    same embeddings (cached) and splits; see the module notes for the choices.
    """
    from dataclasses import asdict

    from .._figures import array_digest

    d = _mnist_data(audit, ref, protocol)
    dev = resolve_device(audit.settings.device)

    def compute() -> dict[str, Any]:
        linear, chance = _per_class_linear(d["ytr"], d["yte"], dev), _per_class_chance(d["ytr"], d["yte"])
        return factor_extras([d.pop("Xtr")], d["atr"], [d.pop("Xte")], d["ate"], metric="angle_mae", linear_rows=linear,
                             chance=chance, classes=(d["ytr"], d["yte"]), groups_train=d["src"], cfg=cfg,
                             device=audit.settings.device, seed=audit.seed, progress=audit.progress,
                             name=ref.name)

    # Through the figure cache like the study itself: a warm rerun refits nothing.
    disk = {"study": "mnist_rotation.extras", "protocol": asdict(protocol), "probes": asdict(cfg),
            "inputs": {k: array_digest(v) for k, v in d.items()}}
    return audit.memo(("mnist_rotation.extras.figures", ref.name, disk["inputs"]["Xte"]),  # type: ignore[no-any-return]
                      compute, disk=disk)


def _mnist_data(audit: "Audit", ref: "ModelRef", protocol: "Protocol", dtype: str = "float16") -> dict[str, Any]:
    from .mnist_rotation import refit_seeds, rotated

    # The study's first training set (with train_per_class, its first seeded subset).
    train, test = rotated(audit, "train", protocol, refit_seeds(audit.seed, protocol)[0]), rotated(audit, "test", protocol)
    # The probes read the study's float16 training embeddings (one cache entry); LEACE asks for
    # float32 (fitted on half-precision rows, the erased linear MAE sat 2.8 deg above chance).
    return {"Xtr": audit.embed(ref, train, label=f"{ref.name} train", keep=False, dtype=dtype),
            "Xte": audit.embed(ref, test, label=f"{ref.name} test", keep=audit.cache is None),
            "ytr": train.labels["label"].to_numpy(), "yte": test.labels["label"].to_numpy(),
            "atr": train.labels["rotation"].to_numpy(float), "ate": test.labels["rotation"].to_numpy(float),
            "src": train.labels["source_index"].to_numpy()}


def mnist_erasure(audit: "Audit", ref: "ModelRef", protocol: "Protocol", cfg: ProbeExtras,
                  before: Mapping[str, Estimate]) -> dict[str, Any]:
    """LEACE of the angle (within class) from ip1: angle MAE before/after, MAV accuracy cost.

    ``before`` holds the unerased ``angle_mae``, ``angle_mae_mlp`` and ``mav_accuracy``
    (from the study and :func:`mnist_extras`), for the table and the figure.
    Returns ``angle_mae_erased`` (linear, must sit at chance), ``angle_mae_mlp_erased``
    (what is left to a non-linear probe), ``mav_accuracy_erased``,
    ``mav_accuracy_erasure_cost`` (points, paired CI) and ``plots`` (table, bars).
    """
    from .._progress import Steps
    from ..probes import LeaceErasure, MAVProbe, erasure_cost, row_scores_estimate
    from ..probes.functional import nearest_centroid

    with Steps(6, f"{ref.name} LEACE erasure", audit.progress) as step:
        step.next("training embeddings")
        d = _mnist_data(audit, ref, protocol, dtype="float32")
        seed, nb, dev = audit.seed, cfg.n_bootstrap, audit.settings.device
        classes = np.unique(d["ytr"])
        concept = d["atr"][:, None] * (d["ytr"][:, None] == classes[None, :])  # the angle within each class
        step.next("LEACE fit")
        eraser = LeaceErasure(device=dev).fit(d["Xtr"], concept)
        # LEACE is affine, so the class means of the erased features are the erased class
        # means: the MAVs need not be refitted on erased training rows.
        mav = MAVProbe(n_bootstrap=0).fit_rows(d["Xtr"], d["ytr"], max_rows=audit.settings.max_rows)
        step.next("erase")
        # The float32 training rows were read for this function alone (keep=False): erased in
        # place, so their 700 MB (rotated MNIST, d=500) are not held twice.
        Etr, Ete = eraser.transform(d["Xtr"], out=d.pop("Xtr")), eraser.transform(d["Xte"])
        step.next("linear probe")
        linear = _per_class_linear(d["ytr"], d["yte"], resolve_device(dev))
        chance = _per_class_chance(d["ytr"], d["yte"])
        c = chance(d["atr"], d["ate"])
        kw = dict(n_bootstrap=nb, random_state=seed)
        note = {"erased": f"LEACE of angle x one-hot(class), {eraser.rank_} directions, fitted on the training split"}
        out: dict[str, Any] = {"angle_mae_erased": row_scores_estimate(
            np.abs(linear(Etr, d["atr"], Ete)[:, 0] - d["ate"]), chance=c, probe="linear", **kw, **note)}
        step.next("MLP probes")
        preds, _ = mlp_refits(Etr, d["atr"], Ete, cfg=cfg, device=dev, seed=seed, classes=(d["ytr"], d["yte"]),
                              groups_train=d["src"])
        out["angle_mae_mlp_erased"] = over_refits([row_scores_estimate(np.abs(p - d["ate"]), chance=c, probe="MLP",
                                                                       **kw, **note) for p in preds], (0.0, np.inf))
        step.next("MAV and bootstrap")
        sim_after = nearest_centroid(Ete, eraser.transform(mav.centroids_))
        hits = {"before": (mav.predict(d["Xte"]) == d["yte"]).astype(float),
                "after": (mav.classes_[sim_after.argmax(1)] == d["yte"]).astype(float)}
        out["mav_accuracy_erased"] = row_scores_estimate(hits["after"], chance=0.1, **kw, **note)
        out["mav_accuracy_erasure_cost"] = erasure_cost(hits["before"], hits["after"], **kw, **note)
        rows = [{"panel": "angle MAE (°)", "name": "linear", "before": before["angle_mae"],
                 "after": out["angle_mae_erased"]},
                {"panel": "angle MAE (°)", "name": "MLP", "before": before["angle_mae_mlp"],
                 "after": out["angle_mae_mlp_erased"]},
                {"panel": "MAV accuracy", "name": "task", "before": before["mav_accuracy"],
                 "after": out["mav_accuracy_erased"]}]
    out["plots"] = erasure_plots(ref.name, rows, "rotated MNIST test")
    return out


def erasure_plots(name: str, rows: list[dict[str, Any]], unit: str) -> dict[str, dict[str, Any]]:
    """The per-suite erasure table and the before/after bars, from rows of
    ``{"panel", "name", "before": Estimate, "after": Estimate}``."""
    from ..report import plots

    def cell(e: Estimate) -> str:
        return f"{e.value:.4g} [{e.ci_low:.4g}, {e.ci_high:.4g}]"

    table = {"title": f"{name}: LEACE concept erasure (before -> after, 95% CI)", "kind": "table",
             "columns": ["figure", "probe", "before", "after", "chance"],
             "rows": [[r["panel"], r["name"], cell(r["before"]), cell(r["after"]),
                       "–" if r["after"].chance is None else f"{r['after'].chance:.4g}"] for r in rows]}
    bars = plots.before_after_bars(
        [{"panel": r["panel"], "name": r["name"], "chance": r["after"].chance,
          "before": (r["before"].value, r["before"].ci_low, r["before"].ci_high),
          "after": (r["after"].value, r["after"].ci_low, r["after"].ci_high)} for r in rows],
        f"{name}: leakage and task before/after LEACE ({unit})")
    return {"erasure_table": table, "erasure_bars": bars}


# ----------------------------------------------------------------------------- face perturbations


def _identity_ridge(groups_train: "NDArray[Any]", seed: int, robust: bool = True) -> Rows:
    """The face suite's linear probe: ridge, scaling and penalty by 5-fold CV over training identities.

    ``robust=False`` for LEACE-erased rows: the features are shifted and scaled, never clipped
    (:class:`~..probes._standardise.Standardiser`), so the probe stays linear and reads chance."""
    from ..probes._ridge import cv_penalty, ridge_predict

    def rows(X: "NDArray[Any]", Y: "NDArray[Any]", Xt: "NDArray[Any]") -> "NDArray[np.float64]":
        X, Xt = np.asarray(X, np.float64), np.asarray(Xt, np.float64)
        Y = np.asarray(Y, np.float64).reshape(len(Y), -1)
        uniq = np.random.default_rng(seed).permutation(np.unique(groups_train))
        folds = [np.isin(groups_train, part) for part in np.array_split(uniq, min(5, len(uniq)))]
        best = cv_penalty(X, Y, folds, robust=robust)  # [k]: the scaling and penalty each column's CV picked
        return ridge_predict(X, Y, Xt, robust=robust)[0][best, :, np.arange(Y.shape[1])].T  # type: ignore[no-any-return]

    return rows


def _mean_chance(y: "NDArray[Any]", yt: "NDArray[Any]") -> float:
    return float(np.abs(np.mean(y) - yt).mean())


def _enrollment_rows(X: "NDArray[Any]", ids: "NDArray[Any]", level_of: "NDArray[Any]", neutral: float,
                     far: float) -> dict[str, "NDArray[np.float64]"]:
    """Per perturbed probe row: rank-1 hit against the neutral gallery, and verification
    accept at the threshold where impostor pairs are accepted at rate ``far``."""
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    g = level_of == neutral
    sim = Z[~g] @ Z[g].T
    same = ids[~g][:, None] == ids[g][None, :]
    thr = np.quantile(sim[~same], 1 - far)
    genuine = np.where(same, sim, -np.inf).max(1)
    return {"rank1": (ids[g][sim.argmax(1)] == ids[~g]).astype(float), "tar": (genuine > thr).astype(float)}


def perturbation_extras(audit: "Audit", ref: "ModelRef", images: Any, spec: Any, neutral: float, *,
                        identity: str, train_fraction: float, absolute: bool, cfg: ProbeExtras,
                        erase: bool, far: float = 0.01) -> dict[str, Any]:
    """``{factor}_mae_mlp``, control and selectivity figures of the face perturbation suite,
    and with ``erase`` the LEACE table: factor MAE (linear, MLP) and enrollment of the test
    identities (rank-1 against the neutral gallery, TAR at ``far``) before and after.

    Same rows and identity-disjoint split as :func:`..studies.faces.perturbation_study`.
    """
    from dataclasses import asdict

    from .faces import perturbed_embeddings, perturbation_disk_key

    X = perturbed_embeddings(audit, ref, images, spec, neutral)
    ids = np.tile(images.labels[identity].to_numpy(), len(spec.levels))
    # Through the figure cache, as the study: a warm rerun refits nothing.
    disk = perturbation_disk_key("face_perturbation.extras", ref, spec, neutral, X, ids, train_fraction=train_fraction,
                                 absolute=absolute, probes=asdict(cfg), erase=erase, far=far)
    return audit.memo(("face_perturbation.extras.figures", ref.key, spec.name), lambda: _perturbation_extras(
        audit, ref, X, ids, spec, neutral, train_fraction=train_fraction, absolute=absolute, cfg=cfg, erase=erase,
        far=far), disk=disk)


def _perturbation_extras(audit: "Audit", ref: "ModelRef", X: Any, ids: Any, spec: Any, neutral: float, *,
                         train_fraction: float, absolute: bool, cfg: ProbeExtras, erase: bool,
                         far: float) -> dict[str, Any]:
    from ..probes import LeaceErasure, erasure_cost, row_scores_estimate
    from .faces import identity_split

    seed, dev, nb = audit.seed, audit.settings.device, cfg.n_bootstrap
    levels = np.asarray(spec.levels, dtype=np.float64)
    level_of = np.repeat(levels, len(ids) // len(levels))
    target = np.abs(level_of - neutral) if absolute else level_of
    tr = identity_split(ids, train_fraction, seed)
    metric = f"{spec.name}_mae"
    linear = _identity_ridge(ids[tr], seed)
    out: dict[str, Any] = factor_extras(X[tr], target[tr], X[~tr], target[~tr], metric=metric, linear_rows=linear,
                                        chance=_mean_chance, groups_train=ids[tr], cfg=cfg, device=dev, seed=seed,
                                        progress=audit.progress, name=ref.name)
    if not erase:
        return out
    eraser = LeaceErasure(device=dev).fit(X[tr], target[tr])
    E = eraser.transform(X)
    kw: dict[str, Any] = dict(n_bootstrap=nb, random_state=seed, groups=ids[~tr],
                              erased=f"LEACE of the {spec.name} level, fitted on the training identities")
    c = _mean_chance(target[tr], target[~tr])
    # absolute errors per test row: one fit (linear), or one per MLP refit
    before = {"linear": [np.abs(linear(X[tr], target[tr], X[~tr])[:, 0] - target[~tr])]}
    # the erased rows' linear probe scales them linearly (a clipped row re-creates the level)
    after = {"linear": [np.abs(_identity_ridge(ids[tr], seed, robust=False)(E[tr], target[tr], E[~tr])[:, 0]
                            - target[~tr])]}
    for data, store in ((X, before), (E, after)):
        preds, _ = mlp_refits(data[tr], target[tr], data[~tr], cfg=cfg, device=dev, seed=seed, groups_train=ids[tr])
        store["MLP"] = [np.abs(p - target[~tr]) for p in preds]
    rows = []
    for probe in ("linear", "MLP"):
        suffix = "" if probe == "linear" else "_mlp"
        b, a = (over_refits([row_scores_estimate(e, chance=c, probe=probe, **kw) for e in r[probe]], (0.0, np.inf))
                for r in (before, after))
        out[f"{metric}{suffix}_erased"] = a
        rows.append({"panel": f"{spec.name} MAE ({spec.unit})", "name": probe, "before": b, "after": a})
    te = ~tr
    task = {k: _enrollment_rows(F[te], ids[te], level_of[te], neutral, far) for k, F in (("before", X), ("after", E))}
    for key, label in (("rank1", "rank-1"), ("tar", f"TAR@FAR={far:g}")):
        probe_ids = ids[te][level_of[te] != neutral]
        b, a = (row_scores_estimate(task[k][key], chance=None, **{**kw, "groups": probe_ids})
                for k in ("before", "after"))
        out[f"{key}_{spec.name}_erased"] = a
        kw_cost = {k: v for k, v in kw.items() if k != "groups"}
        out[f"{key}_{spec.name}_erasure_cost"] = erasure_cost(task["before"][key], task["after"][key], **kw_cost)
        rows.append({"panel": "enrollment (test identities)", "name": label, "before": b, "after": a})
    out["plots"] = erasure_plots(f"{ref.name} {spec.name}", rows, spec.unit)
    return out
