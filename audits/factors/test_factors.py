"""Each factor of the user's folder probed by its type; with identities, enrollment per level.

Test ids are the CSV's column names (``test_factor[model-Smiling]``) and, for enrollment,
``COLUMN=LEVEL``. Only gated columns get a threshold; the others are measured and reported.
"""
from __future__ import annotations

import pytest

from pytest_invariance.errors import InvarianceError
from pytest_invariance.studies.faces import data_notes
from pytest_invariance.studies.factors import (METRICS, check_measurable, default_limit, enrollment_study,
                                               factor_figures, gates_at, overview_plots)


def _key(ref, folder, name):
    return ("factors", ref.name, ref.layer, ref.embedder.sha256, folder.images.fingerprint, name, ref.key)


def _folder_key(folder):
    # the folder's own invariance.toml (types, [probes]) decides the split's check too
    from pytest_invariance._scope import Scope, digest

    return Scope(("factor folder", str(folder.root), digest(folder.config)))


def _data_key(folder, name):
    return ("factors", name, (folder.images.fingerprint, _folder_key(folder)))  # reads "study factors/NAME"


def _figures(audit, ref, folder, name, erase=False):
    # A split too thin for the probe is the data's fault, not a layer's: keyed without the
    # layer, a sweep reports it in full once and its other layers' tests refer back to it.
    audit.memo(_data_key(folder, name), lambda: check_measurable(folder, name, audit.settings))
    key = _key(ref, folder, name) + (("erased",) if erase else ())
    return audit.memo(key, lambda: factor_figures(audit, ref, folder, name, erase=erase))


def _base(ref, folder, gated, name) -> dict:
    f = folder.factors[name]
    return {"model": ref.name, "factor": name, "type": f.type, "type_source": "inferred" if f.inferred else "declared",
            "gated": name in gated, "factors_gated": {k: list(v) for k, v in gated.items()}, "split": folder.split_source,
            "n_factors": len(folder.factors),
            # byte-identical files under other names, kept on one side of the split with their original
            **({"copies_grouped": folder.copies} if folder.copies else {}),
            "n_skipped": folder.n_skipped, "levels": list(f.levels) or None, "positive_level": f.positive,
            # cells such as 'NA' left out as unknown: the run's notes say so (a level may be named so)
            **({"read_as_unknown": {name: f.spelled_unknown}} if f.spelled_unknown else {}),
            # the run's image counts (skipped, conversions) come from here, once per folder
            "data": data_notes({"folder": folder.images})}


def test_factor(factor, invariance_model, invariance_audit, invariance_check, invariance_factor_folder):
    folder, gated = invariance_factor_folder
    gated = gates_at(gated, folder, invariance_audit.settings, invariance_model.layer)
    fig = _figures(invariance_audit, invariance_model, folder, factor)
    plots = None
    if factor == next(iter(folder.factors)):  # the overview rides on the first factor's headline check
        every = {}
        for n in folder.factors:
            try:
                check_measurable(folder, n, invariance_audit.settings)
            except InvarianceError:  # left to that factor's own test (once per sweep)
                continue
            try:
                every[n] = _figures(invariance_audit, invariance_model, folder, n)
            except InvarianceError:  # that factor's own test meets it again and reports it whole
                invariance_audit.forget(_key(invariance_model, folder, n))
        plots = overview_plots(every, gated, f"Factors of {folder.root.name} in {invariance_model.name}:"
                                             f"{invariance_model.layer} (test split)")
    for metric in METRICS[fig["type"]]:
        est = fig["figures"][metric]
        limit = default_limit(metric, est.chance) if metric in gated.get(factor, ()) else {}
        headline = metric == fig["headline"]
        invariance_check(metric, est, **limit, plots=plots if headline else None, details={
            **_base(invariance_model, folder, gated, factor), "probe": fig["probe"], "n_split": fig["n"],
            "headline": headline, "gated": metric in gated.get(factor, ())})
    if invariance_audit.settings.erase:  # --invariance-erase: the headline again, the factor erased by LEACE
        erased = _figures(invariance_audit, invariance_model, folder, factor, erase=True)
        invariance_check(f"{fig['headline']}_erased", erased["figures"][fig["headline"]], details={
            **_base(invariance_model, folder, gated, factor), "probe": fig["probe"], "n_split": fig["n"],
            "headline": False, "gated": False})


def test_enrollment(enrolled, invariance_model, invariance_audit, invariance_check, invariance_factor_folder):
    folder, gated = invariance_factor_folder
    gated = gates_at(gated, folder, invariance_audit.settings, invariance_model.layer)
    name, level = enrolled
    ref = invariance_model
    study = invariance_audit.memo(("factors-enroll", ref.name, ref.layer, ref.embedder.sha256,
                                   folder.images.fingerprint, name, ref.key),
                                  lambda: enrollment_study(invariance_audit, ref, folder, name))
    figs = study["levels"][level]
    if figs is None:
        pytest.skip(f"factors: no identity has an image at {name}={level} besides its gallery image")
    for metric in ("rank1", "tar"):
        limit = default_limit(metric, None) if metric in gated.get(name, ()) else {}
        invariance_check(metric, figs[metric], **limit, details={
            **_base(ref, folder, gated, name), "bin": f"{name}={level}", "level": level,
            "gallery_level": study["reference"], "gallery": study["gallery"],
            "probe": "cosine nearest gallery entry" if metric == "rank1" else "cosine threshold at FAR 1e-3",
            "gated": metric in gated.get(name, ())})
