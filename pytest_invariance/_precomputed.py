"""``--invariance-embeddings`` at start-up: the shards are checked once, on the controller.

Each fault is one usage error before any test runs: shards that cannot be read, that
do not record how their vectors were made (unless --invariance-embeddings-unverified), that
disagree, hold an id twice, hold a bad vector, lack a row for a CelebA image a suite audits, or were made
from another model, layer, pool or preprocessing than the run's. Suites that make their own images (``[suite]
precomputed = false``: perturbation levels, MNIST arrays) are skipped with one line,
since no outside pipeline can know ids for those images.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import pytest

if TYPE_CHECKING:
    from ._audit import Audit
    from .checks import Suite
    from ._audit import ModelRef
    from .embeddings._parquet import ParquetEmbeddings

OPT = "--invariance-embeddings"
OPT_UNVERIFIED = "--invariance-embeddings-unverified"


def not_joinable(suite: "Suite") -> str | None:
    """Skip reason of a suite whose images have no ids, else None."""
    declared = suite.section("suite").get("precomputed", True)
    if declared is True:
        return None
    why = declared if isinstance(declared, str) else "it makes its own images"
    return f"{suite.name}: {OPT} cannot be joined to this suite ({why}); run it without {OPT}"


def check_at_start(audit: "Audit", suites: Iterable["Suite"]) -> tuple[dict[str, str], list[str]]:
    """Open and check the shards against every joinable suite's model read-out.

    Returns ({suite root: skip reason}, header lines); raises pytest.UsageError (one line).
    """
    from ._audit import embeddings_source, model_names
    from ._model_check import suite_layer_reason
    from .errors import InvarianceError

    s = audit.settings
    reasons: dict[str, str] = {}
    try:
        src = embeddings_source(s)
        src.check_provenance(unverified=s.embeddings_unverified, layers_named=bool(s.layer))
        lines = [f"invariance: embeddings from {src.path} ({len(src.files)} shards, {src.n_rows} rows, "
                 f"layers {', '.join(src.meta.layers)}, model sha256 {(src.meta.model_sha256 or '-')[:12]})"]
        if src.meta.unrecorded:
            lines.append(f"invariance: embeddings NOT verified: the shards do not record "
                         f"{', '.join(src.meta.unrecorded)} (accepted by {'--layer' if not s.embeddings_unverified else OPT_UNVERIFIED})")
        for suite in suites:
            reason = not_joinable(suite)
            if reason:
                reasons[str(suite.root)] = reason
                lines.append(f"invariance: suite {suite.name}: skipped: {reason}")
                continue
            if s.model and suite.name == "factors" and s.data_dir:  # the data folder's own [preprocess]
                from .data.factor_folder import read_config
                from .studies.factors import folder_preprocess

                suite = folder_preprocess(suite, read_config(s.resolve_path(s.data_dir)))  # type: ignore[arg-type]
            ref = audit.model(suite, model_names(s, suite)[0])
            no_layer = suite_layer_reason(suite, ref)
            if no_layer:  # the suite's own user_layer, which the --model lacks
                reasons[str(suite.root)] = no_layer[0]
                lines.append(f"invariance: suite {suite.name}: skipped: {no_layer[0]}")
                continue
            for layer in ref.layers:  # every selected layer must be a column, made this way
                src.check_run(sha256=ref.embedder.sha256 if s.model else None, layer=layer, pool=ref.pool,
                              preprocessing=ref.preprocess.to_dict() if s.model else None)
            if s.model:
                _check_widths(audit, suite, ref, src)
            _check_celeba_ids(audit, suite, src)
    except InvarianceError as exc:
        from .errors import StudyError

        raise pytest.UsageError(str(exc.cause if isinstance(exc, StudyError) else exc)) from None
    return reasons, lines


def _check_widths(audit: "Audit", suite: "Suite", ref: "ModelRef", src: "ParquetEmbeddings") -> None:
    """With --model, each layer's vectors must be as wide as the model's read-out of that layer:
    metadata can be copied, the width cannot lie (a mismatch would probe other numbers)."""
    from ._model_check import forward_probe
    from .errors import InvalidParameterError

    widths = forward_probe(audit, suite, ref)[1]  # the start-up probe's forward (None: the suite is skipped)
    for layer, width in (widths or {}).items():
        have = src.width(layer)
        if have != width:
            raise InvalidParameterError(
                f"--invariance-embeddings {src.path}: layer {layer!r} holds {have}-wide vectors but --model "
                f"{ref.embedder.path} reads {width} there (pool {ref.pool}); re-extract the shards with this "
                "model (pytest-invariance extract), or drop --model")


def _check_celeba_ids(audit: "Audit", suite: "Suite", src: "ParquetEmbeddings") -> None:
    """Every CelebA image a suite audits must have a row: one error now, not per study.

    Skipped when CelebA is not found (the suite skips with its own line) and with
    --invariance-skip-bad (which decodes every image first; the study checks then).
    The factors folder is checked where it is loaded, at collection (audits/factors/conftest.py).
    """
    from .errors import DatasetNotFoundError
    from .studies.faces import celeba_for_suite, find_celeba

    if "celeba" not in suite.config or audit.settings.skip_bad:
        return
    try:
        if find_celeba(audit.settings)[0] is None:
            return
    except DatasetNotFoundError:
        return  # a near-miss layout is the suite's one error
    for split, images in celeba_for_suite(audit, suite).items():
        src.check_images(images, f"{suite.name} CelebA {split}", unverified=audit.settings.embeddings_unverified)
