"""The face studies: the paper's Sec. 3 (attributes, pose) and the enrollment risk of Sec. 1.

Each study takes an :class:`~pytest_invariance._audit.Audit` (for cached embeddings), a
:class:`~pytest_invariance._audit.ModelRef` and :class:`ImageSet` s, and returns plain
dicts of :class:`Estimate` s plus report plot dicts. Nothing here imports pytest: the
suites in ``audits/face_*`` call these functions and turn the figures into checks.

- :func:`attribute_study`: balanced linear SVMs for CelebA's 40 attributes (C chosen on
  val, figures on test), false-negative and false-positive rates as in Fig. 2.
- :func:`pose_study`: linear regression of |yaw| (pitch, |roll|) with Table 1's bins.
- :func:`perturbation_study`: any image set with an identity column and any
  :class:`PerturbationSpec` s: (a) the factor level regressed from the embedding with an
  identity-disjoint split, (b) rank-1 identification of probes perturbed at each level
  against a gallery enrolled at the neutral level.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..data import PerturbationSpec, PerturbedImageSet
from ..data._source import ImageSet, digest_of
from ..errors import InvalidParameterError
from ..probes._estimate import Estimate
from ..probes._ridge import ALPHA_UNIT, PENALTIES, cv_penalty, ridge_predict
from ..probes.stats import bootstrap_ci

if TYPE_CHECKING:
    import pandas as pd
    from numpy.typing import NDArray

    from .._audit import Audit, ModelRef
    from ..checks import Suite
    from ..data.folder import FileImageSet
    from ..settings import Settings

#: Level at which each built-in perturbation leaves the image unchanged.
NEUTRAL_LEVELS: dict[str, float] = {"rotation": 0.0, "blur": 0.0, "brightness": 1.0, "scale": 1.0, "occlusion": 0.0}
CELEBA_NEEDS = ("img_align_celeba/ (or img_celeba/ + list_bbox_celeba.txt), list_attr_celeba.txt, list_eval_partition.txt "
                "(or the mirrors' .csv lists)")
BUILD_HINT = "python scripts/build_facenet.py"
N_BOOTSTRAP = 1000


# ----------------------------------------------------------------------------- skip reasons


def default_model_missing(suite: "Suite", settings: "Settings") -> str | None:
    """One-line skip reason when no --model is given and a bundled model file is absent."""
    if settings.model or settings.embeddings:
        return None
    for name, entry in suite.section("models").items():
        path = (suite.root / entry["path"]).resolve()
        if not path.is_file():
            return f"{suite.name}: bundled model {name} not built ({path}); run `{BUILD_HINT}` or pass --model"
    return None


def find_celeba(settings: "Settings", *, need_pose: bool = False) -> tuple[Path | None, str | None]:
    """The CelebA folder under ``--invariance-data-dir`` (the folder itself or its ``celeba/``).

    Returns ``(folder, None)`` or ``(None, one-line skip reason)`` when there is no CelebA.

    Raises
    ------
    DatasetNotFoundError
        When a copy is there but unusable ("found X; expected Y"): an error, not a skip.
    """
    from ..data.celeba import locate_celeba

    root = settings.resolve_path(settings.data_dir)
    need = CELEBA_NEEDS + (", pose.csv (image_id,yaw,pitch,roll)" if need_pose else "")
    if root is None:
        return None, f"no CelebA: pass --invariance-data-dir DIR holding {need}"
    for folder in (root, root / "celeba", root / "CelebA"):
        layout = locate_celeba(folder)
        if layout is not None:
            if need_pose and "pose.csv" not in layout.lists:
                return None, f"no {folder / 'pose.csv'}: the pose suite needs image_id,yaw,pitch,roll per image (CelebA ships no pose)"
            return folder, None
    return None, f"no CelebA under {root} (or {root}/celeba): expected {need}"


def celeba_gate(audit: "Audit", suite: "Suite", *, need_pose: bool = False) -> str | None:
    """What a CelebA suite's tests do before running: None (run), or a one-line skip reason.

    An unusable CelebA copy raises its "found X; expected Y" error in the first test only;
    the suite's other tests skip pointing at it, so a bad folder is one error, not 41.
    """
    from ..errors import DatasetNotFoundError

    state = audit.memo(("celeba-layout-error",), dict, shared=True)
    if "error" in state:
        return f"CelebA not usable (the error is reported once, above): {state['error']}"
    try:
        reason = find_celeba(audit.settings, need_pose=need_pose)[1]
    except DatasetNotFoundError as exc:
        state["error"] = str(exc)
        raise
    return reason or default_model_missing(suite, audit.settings)


# ----------------------------------------------------------------------------- CelebA input


def celeba_splits(folder: Path, *, crop: Sequence[float] | None, limits: Mapping[str, int], seed: int,
                  skip_bad: bool = False, splits: Sequence[str] = ("train", "val", "test")) -> dict[str, "FileImageSet"]:
    """Load CelebA splits at 160x160, cropped to a face box, optionally subsampled.

    Parameters
    ----------
    crop : (x, y, w, h) or None
        Box in the aligned 178x218 images (square crop around its centre), so the face
        fills the frame as in FaceNet's training crops; ignored for ``img_celeba``,
        whose own boxes are used. Images of another size are handled by :func:`crop_boxes`.
    limits : mapping split -> int
        At most this many images per split (seeded random subset, order kept); 0 = all.
    skip_bad : bool
        Leave out every image that cannot be read or decoded (each chosen image is fully
        decoded once up front, so a truncated JPEG is found before extraction).

    Each returned set carries ``notes``: ``n``, ``n_skipped``, ``conversions`` and ``crop``.
    """
    from ..data._decode import scan_images
    from ..data.celeba import load_celeba
    from ..data.folder import FileImageSet

    out = {}
    for split in splits:
        s = load_celeba(folder, split, size=(160, 160), skip_bad=skip_bad)
        idx = np.arange(len(s))
        limit = int(limits.get(split, 0) or 0)
        if 0 < limit < len(s):
            idx = np.sort(np.random.default_rng(seed).choice(len(s), limit, replace=False))
        n_skipped = s.n_skipped
        if skip_bad:  # headers were checked; truncated pixel data only shows in a full decode
            bad = scan_images({str(i): s.paths[i] for i in idx}, decode=True).problems
            idx = np.array([i for i in idx if str(i) not in bad], dtype=np.int64)
            n_skipped += len(bad)
        labels = s.labels.iloc[idx].reset_index(drop=True)
        if s.boxes is not None:
            boxes, how = s.boxes[idx], {"method": "list_bbox_celeba boxes (in-the-wild images)"}
        else:
            boxes, how = crop_boxes(labels, crop)
        fp = hashlib.sha256(f"{s.fingerprint}|{idx.tobytes().hex()}|{None if boxes is None else boxes.tobytes().hex()}"
                            .encode()).hexdigest()[:32]
        # the data: the split's files and labels, how many are drawn and how they are cropped (the
        # seed that draws them is not: another seed audits the same data, the CI covers the draw)
        drawn = limit if 0 < limit < len(s) else 0
        data = digest_of(s.data_digest, f"limit={drawn}", f"skip_bad={skip_bad}",
                         f"crop={None if crop is None else [float(v) for v in crop]}")
        out[split] = FileImageSet([s.paths[i] for i in idx], labels, size=(160, 160), boxes=boxes,
                                  fingerprint=fp, n_skipped=n_skipped, conversions=s.conversions, data_digest=data)
        out[split].notes = {"n": len(idx), "n_skipped": n_skipped, "conversions": dict(s.conversions), "crop": how}
    return out


#: Mean landmarks of the aligned 178x218 release (eyes, nose, mouth corners; x, y), to
#: express a crop box relative to a face's own landmarks.
_MEAN_LANDMARKS = np.array([[69.0, 111.0], [107.0, 111.0], [88.0, 134.0], [72.0, 152.0], [105.0, 152.0]])
_LANDMARKS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
              "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")


def _face_frame(points: "NDArray[np.float64]") -> tuple["NDArray[np.float64]", "NDArray[np.float64]"]:
    """Centre (mean of the 5 points) and scale (eye-midpoint to mouth-midpoint distance) of [..., 5, 2]."""
    eyes, mouth = points[..., :2, :].mean(-2), points[..., 3:, :].mean(-2)
    return points.mean(-2), np.linalg.norm(mouth - eyes, axis=-1)


def crop_boxes(labels: "pd.DataFrame", crop: Sequence[float] | None) -> tuple["NDArray[np.float64] | None", dict[str, Any]]:
    """Per-image crop boxes (x, y, w, h) for a box given in the aligned 178x218 frame.

    - 178x218 images: the box as given.
    - Same aspect ratio (resized mirrors at 64 or 128 px wide...): the box scaled to each size.
    - Other shapes (square crops, CelebA-HQ) with a landmarks file whose points lie inside
      the images: the box placed relative to each face's landmarks (centre and eye-mouth
      distance, from the release's mean landmarks).
    - Other shapes without usable landmarks: no box, the whole image is used (such copies
      are already cropped around the face; a fixed box would cut the head off).

    Returns the boxes (None = whole image) and a JSON-able record of what was done.
    """
    from ..data.celeba import ALIGNED_SIZE

    if not crop:
        return None, {"method": "whole image (crop = [])"}
    box = np.asarray(crop, np.float64)
    if "image_width" not in labels:
        return np.tile(box, (len(labels), 1)), {"method": "fixed box, image sizes not checked", "box_178x218": list(box)}
    w, h = labels["image_width"].to_numpy(np.float64), labels["image_height"].to_numpy(np.float64)
    sizes = {f"{a:g}x{b:g}": int(c) for (a, b), c in
             zip(*np.unique(np.column_stack([w, h]), axis=0, return_counts=True)) } if len(w) else {}
    record: dict[str, Any] = {"box_178x218": box.tolist(), "image_sizes": sizes}
    W0, H0 = ALIGNED_SIZE
    same = np.isclose(w / h, W0 / H0, rtol=0.01)
    if same.all():
        sx, sy = w / W0, h / H0
        method = "fixed box" if np.allclose(sx, 1) and np.allclose(sy, 1) else "box scaled to each image's size"
        return np.column_stack([box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]), {**record, "method": method}
    if all(c in labels for c in _LANDMARKS):
        pts = labels[list(_LANDMARKS)].to_numpy(np.float64).reshape(-1, 5, 2)
        inside = (pts >= 0).all() and (pts[..., 0] <= w[:, None]).all() and (pts[..., 1] <= h[:, None]).all()
        if inside:
            c0, s0 = _face_frame(_MEAN_LANDMARKS)
            rel_c, rel_wh = (box[:2] + box[2:] / 2 - c0) / s0, box[2:] / s0
            c, s = _face_frame(pts)
            wh = rel_wh[None] * s[:, None]
            xy = c + rel_c[None] * s[:, None] - wh / 2
            return np.column_stack([xy, wh]), {**record, "method": "box placed from each image's landmarks"}
    return None, {**record, "method": "whole image: shape is not 178x218's and no landmarks inside the images"}


# ----------------------------------------------------------------------------- attributes


def fit_svm(probe: Any, *args: Any, where: str, **kw: Any) -> Any:
    """``probe.fit(*args, **kw)`` whose "stopped at max_iter" warning names the setting that
    raises it: ``svm_max_iter`` under ``[probes]`` in ``where`` (the file the suite reads it
    from), not the Python argument. Other warnings pass through unchanged."""
    import warnings

    from ..errors import InvarianceWarning, warn

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.fit(*args, **kw)
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, InvarianceWarning) and text.endswith("Raise max_iter."):
            warn(text.removesuffix("Raise max_iter.") + f"Raise it with svm_max_iter = N (now {probe.max_iter}) "
                 f"under [probes] in {where}.")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return probe


def svm_max_iter(table: Mapping[str, Any], where: str) -> int | None:
    """``svm_max_iter`` of a ``[probes]`` table: a positive int, or None (the probe's default)."""
    value = table.get("svm_max_iter")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameterError(f"{where}: [probes] svm_max_iter must be a positive integer; got {value!r}")
    return value


def attribute_study(audit: "Audit", ref: "ModelRef", splits: Mapping[str, ImageSet], *,
                    attributes: Sequence[str], groups: Mapping[str, str],
                    C_grid: Sequence[float] | None = None, max_iter: int | None = None,
                    where: str = "the suite's invariance.toml") -> dict[str, Any]:
    """Fig. 2: one balanced linear SVM per attribute on the embedding.

    ``max_iter``: the SVM solver's iteration cap (the suite's ``[probes] svm_max_iter``, read
    from ``where``, which its "stopped at max_iter" warning names).

    Returns
    -------
    dict
        ``attributes``: name -> the probe's figures (``fn_rate``, ``fp_rate`` Estimates, ...)
        for every measurable attribute; ``not_measurable``: name -> reason with the counts
        (too few present or absent examples in a split); ``groups``: group -> mean balanced
        error over its measured attributes (Estimate, chance 0.5); ``plot``: the Fig. 2
        bars; ``n``: images per split; ``data``: per split the loader's notes (skipped
        images, conversions, crop).
    """
    from ..probes import AttributeSVMProbe
    from ..report.plots import fn_fp_bars

    X = {s: audit.embed(ref, splits[s], label=f"{ref.name} CelebA {s}") for s in ("train", "val", "test")}
    Y = {s: splits[s].labels[list(attributes)].to_numpy() for s in X}
    kw: dict[str, Any] = {"device": audit.settings.device, "random_state": audit.seed,
                          "max_train_rows": audit.settings.max_rows}
    if C_grid is not None:
        kw["C_grid"] = tuple(C_grid)
    if max_iter is not None:
        kw["max_iter"] = max_iter
    probe = fit_svm(AttributeSVMProbe(**kw), X["train"], Y["train"], X["val"], Y["val"], names=list(attributes),
                    where=where)
    not_measurable = probe.not_measurable(Y["test"])
    figures = probe.evaluate(X["test"], Y["test"])
    rows = [{"attribute": a, "group": groups.get(a, "ungrouped").replace("_", "-"),
             "fn_rate": figures[a]["fn_rate"].value, "fn_ci": _ci(figures[a]["fn_rate"]),
             "fp_rate": figures[a]["fp_rate"].value, "fp_ci": _ci(figures[a]["fp_rate"])}
            for a in sorted(figures, key=lambda a: (_group_order(groups.get(a)), a))]
    return {"attributes": figures, "not_measurable": not_measurable, "groups": _group_means(figures, groups),
            "plot": fn_fp_bars(rows, f"Attribute prediction from {ref.name}:{ref.layer} (CelebA test)"),
            "n": {s: len(X[s]) for s in X}, "data": data_notes(splits)}


def data_notes(splits: Mapping[str, ImageSet]) -> dict[str, Any]:
    """Per split what the loader did: ``n``, ``n_skipped``, ``conversions``, ``crop`` (JSON-able)."""
    return {s: dict(getattr(images, "notes", None) or {
                "n": len(images), "n_skipped": int(getattr(images, "n_skipped", 0)),
                "conversions": dict(getattr(images, "conversions", None) or {})})
            for s, images in splits.items()}


def _group_order(group: str | None) -> int:
    order = ("identity_dependent", "identity_correlated", "identity_independent")
    return order.index(group) if group in order else len(order)


def _ci(e: Estimate) -> tuple[float, float]:
    return (e.ci_low, e.ci_high)


def _group_means(figures: Mapping[str, Mapping[str, Any]], groups: Mapping[str, str]) -> dict[str, Estimate]:
    # Mean of the per-attribute balanced errors; its CI is the mean of the per-attribute
    # bounds, conservative since the attributes share one test set (errors correlate).
    out = {}
    for group in sorted(set(groups.values()), key=_group_order):
        ests = [_balanced(figures[a]) for a in figures if groups.get(a) == group]
        if ests:
            out[group] = Estimate(float(np.mean([e.value for e in ests])), float(np.mean([e.ci_low for e in ests])),
                                  float(np.mean([e.ci_high for e in ests])), chance=0.5, n=ests[0].n,
                                  details={"attributes": len(ests)})
    return out


def _balanced(fig: Mapping[str, Any]) -> Estimate:
    b = fig.get("balanced_error")
    if isinstance(b, Estimate):
        return b
    fn, fp = fig["fn_rate"], fig["fp_rate"]  # fall back to the mean of the two rates
    return Estimate((fn.value + fp.value) / 2, (fn.ci_low + fp.ci_low) / 2, (fn.ci_high + fp.ci_high) / 2,
                    chance=0.5, n=fn.n + fp.n)


# ----------------------------------------------------------------------------- pose

#: A horizontal flip negates yaw and roll but not pitch; flip-trained networks cannot
#: tell the sign apart, so (as the paper does for yaw) those targets are absolute.
POSE_TARGETS: dict[str, bool] = {"yaw": True, "pitch": False, "roll": True}


def pose_study(audit: "Audit", ref: "ModelRef", train: ImageSet, test: ImageSet, *,
               columns: Sequence[str] = ("yaw", "pitch", "roll"),
               bins: Sequence[float] = (0, 15, 30, 45)) -> dict[str, Any]:
    """Table 1: linear regression of pose angles from the embedding, MAE per |angle| bin.

    Returns
    -------
    dict
        column -> ``{"target": "|yaw|" or "pitch", "bins": [{"bin", "estimate", "count"}, ...,
        {"bin": "total", ...}], "plot": bin_table}``; columns absent or all-NaN are left out.
    """
    from ..probes import LinearRegressionProbe
    from ..report.plots import bin_table

    Xtr = audit.embed(ref, train, label=f"{ref.name} CelebA train")
    Xte = audit.embed(ref, test, label=f"{ref.name} CelebA test")
    out: dict[str, Any] = {}
    for col in columns:
        if col not in train.labels or train.labels[col].isna().all():
            continue
        absolute = POSE_TARGETS.get(col, False)
        ytr, yte = (train.labels[col].to_numpy(float), test.labels[col].to_numpy(float))
        fit = _pose_fit(Xtr, ytr, Xte, yte, absolute, audit.seed, audit.settings.max_rows)
        if absolute:
            ytr, yte = np.abs(ytr), np.abs(yte)
        rows = _bins_by_magnitude(np.abs(fit["pred"] - yte), yte, float(ytr.mean()), bins, audit.seed)
        rows.append({"bin": "total", "estimate": fit["total"], "count": len(yte)})
        target = f"|{col}|" if absolute else col
        table = bin_table([{"bin": r["bin"], "mae": r["estimate"].value, "ci": _ci(r["estimate"]), "count": r["count"]}
                           for r in rows], f"{target} MAE from {ref.name}:{ref.layer} (CelebA test, degrees)")
        out[col] = {"target": target, "bins": rows, "plot": table}
    return out


def _pose_fit(Xtr: "NDArray[np.floating]", ytr: "NDArray[np.float64]", Xte: "NDArray[np.floating]",
              yte: "NDArray[np.float64]", absolute: bool, seed: int, max_rows: int | None) -> dict[str, Any]:
    """Test predictions ``pred`` [n_test] and the total MAE ``total`` (Estimate) of one pose angle.

    An absolute target (yaw, roll; paper Sec. 3.2: a flip-trained network cannot tell the sign)
    is read two ways: least squares on ``|angle|`` (the paper's), and least squares on the signed
    angle scored as ``|prediction|``. A network that keeps the sign holds yaw linearly, and
    ``|yaw|`` is then no linear function of the embedding: the paper's probe read MAE 16.1
    (chance 15.1) where ``|signed fit|`` read 9.8. The fit with the lower training MAE is used
    (both have the same parameters); ``details.target_fit`` says which.
    """
    from ..probes import LinearRegressionProbe

    def probe(y: "NDArray[np.float64]") -> Any:
        return LinearRegressionProbe(random_state=seed).fit_rows(Xtr, y, max_rows=max_rows)

    if not absolute:
        p = probe(ytr)
        return {"pred": p.predict(Xte), "total": p.evaluate(Xte, yte)["mae"]}
    atr, ate = np.abs(ytr), np.abs(yte)
    paper, signed = probe(atr), probe(ytr)
    train_mae = {"absolute": float(np.abs(paper.predict(Xtr) - atr).mean()),
                 "signed": float(np.abs(np.abs(signed.predict(Xtr)) - atr).mean())}
    note = {"target_fit_train_mae": train_mae}
    if train_mae["absolute"] <= train_mae["signed"]:
        total = paper.evaluate(Xte, ate)["mae"]
        total.details.update(note, target_fit="absolute: least squares on |angle| (paper Sec. 3.2)")
        return {"pred": paper.predict(Xte), "total": total}
    pred = np.abs(signed.predict(Xte))
    err = np.abs(pred - ate)
    lo, hi, _ = bootstrap_ci(err, n_bootstrap=N_BOOTSTRAP, random_state=seed)
    total = Estimate(float(err.mean()), float(lo), float(hi), chance=float(np.abs(atr.mean() - ate).mean()),
                     n=len(ate), details={**note, "chance_method": "MAE of predicting the training mean of |angle|",
                                          "target_fit": "signed: least squares on the signed angle, scored as "
                                                        "|prediction| (the embedding keeps the sign)"})
    return {"pred": pred, "total": total}


def _bins_by_magnitude(err: "NDArray[np.float64]", y: "NDArray[np.float64]", train_mean: float,
                       edges: Sequence[float], seed: int) -> list[dict[str, Any]]:
    # Table 1 bins by the true |angle| (also for signed pitch); empty bins are left out.
    from ..probes.functional import bin_index, bin_labels

    idx, rows = bin_index(np.abs(y), edges), []
    for b, label in enumerate(bin_labels(edges)):
        sel = idx == b
        if sel.any():
            lo, hi, _ = bootstrap_ci(err[sel], n_bootstrap=N_BOOTSTRAP, random_state=seed)
            est = Estimate(float(err[sel].mean()), float(lo), float(hi), n=int(sel.sum()),
                           chance=float(np.abs(y[sel] - train_mean).mean()))
            rows.append({"bin": label, "estimate": est, "count": int(sel.sum())})
    return rows


# ----------------------------------------------------------------------------- perturbations


def perturbation_specs(table: Mapping[str, Sequence[float]], neutral: Mapping[str, float] | None = None
                       ) -> list[tuple[PerturbationSpec, float]]:
    """``[perturbations]`` of a suite config -> (spec, neutral level) pairs.

    Every factor must list its neutral level (the one that leaves the image unchanged),
    since the gallery is enrolled there. ``neutral`` overrides :data:`NEUTRAL_LEVELS`.
    """
    neutral = {**NEUTRAL_LEVELS, **(neutral or {})}
    out = []
    for name, levels in table.items():
        spec = PerturbationSpec(name, tuple(levels))
        if neutral.get(name) not in spec.levels:
            raise InvalidParameterError(
                f"[perturbations] {name} = {list(spec.levels)} must include its neutral level "
                f"{neutral.get(name)} (the unperturbed gallery); add it or set [neutral] {name}")
        out.append((spec, float(neutral[name])))
    return out


def identity_split(identities: "NDArray[Any]", train_fraction: float, seed: int) -> "NDArray[np.bool_]":
    """Boolean train mask that puts every image of one identity on the same side."""
    ids = np.unique(identities)
    if len(ids) < 4:
        raise InvalidParameterError(f"an identity-disjoint split needs at least 4 identities; got {len(ids)}")
    n_train = min(len(ids) - 2, max(2, int(round(train_fraction * len(ids)))))
    train_ids = np.random.default_rng(seed).permutation(ids)[:n_train]
    return np.isin(identities, train_ids)


def perturbation_study(audit: "Audit", ref: "ModelRef", images: ImageSet,
                       specs: Sequence[tuple[PerturbationSpec, float]], *, identity: str = "identity",
                       train_fraction: float = 0.7, absolute: Sequence[str] = (),
                       n_splits: int = 20) -> dict[str, Any]:
    """Leakage of each factor and its enrollment risk, for any image set and model.

    Parameters
    ----------
    images : ImageSet
        Unperturbed images with an ``identity`` label column.
    specs : list of (PerturbationSpec, neutral level)
        From :func:`perturbation_specs`.
    train_fraction : float
        Share of identities the regressor is fitted on; the rest are the test set.
    n_splits : int
        Identity-disjoint splits drawn from the seed; the MAE is their mean and its CI
        covers both the test identities and the choice of split
        (:func:`~pytest_invariance.probes.stats.repeated_estimate`).
    absolute : sequence of str
        Factors whose target is ``|level - neutral|`` (sign not asked of the embedding).

    Returns
    -------
    dict
        factor -> ``{"mae": Estimate, "rank1": [Estimate per level], "levels", "unit",
        "strongest": index of the gated level, "plot": rank-1 against level}``.
    """
    out: dict[str, Any] = {}
    ids = images.labels[identity].to_numpy()
    for spec, neutral in specs:
        X = perturbed_embeddings(audit, ref, images, spec, neutral)
        # Through the figure cache: a warm rerun reads the figures back instead of refitting
        # the 20 splits (most of a warm face-perturbation run before).
        disk = perturbation_disk_key("face_perturbation", ref, spec, neutral, X, np.tile(ids, len(spec.levels)),
                                     train_fraction=train_fraction, absolute=spec.name in absolute,
                                     n_splits=n_splits)
        out[spec.name] = audit.memo(("face_perturbation.figures", ref.key, spec.name), lambda: _perturbation_figures(
            audit, ref, X, ids, spec, neutral, train_fraction=train_fraction, absolute=spec.name in absolute,
            n_splits=n_splits), disk=disk)
    return out


def perturbation_disk_key(study: str, ref: "ModelRef", spec: PerturbationSpec, neutral: float, X: Any, ids: Any,
                          **protocol: Any) -> dict[str, Any]:
    """The figure-cache key of a face-perturbation study of one factor: the embeddings' and the
    identities' digests, the factor's levels and the protocol (the seed, plugin version and
    source are added by :meth:`Audit.memo`); the model's name titles the plots."""
    from .._figures import array_digest

    return {"study": study, "name": ref.name, "factor": spec.name, "levels": [float(v) for v in spec.levels],
            "unit": spec.unit, "neutral": float(neutral), "protocol": protocol,
            "inputs": {"X": array_digest(np.asarray(X)), "ids": array_digest(np.asarray(ids).astype(str))}}


def _perturbation_figures(audit: "Audit", ref: "ModelRef", X: Any, ids: Any, spec: PerturbationSpec, neutral: float,
                          *, train_fraction: float, absolute: bool, n_splits: int) -> dict[str, Any]:
    from .._progress import bar

    levels = np.asarray(spec.levels)
    level_of = np.repeat(levels, len(ids))
    target = np.abs(level_of - neutral) if absolute else level_of
    with bar(n_splits + 1, f"{ref.name} {spec.name} splits", audit.progress, unit="fit") as shown:
        mae = repeated_regression(X, target, np.tile(ids, len(levels)), train_fraction, audit.seed, n_splits,
                                  on_split=shown.update)
        rank1 = rank1_per_level(X, ids, list(levels).index(neutral), seed=audit.seed)
        shown.update(1)
    fig = {"mae": mae, "rank1": rank1, "levels": levels.tolist(), "unit": spec.unit,
           "neutral": neutral, "strongest": _strongest(levels, neutral, rank1),
           "target": f"|{spec.name} - {neutral:g}|" if absolute else spec.name}
    fig["plot"] = _rank1_plot(spec, fig, ref, len(ids))
    return fig


def perturbed_embeddings(audit: "Audit", ref: "ModelRef", images: ImageSet, spec: PerturbationSpec,
                         neutral: float) -> "NDArray[np.floating]":
    """Embeddings of ``images`` at every level of ``spec``, level-major ``[len(levels) * n, D]``
    (the rows of :class:`PerturbedImageSet`).

    When the neutral level leaves every image unchanged bit for bit (rotation 0, blur 0,
    brightness 1, ...), its rows are the embeddings of the unperturbed images, run through
    the model once per model and shared by all factors (the face-perturbation suite ran the
    same 100 faces five times); the other levels are one extraction. The model sees the
    same input either way, and an image's embedding does not depend on the batch it is
    run in (``tests/test_face_study.py``).
    """
    from ..data._source import SourceImageSet

    source = SourceImageSet(images)
    others = tuple(v for v in spec.levels if v != neutral)
    if len(others) == len(spec.levels) or not others or not source.unchanged_by(spec, neutral):
        return audit.embed(ref, PerturbedImageSet(images, spec), label=f"{ref.name} {spec.name}")
    plain = audit.embed(ref, source, label=f"{ref.name} unperturbed")
    rest = audit.embed(ref, PerturbedImageSet(images, PerturbationSpec(spec.name, others)),
                       label=f"{ref.name} {spec.name}")
    n, at = len(images), list(spec.levels).index(neutral)
    return np.concatenate([rest[: at * n], plain, rest[at * n:]])


def repeated_regression(X: "NDArray[np.floating]", y: "NDArray[np.floating]", groups: "NDArray[Any]",
                        train_fraction: float, seed: int, n_splits: int,
                        on_split: Callable[[int], Any] | None = None) -> Estimate:
    """:func:`factor_regression` on ``n_splits`` seeded identity-disjoint splits, combined.

    A single 70/30 split of 100 identities moves the MAE by several times its bootstrap
    CI from one seed to the next; the mean over splits, with a CI that adds the spread
    over splits, does not (docs/probes.md, "Confidence intervals").
    """
    from ..probes.stats import repeat_seed, repeated_estimate

    if n_splits < 1:
        raise InvalidParameterError(f"n_splits must be >= 1; got {n_splits!r}")
    from ..probes.functional import one_blas_thread

    ests = []
    with one_blas_thread():  # 6 small SVDs per split
        for r in range(n_splits):
            s = repeat_seed(seed, r)
            ests.append(factor_regression(X, y, identity_split(groups, train_fraction, s), groups, seed=s))
            if on_split is not None:  # a progress line's update(1)
                on_split(1)
    est = repeated_estimate(ests, alternative="less", bounds=(0.0, np.inf))  # an MAE
    # each split's validation chose its own scaling: say how often each was chosen
    picked = [e.details["scaling"] for e in ests]
    est.details["scaling"] = {s: picked.count(s) for s in sorted(set(picked))}
    return est


def factor_regression(X: "NDArray[np.floating]", y: "NDArray[np.floating]", train: "NDArray[np.bool_]",
                      groups: "NDArray[Any]", *, seed: int, n_permutations: int = 20) -> Estimate:
    """Test MAE of a ridge regression of ``y`` on ``X``, fitted on the ``train`` rows.

    With a few hundred rows and as many dimensions, plain least squares interpolates, so
    the ridge penalty is chosen by 5-fold cross-validation over training *groups*
    (identities). The CI is a bootstrap over test groups (rows of one identity are not
    independent). ``chance`` is the MAE of predicting the training mean; the p-value is
    the bootstrap share of resamples in which the regression does not beat that guess
    (refits on shuffled targets are reported as ``permutation_mae`` but not used: with
    features constant within an identity they overfit and land above chance, which would
    make an embedding that knows nothing look significant).
    """
    X = np.asarray(X, np.float64)
    Xtr, ytr, Xte, yte, gtr = X[train], y[train], X[~train], y[~train], groups[train]
    rng = np.random.default_rng(seed)
    # column 0: the real targets; the others: permutations (the null), all fitted at once
    Y = np.column_stack([ytr, *(rng.permutation(ytr) for _ in range(n_permutations))])
    uniq = rng.permutation(np.unique(gtr))
    folds = [np.isin(gtr, part) for part in np.array_split(uniq, min(5, len(uniq)))]
    best = cv_penalty(Xtr, Y, folds)  # [k]: the scaling and penalty each target's CV picked
    pred = ridge_predict(Xtr, Y, Xte)[0][best, :, np.arange(Y.shape[1])]  # [k, m]
    err = np.abs(pred - yte)
    g, inv = np.unique(groups[~train], return_inverse=True)
    size = np.bincount(inv)  # equal rows per identity: the mean of the means is the MAE
    per_group = np.column_stack([np.bincount(inv, err[0]), np.bincount(inv, np.abs(yte - ytr.mean()))]) / size[:, None]
    lo, hi, boot = bootstrap_ci(per_group, n_bootstrap=N_BOOTSTRAP, random_state=seed)
    mae, chance = per_group.mean(axis=0)
    return Estimate(float(mae), float(lo[0]), float(hi[0]), chance=float(chance), n=len(yte),
                    p_value=float((1 + (boot[:, 0] >= boot[:, 1]).sum()) / (len(boot) + 1)),
                    details={"scaling": PENALTIES[best[0]][0], "alpha": PENALTIES[best[0]][1], "alpha_unit": ALPHA_UNIT,
                             "permutation_mae": float(err[1:].mean()),
                             "train_identities": len(uniq), "test_identities": len(g),
                             "mae_over_chance": float(mae / chance) if chance else None})


def rank1_per_level(X: "NDArray[np.floating]", ids: "NDArray[Any]", neutral_index: int, *, seed: int) -> list[Estimate]:
    """Rank-1 identification per level: gallery = the ``n`` images at the neutral level.

    ``X`` holds the level-major embeddings (level ``k`` of image ``i`` at row ``k * n + i``),
    ``ids`` the identity of each of the ``n`` images. A probe is correct when its cosine
    nearest gallery entry has its identity; chance is a random gallery pick's hit rate.
    """
    from scipy.stats import binom

    n = len(ids)
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    gallery = Z[neutral_index * n:(neutral_index + 1) * n]
    chance = float((ids[:, None] == ids[None, :]).mean())
    out = []
    for k in range(len(Z) // n):
        hit = (ids[(Z[k * n:(k + 1) * n] @ gallery.T).argmax(axis=1)] == ids).astype(float)
        lo, hi, _ = bootstrap_ci(hit, n_bootstrap=N_BOOTSTRAP, random_state=seed)
        note = ("probes identical to the gallery: rank-1 = 1 by construction" if k == neutral_index
                else "probes perturbed, gallery unperturbed")
        out.append(Estimate(float(hit.mean()), float(lo), float(hi), chance=chance, n=n,
                            p_value=float(binom.sf(hit.sum() - 1, n, chance)), details={"note": note}))
    return out


def _strongest(levels: "NDArray[np.floating]", neutral: float, rank1: Sequence[Estimate]) -> int:
    # The level farthest from neutral; of a symmetric pair (-45/+45) the worse one gates.
    dist = np.abs(levels - neutral)
    far = np.flatnonzero(np.isclose(dist, dist.max()))
    return int(min(far, key=lambda i: rank1[i].value))


def _rank1_plot(spec: PerturbationSpec, fig: Mapping[str, Any], ref: "ModelRef", n: int) -> dict[str, Any]:
    from ..report.plots import curve

    r = fig["rank1"]
    ys = {f"rank-1 ({ref.name})": ([e.value for e in r], [e.ci_low for e in r], [e.ci_high for e in r]),
          "chance": ([e.chance for e in r], None, None)}
    return curve(fig["levels"], ys, f"{spec.name} level ({spec.unit}); gallery at {fig['neutral']:g}",
                 "rank-1 identification rate", f"Enrollment risk: {spec.name} (gallery: {n} unperturbed images)")


def celeba_for_suite(audit: "Audit", suite: "Suite", splits: Sequence[str] = ("train", "val", "test")
                     ) -> dict[str, "FileImageSet"]:
    """The CelebA splits a face suite audits, per its ``[celeba]`` table (crop, limit_*)."""
    folder, reason = find_celeba(audit.settings)
    if folder is None:
        raise InvalidParameterError(reason)
    cfg = suite.section("celeba")
    limits = {s: int(cfg.get(f"limit_{s}", 0)) for s in splits}
    return celeba_splits(folder, crop=cfg.get("crop") or None, limits=limits, seed=audit.seed,
                         skip_bad=audit.settings.skip_bad, splits=splits)
