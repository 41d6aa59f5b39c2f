"""The ``factors`` study: a user's own labelled folder, each factor probed by its type.

Composes the existing probes; nothing here imports pytest.

======================  ==========================================  =====================================
factor type             probe                                       figures (chance)
======================  ==========================================  =====================================
binary                  :class:`AttributeSVMProbe` (C on val)       fn_rate, fp_rate, balanced_error (0.5)
categorical             :class:`MultinomialProbe` (C on val)        balanced_accuracy (1/K)
continuous              :class:`LinearRegressionProbe`, ridge        mae (training mean), r2 (0)
                        penalty on val
identity column         :func:`enrollment_figures` per level        rank1 (1/G), tar at FAR 1e-3 (FAR)
======================  ==========================================  =====================================

Probes fit on the ``train`` split (continuous: the ridge penalty and binary/categorical:
C chosen on ``val``) and are scored on ``test``. Enrollment uses every image: the
gallery holds one image per identity at the factor's reference level (``[neutral]`` in
the folder's invariance.toml, else the most common level), the probes are that
identity's other images at each level.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from ..checks import Suite, Threshold
from ..errors import DataError
from ..probes._estimate import Estimate
from ..probes.stats import bootstrap_ci

if TYPE_CHECKING:
    from .._audit import Audit, ModelRef
    from ..data.factor_folder import Factor, FactorFolder
    from ..settings import Settings

PROBES = {"binary": "balanced linear SVM", "categorical": "balanced multinomial logistic regression",
          "continuous": "ridge regression"}
METRICS = {"binary": ("fn_rate", "fp_rate", "balanced_error"), "categorical": ("balanced_accuracy",),
           "continuous": ("mae", "r2")}
# fn_rate and fp_rate trade against each other at the probe's threshold, so only their
# mean (the balanced error) is gated by --invariance-gate; a threshold can still gate either.
GATED_BY_DEFAULT = {"binary": ("balanced_error",), "categorical": ("balanced_accuracy",), "continuous": ("mae", "r2")}
HEADLINE = {"binary": "balanced_error", "categorical": "balanced_accuracy", "continuous": "mae"}
FAR = 1e-3
GATE_OPTION = "--invariance-gate"


# ----------------------------------------------------------------------------- gating


def default_limit(metric: str, chance: float | None) -> dict[str, float]:
    """The gate a gated factor gets unless a threshold is given: "close to chance".

    binary balanced error (or a rate) at least 0.40; balanced accuracy at most
    chance + 0.10; MAE at least 0.75 x chance (the embedding may not cut a know-nothing
    guess's error by more than a quarter); R^2 at most 0.10; enrollment rank-1 and TAR
    at least 0.5 (at least half the probes still recognised).
    """
    c = 0.0 if chance is None else float(chance)
    return {"fn_rate": {"min": 0.40}, "fp_rate": {"min": 0.40}, "balanced_error": {"min": 0.40},
            "balanced_accuracy": {"max": c + 0.10}, "mae": {"min": 0.75 * c}, "r2": {"max": 0.10},
            "rank1": {"min": 0.5}, "tar": {"min": 0.5}}[metric]


def gated_metrics(folder: "FactorFolder", settings: "Settings", other_qualifiers: "Iterable[str]" = (),
                  layers: "Iterable[str]" = (), model_layers: "Iterable[str]" = ()) -> dict[str, tuple[str, ...]]:
    """Gated factors and, per factor, the metrics that get a gate at every layer.

    ``--invariance-gate COL`` (``all`` = every factor) and the folder's ``[gate] columns``
    gate the column's :data:`GATED_BY_DEFAULT` figures (and, with identities, rank-1 and
    TAR); a threshold (``[thresholds]`` or ``--invariance-threshold [LAYER.][COL.]metric=V``,
    grammar in :func:`~pytest_invariance.checks._suite.split_key`) gates that one figure;
    one qualified by a selected layer (``layers``) gates it at that layer only
    (:func:`gates_at`). Raises one DataError naming unknown columns, keys that read two
    ways and thresholds whose metric the column's type does not have. A command-line
    ``COL.metric`` threshold whose ``COL`` is neither a column, a selected layer nor one of
    ``other_qualifiers`` (those of the other selected suites, e.g. CelebA attributes) is a
    misspelled column: refused, not silently left ungated. A key of the folder's toml that
    names a layer of the model (``model_layers``) this run does not select is left out (it
    gates that layer when a run selects it); on the command line it is refused, naming --layer.
    """
    cli = [c for group in settings.gate for c in group]
    toml = [str(c) for c in folder.config.get("gate", {}).get("columns", [])]
    wanted = list(folder.factors) if any(c.lower() == "all" for c in cli + toml) else cli + toml
    problems = [f"{c!r} is not a factor" for c in wanted if c not in folder.factors]
    others = set(other_qualifiers) - set(folder.factors)
    out: dict[str, set[str]] = {c: set(_all_metrics(folder, c, gate=True)) for c in wanted if c in folder.factors}
    keys = [(k, "threshold") for k in folder.config.get("thresholds", {})]
    keys += [(k, "--invariance-threshold") for k, _ in settings.threshold]
    selected = set(layers)
    unselected = sorted((la for la in model_layers if la not in selected), key=len, reverse=True)
    for k, source in keys:
        head = k.rpartition(".")[0]
        other = next((la for la in unselected if head == la or head.startswith(la + ".")), None)
        if other is not None and head not in folder.factors and \
                not any(head == la or head.startswith(la + ".") for la in selected):
            if source == "threshold":
                continue  # a layer another run selects
            problems.append(f"--invariance-threshold {k!r} names layer {other!r}, which this run does not "
                            "read; select it with --layer")
            continue
        read = _read_key(folder, k, source, list(layers), others if source != "threshold" else set())
        if isinstance(read, str):
            problems.append(read)
            continue
        layer, col, metric = read
        if col in others:
            continue  # another selected suite's qualifier (a CelebA attribute)
        if col is None:  # METRIC=V or LAYER.METRIC=V gates that figure of every factor that has it
            having = [c for c in folder.factors if metric in _all_metrics(folder, c)]
            if not having and not others:
                problems.append(f"threshold {k!r}: no factor has a {metric!r} figure")
            cols = having
        elif metric not in _all_metrics(folder, col):
            problems.append(f"threshold {k!r}: a {folder.factors[col].type} factor has no {metric!r} "
                            f"(use {', '.join(_all_metrics(folder, col))})")
            cols = [col]
        else:
            cols = [col]
        if layer is None:
            for c in cols:
                out.setdefault(c, set()).add(metric)
    if problems:
        raise DataError(f"gating for {folder.root}: {'; '.join(problems)} (factors: {', '.join(folder.factors)}); "
                        f"fix {GATE_OPTION}, --invariance-threshold or the folder's invariance.toml")
    return {c: tuple(sorted(out[c])) for c in folder.factors if c in out}


def _read_key(folder: "FactorFolder", key: str, source: str, layers: list[str],
              others: set[str]) -> "tuple[str | None, str | None, str] | str":
    """``(layer, column, metric)`` of a threshold key, or the problem with it."""
    from ..checks._suite import split_key
    from ..errors import InvalidParameterError

    try:
        return split_key(key, layers, set(folder.factors) | others, option=source)
    except InvalidParameterError as exc:
        head = key.rpartition(".")[0]
        if "more than one way" in str(exc):
            return str(exc)
        if source == "threshold":
            return f"threshold {key!r} names column {head!r}, which is not a factor"
        layer_note = f" nor a selected layer ({', '.join(layers)})" if layers else ""
        return f"--invariance-threshold {key!r} names column {head!r}, which is not a factor{layer_note}"


def gates_at(gated: Mapping[str, Iterable[str]], folder: "FactorFolder", settings: "Settings",
             layer: str) -> dict[str, tuple[str, ...]]:
    """``gated`` plus the figures gated at ``layer`` only (``LAYER.metric``, ``LAYER.COL.metric``
    thresholds; their grammar was checked by :func:`gated_metrics`)."""
    out = {c: set(m) for c, m in gated.items()}
    for k in [*folder.config.get("thresholds", {}), *dict(settings.threshold)]:
        head, _, metric = k.rpartition(".")
        if head == layer:
            cols = [c for c in folder.factors if metric in _all_metrics(folder, c)]
        elif head.startswith(layer + ".") and head[len(layer) + 1:] in folder.factors:
            cols = [head[len(layer) + 1:]]
        else:
            continue
        for c in cols:
            out.setdefault(c, set()).add(metric)
    return {c: tuple(sorted(out[c])) for c in folder.factors if c in out}


def _all_metrics(folder: "FactorFolder", col: str, gate: bool = False) -> tuple[str, ...]:
    t = folder.factors[col].type
    own = GATED_BY_DEFAULT[t] if gate else METRICS[t]
    return own + (("rank1", "tar") if t != "continuous" and folder.identity is not None else ())


def folder_thresholds(folder: "FactorFolder") -> dict[str, Threshold]:
    """``[thresholds]`` of the folder's invariance.toml: ``"COL.metric" = V`` or ``{ min = V }``.

    A bare number takes the metric's gate direction (:func:`default_limit`).
    """
    from ..checks._suite import threshold_from_table

    out = {}
    where = str(folder.root / "invariance.toml")
    for key, value in folder.config.get("thresholds", {}).items():
        if isinstance(value, (int, float)):
            metric = key.split(".")[-1]
            if metric not in METRIC_NAMES:
                raise DataError(f"{where}: threshold {key!r}: unknown metric; use one of {sorted(METRIC_NAMES)}")
            value = {next(iter(default_limit(metric, 0.0))): value}
        out[key] = threshold_from_table(key, value, where)
    return out


METRIC_NAMES = {m for ms in METRICS.values() for m in ms} | {"rank1", "tar"}


def folder_suite(base: "Suite", folder: "FactorFolder") -> "Suite":
    """The factors suite's config with the data folder's [preprocess] and [thresholds] laid over it,
    and ``[suite] input`` = the folder's RGB images at the size the loader gives them (so the
    model's layers can be checked before the tests, see ``plugin.note_suite``)."""
    config = dict(folder_preprocess(base, folder.config, folder.images.size).config)
    if folder.images.size:
        config["suite"] = {**config.get("suite", {}), "input": [3, *folder.images.size]}
    return Suite(base.name, base.root, config, {**base.thresholds, **folder_thresholds(folder)},
                 thresholds_file=folder.root / "invariance.toml")


def folder_preprocess(base: "Suite", folder_config: Mapping[str, Any],
                      size: "tuple[int, int] | None" = None) -> "Suite":
    """The suite with the data folder's ``[preprocess]`` (its ``invariance.toml``) laid over
    its own: what the start-up check of --invariance-embeddings needs, without loading the folder.

    A --model is fed its own H, W; one with a dynamic size is fed the folder's decode size
    (``size``, else its ``[data] size``, else the loader's default), which its
    preprocessing then records (it was fed 160x160 and said "none")."""
    from ..data.factor_folder import DEFAULT_SIZE

    config = dict(base.config)
    pre = dict(config.get("preprocess", {}))
    if "preprocess" in folder_config:
        pre = {**folder_config["preprocess"]}
        pre["adapt_size"] = pre.get("adapt_size", "size" not in pre)
    if pre.get("adapt_size") is True:
        pre["adapt_size"] = list(size or folder_config.get("data", {}).get("size", DEFAULT_SIZE))
    config["preprocess"] = pre
    return Suite(base.name, base.root, config, base.thresholds)


def gate_summary(checks: Iterable[Mapping[str, Any]]) -> str | None:
    """One terminal line when the factors suite ran with nothing gated."""
    rows = [c for c in checks if c.get("details", {}).get("factors_gated") is not None]
    if not rows or any(c["details"]["factors_gated"] for c in rows):
        return None
    measured = len({c["details"].get("factor") for c in rows})
    # the folder's count: a run stopped early or filtered (-k) measured fewer
    n = max([measured] + [int(c["details"].get("n_factors") or 0) for c in rows])
    what = f"{n} factor(s) measured only" if measured == n else f"{measured} of the folder's {n} factor(s) measured, none gated"
    return (f"factors: nothing gated ({what}); pass {GATE_OPTION} COL,... or list them "
            "under [gate] columns in the data folder's invariance.toml to gate")


# ----------------------------------------------------------------------------- probes


def _rows(folder: "FactorFolder", f: "Factor", split: str) -> np.ndarray:
    return np.flatnonzero(f.known & (folder.split == split))


def check_measurable(folder: "FactorFolder", name: str, settings: "Settings | None" = None) -> None:
    """Refuse a factor whose split leaves a level too few images for its probe, from the
    labels alone: the same for every layer, so a sweep reports it once (before any embedding).

    A factor with levels, binary or categorical, inferred or given by ``--invariance-factor-type``,
    needs :class:`AttributeSVMProbe`'s ``min_class_count`` images of each level in each of
    train, val and test (C is chosen on val, the figure is read on test: 2 test images of a
    level gave a balanced accuracy whose CI spanned 0.26-0.84), counted for a binary factor in
    train among the rows its probe keeps under ``settings.max_rows`` (``--invariance-max-rows``,
    seeded by ``settings.seed``); the loader holds continuous factors to what their probe
    needs. Raises one DataError naming the level, its counts per split and the fixes.
    """
    from ..probes import AttributeSVMProbe

    f = folder.factors[name]
    if f.type not in ("binary", "categorical"):
        return
    probe = AttributeSVMProbe(random_state=settings.seed if settings else 0,
                              max_train_rows=settings.max_rows if settings else None)
    need = probe.min_class_count
    rows = {s: _rows(folder, f, s) for s in ("train", "val", "test")}
    if f.type == "binary":  # the multinomial probe fits on every training row
        rows["train"] = rows["train"][probe.train_subsample(len(rows["train"]))]
    for code, level in enumerate(f.levels):
        per = {s: int((f.values[r] == code).sum()) for s, r in rows.items()}
        short = [s for s, k in per.items() if k < need]
        if short:
            capped = short[0] == "train" and len(rows["train"]) < len(_rows(folder, f, "train"))
            cap = f" of the {len(rows['train'])} --invariance-max-rows keeps" if capped else ""
            raise _unmeasurable(name, f"level {level!r} has {per[short[0]]} image(s) in the {short[0]} split"
                                      f"{cap} (train/val/test {per['train']}/{per['val']}/{per['test']}; the "
                                      f"probe needs >= {need} of each level in each split)",
                                "raise or drop --invariance-max-rows, " if capped else "")


def _unmeasurable(name: str, why: str, first_fix: str = "") -> DataError:
    """The one-line refusal of a factor its probe cannot measure; its fixes are all the
    user's (no generic --invariance-skip-bad hint: no image is bad)."""
    err = DataError(f"factor {name!r} cannot be probed: {why}; {first_fix}add images of that level, set the "
                    "split by a 'split' column in labels.csv or [data] fractions in invariance.toml, or leave "
                    f"the factor out with --invariance-factor-type {name}=ignore")
    err.names_fix = True  # type: ignore[attr-defined]
    return err


def erase_factor(X: np.ndarray, f: "Factor", train: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, int]:
    """The embeddings [n, d] with factor ``f`` erased by LEACE (Belrose et al., 2023) fitted on the
    ``train`` rows, and the number of directions removed. The concept is the value (binary 0/1,
    continuous) or the one-hot levels (categorical: what any linear classifier of them reads)."""
    from ..probes import LeaceErasure

    kind = "categorical" if f.type == "categorical" else "continuous"
    eraser = LeaceErasure(kind=kind, device=device).fit(X[train], f.values[train])
    return eraser.transform(X), eraser.rank_


def factor_figures(audit: "Audit", ref: "ModelRef", folder: "FactorFolder", name: str,
                   erase: bool = False) -> dict[str, Any]:
    """Probe one factor: ``{"type", "probe", "figures": {metric: Estimate}, "headline", "n"}``.
    ``erase``: the same probes on the embeddings with that factor erased (:func:`erase_factor`,
    ``--invariance-erase``); a linear probe should then be at chance, so the probes scale the
    erased features without the robust band (``robust=False``): clipping a training row is
    not linear and re-created the erased factor (``mae_erased`` 15.97 where chance is 21.80).

    Raises DataError (:func:`check_measurable`) when the split leaves a level too few images.
    """
    check_measurable(folder, name, audit.settings)
    X = audit.embed(ref, folder.images, label=f"{ref.name} {folder.root.name}")
    f = folder.factors[name]
    tr, va, te = (_rows(folder, f, s) for s in ("train", "val", "test"))
    if erase:
        X, rank = erase_factor(X, f, tr, audit.settings.device)
    y = f.values
    # photos of one person (or copies of one file) are not independent: the CIs resample them whole
    ids = None if folder.clusters is None else np.asarray(folder.clusters)[te]
    if f.type == "binary":
        from ..probes import AttributeSVMProbe

        from .faces import fit_svm, svm_max_iter

        where = str(folder.root / "invariance.toml")  # the data folder's own: the user's file
        max_iter = svm_max_iter(folder.config.get("probes", {}), where)
        try:
            probe = fit_svm(AttributeSVMProbe(device=audit.settings.device, random_state=audit.seed,
                                              max_train_rows=audit.settings.max_rows, robust=not erase,
                                              **({"max_iter": max_iter} if max_iter else {})),
                            X[tr], y[tr, None], X[va], y[va, None], names=[name], where=where)
        except DataError as exc:  # check_measurable counted what the probe counts; kept as the last word
            raise _unmeasurable(name, str(exc).split("; add data")[0]) from None
        figs = {m: _positive_level(e, f.positive) for m, e in probe.evaluate(X[te], y[te, None], groups=ids)[name].items()}
    elif f.type == "categorical":
        from ..probes import MultinomialProbe

        # chance is exactly 1/K and the CI is the bootstrap's: no permutation refits (each is a full lbfgs fit)
        probe = MultinomialProbe(C_grid=(0.001, 0.01, 0.1, 1.0), n_permutations=0, max_iter=200,
                                 random_state=audit.seed, robust=not erase).fit(X[tr], y[tr], X[va], y[va])
        figs = probe.evaluate(X[te], y[te], groups=ids)
        figs["balanced_accuracy"].details["levels_named"] = list(f.levels)
    else:
        figs = _continuous(X, y, tr, va, te, audit.seed, audit.settings.max_rows, groups=ids, robust=not erase)
    if erase:
        for e in figs.values():
            e.details["erased"] = f"LEACE of {name}, {rank} direction(s), fitted on the training split"
    return {"type": f.type, "probe": PROBES[f.type], "figures": {m: figs[m] for m in METRICS[f.type]},
            "headline": HEADLINE[f.type], "n": {"train": len(tr), "val": len(va), "test": len(te)}}


def _positive_level(e: Estimate, positive: str | None) -> Estimate:
    """The figure with the level its rates call positive (the probe set its chance: 1 - q, q, 0.5)."""
    from dataclasses import replace

    return replace(e, details={**e.details, "positive_level": positive})


def _continuous(X: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, te: np.ndarray,
                seed: int, max_rows: int | None = None, groups: np.ndarray | None = None,
                robust: bool = True) -> dict[str, Estimate]:
    from ..probes import LinearRegressionProbe
    from ..probes import functional as F
    from ..probes._ridge import ALPHA_UNIT, PENALTIES, ridge_predict, ridge_predict_streamed, scalers
    from ..probes._standardise import Standardiser

    st = Standardiser.fit(X[tr], robust=robust)  # robust=False: erased rows, scaled linearly
    maps = scalers(st)
    streamed = bool(max_rows and len(tr) > max_rows)
    if streamed:  # --invariance-max-rows: the same predictions from merged moments
        pred, units = ridge_predict_streamed(lambda: ((X[i], y[i]) for i in F.row_chunks(tr, max_rows)), X[va], maps)
    else:  # every penalty's validation predictions from one SVD per scaling of the training embeddings
        pred, units = ridge_predict(X[tr], y[tr, None], X[va], maps)
        pred = pred[..., 0]
    err = np.abs(pred - y[va])  # [penalties, n_val]
    best = int(err.mean(axis=1).argmin())
    # one-standard-error rule within the best's scaling: the strongest penalty within one SE
    # of the best, so a factor the embedding does not hold gets (nearly) the training mean,
    # not a fit to val noise
    ok = err.mean(axis=1) <= err[best].mean() + err[best].std() / np.sqrt(len(va))
    ok &= np.array([p[0] == PENALTIES[best][0] for p in PENALTIES])
    scaling, alpha = PENALTIES[int(np.flatnonzero(ok).max())]
    fitted = LinearRegressionProbe(alpha=alpha * units[scaling], random_state=seed)
    f = maps[scaling]
    if streamed:
        fitted.fit_stream((f(X[i], fitted=True), y[i]) for i in F.row_chunks(tr, max_rows))
    else:
        fitted.fit(f(X[tr], fitted=True), y[tr])
    Zte = f(X[te])
    mae = fitted.evaluate(Zte, y[te], groups=groups)["mae"]
    mae.details.update(scaling=scaling, alpha=alpha, alpha_unit=ALPHA_UNIT)
    # what the ridge figures' rows went through (the classifiers' details say the same)
    rows = {"outlier_rows": st.outlier_rows, "extrapolated_rows": st.extrapolated_rows(X[te])}
    rows = {k: v for k, v in rows.items() if v}
    mae.details.update(rows)
    sq_err = (fitted.predict(Zte) - y[te]) ** 2
    sq_dev = (y[te] - y[tr].mean()) ** 2

    def r2(counts: np.ndarray) -> np.ndarray:  # out of sample: against the training mean's error
        return 1 - (counts @ sq_err) / (counts @ sq_dev)  # type: ignore[no-any-return]

    lo, hi, _ = bootstrap_ci(r2, n=len(te), random_state=seed, groups=groups)
    r2_est = Estimate(float(r2(np.ones((1, len(te))))[0]), float(lo), float(hi), chance=0.0, n=len(te),
                      details={"scaling": scaling, "alpha": alpha, **rows,
                               **({"bootstrap": mae.details["bootstrap"]} if groups is not None else {}),
                               "definition": "1 - SSE / SSE of predicting the training mean"})
    return {"mae": mae, "r2": r2_est}


def reference_level(folder: "FactorFolder", f: "Factor") -> str:
    """The gallery's level: ``[neutral] COL = level`` in the folder's config, else the most common level."""
    neutral = folder.config.get("neutral", {})
    if f.name in neutral:
        level = str(neutral[f.name])
        if level not in f.levels:
            raise DataError(f"{folder.root / 'invariance.toml'}: [neutral] {f.name} = {level!r} is not a level "
                            f"of that column ({', '.join(f.levels)})")
        return level
    counts = np.bincount(f.values[f.known].astype(int), minlength=len(f.levels))
    return f.levels[int(counts.argmax())]


def enrollment_study(audit: "Audit", ref: "ModelRef", folder: "FactorFolder", name: str) -> dict[str, Any]:
    """Rank-1 and TAR@FAR per level of one factor, gallery at its reference level.

    Returns ``{"reference": level, "gallery": G, "levels": {level: {"rank1", "tar"} or None}}``
    (None where no identity has an image at that level besides its gallery image).
    """
    from ..probes import enrollment_figures

    if folder.identity is None:
        raise DataError(f"{folder.root}/labels.csv has no identity column: enrollment needs one")
    X = audit.embed(ref, folder.images, label=f"{ref.name} {folder.root.name}")
    f = folder.factors[name]
    ref_level = reference_level(folder, f)
    levels = f.level_of()
    rng = np.random.default_rng(audit.seed)
    gallery: dict[str, int] = {}
    for ident in sorted(set(folder.identity[levels == ref_level].tolist())):
        rows = np.flatnonzero((folder.identity == ident) & (levels == ref_level))
        if (folder.identity == ident).sum() >= 2:  # an identity needs a probe besides its gallery image
            gallery[ident] = int(rng.choice(rows))
    g_rows = np.array(list(gallery.values()), dtype=int)
    out: dict[str, Any] = {"reference": ref_level, "gallery": len(g_rows), "levels": {}}
    for level in f.levels:
        probes = np.flatnonzero((levels == level) & np.isin(folder.identity, list(gallery)))
        probes = probes[~np.isin(probes, g_rows)]
        if len(g_rows) < 2 or not len(probes):
            out["levels"][level] = None
            continue
        figs = enrollment_figures(X[g_rows], folder.identity[g_rows], X[probes], folder.identity[probes],
                                  far=FAR, random_state=audit.seed)
        for e in figs.values():
            e.details.update(level=level, reference_level=ref_level)
        out["levels"][level] = figs
    return out


# ----------------------------------------------------------------------------- overview


def leakage_score(metric: str, est: Estimate) -> tuple[float, float, float]:
    """A figure mapped to 0 = chance, 1 = perfectly recovered, with its CI (lo, hi)."""
    c = est.chance

    def s(v: float) -> float:
        if metric == "balanced_error":
            return (0.5 - v) / 0.5
        if metric == "balanced_accuracy":
            return (v - c) / (1 - c)  # type: ignore[operator]
        return 1 - v / c if c else float("nan")  # mae

    lo, hi = sorted((s(est.ci_low), s(est.ci_high)))
    return s(est.value), lo, hi


def overview_plots(results: Mapping[str, Mapping[str, Any]], gated: Mapping[str, Iterable[str]],
                   title: str) -> list[dict[str, Any]]:
    """The overview picture (every factor's headline figure against chance) and a table
    with one row per factor: type, probe, figure, CI, chance, gate."""
    table = {"title": f"{title}: one row per factor", "kind": "table",
             "columns": ["factor", "type", "probe", "figure", "value", "95% CI", "chance", "gate"],
             "rows": [[name, r["type"], r["probe"], r["headline"], f"{e.value:.4g}", f"[{e.ci_low:.4g}, {e.ci_high:.4g}]",
                       f"{e.chance:.4g}", ", ".join(gated.get(name, ())) or "measured only"]
                      for name, r in results.items() for e in [r["figures"][r["headline"]]]]}
    return [_overview_picture(results, set(gated), title), table]


def _overview_picture(results: Mapping[str, Mapping[str, Any]], gated: set[str], title: str) -> dict[str, Any]:
    from ..report.plots import factor_overview

    rows = []
    for name, r in results.items():
        m = r["headline"]
        e = r["figures"][m]
        score, lo, hi = leakage_score(m, e)
        rows.append({"factor": name, "score": score, "ci": (lo, hi), "gated": name in gated,
                     "label": f"{m.replace('_', ' ')} {e.value:.3g} [{e.ci_low:.3g}, {e.ci_high:.3g}], "
                              f"chance {e.chance:.3g}"})
    return factor_overview(rows, title)
