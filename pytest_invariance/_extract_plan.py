"""What ``pytest-invariance extract`` embeds: a suite's images or a folder, read out as the
audit reads them (model, layers in forward order, pool, preprocessing).

The audit session and the studies know which images a suite audits and how; this module
asks them and hands :mod:`pytest_invariance.embeddings._export` a finished
:class:`~pytest_invariance.embeddings._export.ExtractJob`, so that the embeddings stage
never imports the studies above it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DataError, InvalidParameterError

if TYPE_CHECKING:
    from ._audit import ModelRef
    from .data._source import ImageSet
    from .data.folder import ImageFiles
    from .embeddings._export import ExtractJob
    from .settings import Settings


def suite_job(settings: "Settings", suite_dir: Path, shard_rows: int) -> "ExtractJob":
    """The images a suite audits (CelebA splits, or the factors folder of --data-dir), read
    out as that suite reads them, so that ``--invariance-embeddings`` joins without a mismatch."""
    from ._audit import Audit, model_names, model_spec
    from .checks import Suite

    audit = Audit(settings)
    suite = Suite.find(suite_dir)
    if not suite.config:
        raise InvalidParameterError(f"--suite {suite_dir}: no invariance.toml there or above")
    if suite.section("suite").get("precomputed", True) is not True:
        raise InvalidParameterError(f"--suite {suite.name}: {suite.section('suite')['precomputed']}; nothing to extract")
    if suite.name == "factors":
        from .data.factor_folder import load_factor_folder
        from .studies.factors import folder_suite

        root = settings.resolve_path(settings.data_dir)
        if root is None:
            raise InvalidParameterError("--suite factors needs --data-dir DIR holding labels.csv and the images")
        folder = load_factor_folder(root, types=dict(settings.factor_type), seed=settings.seed,
                                    skip_bad=settings.skip_bad)
        suite, images = folder_suite(suite, folder), {"factors": folder.images}
    elif "celeba" in suite.config:
        from .studies.faces import celeba_for_suite

        images = dict(celeba_for_suite(audit, suite))
    else:
        raise InvalidParameterError(f"--suite {suite.name}: extract knows the images of CelebA suites and the factors "
                                    "suite; for other images pass --images DIR")
    ref = audit.model(suite, model_names(settings, suite)[0])
    spec = model_spec(settings) or ref.embedder.path
    return _job(settings, spec, ref, images, shard_rows, f"suite {suite.name}")  # type: ignore[arg-type]


def folder_job(settings: "Settings", image_dir: Path, shard_rows: int) -> "ExtractJob":
    """Every image under ``image_dir``; ids are paths relative to it (the factors suite's
    ``image`` column when ``image_dir`` is the data folder)."""
    import pandas as pd

    from ._audit import Audit, model_names, model_spec
    from .checks import Suite
    from .data.folder import FileImageSet, files_fingerprint, list_images

    if not settings.model:
        raise InvalidParameterError("--images needs --model")
    found = list_images(image_dir)
    if not found:
        raise DataError(f"--images {image_dir}: no image files below it")
    suite = Suite(name="images", root=image_dir)  # no suite: the model read as --model and --preprocess say
    ref = Audit(settings).model(suite, model_names(settings, suite)[0])
    size = ref.preprocess.size or tuple(ref.embedder.input_shape[1:])
    if None in size:
        raise InvalidParameterError(f"--images: {ref.embedder.path} has a dynamic input size; pass --preprocess size=HxW")
    names, again = one_name_per_file(found)
    paths = [found[n] for n in names]
    images = FileImageSet(paths, pd.DataFrame({"image": names}), size=size,  # type: ignore[arg-type]
                          fingerprint=files_fingerprint(paths, [], "extract", size))
    job = _job(settings, model_spec(settings), ref, {"images": images}, shard_rows,  # type: ignore[arg-type]
               f"folder {image_dir}")
    job.notes = link_notes(found, again)
    return job


def one_name_per_file(found: "ImageFiles") -> tuple[list[str], dict[str, str]]:
    """``(names, again)``: one name per distinct file of ``found`` (the first in sorted order),
    and each other name of a file (a hard link, a symbolic link to a file) -> the name kept."""
    first: dict[tuple[str, ...], str] = {}
    again = {}
    for n in sorted(found):
        kept = first.setdefault(found.one_file(n), n)
        if kept != n:
            again[n] = kept
    return sorted(first.values()), again


def link_notes(found: "ImageFiles", again: dict[str, str]) -> list[str]:
    """What ``extract --images`` says about the links it met: each file is extracted once,
    under one id."""
    notes = []
    if again:
        shown = ", ".join(f"{a} = {k}" for a, k in list(again.items())[:3])
        notes.append(f"extract: {len(again)} image name(s) are another name of a file already extracted (a hard link "
                     f"or a symbolic link to a file), left out: its row's id is the first name, e.g. {shown}")
    if found.folder_alias:
        shown = ", ".join(f"{a} -> {k or '.'}" for a, k in list(found.folder_alias.items())[:3])
        notes.append(f"extract: {len(found.folder_alias)} linked folder(s) lead to a folder read under another "
                     f"name, so their images are extracted once, under that name, e.g. {shown}")
    return notes


def _job(settings: "Settings", spec: str, ref: "ModelRef", images: dict[str, "ImageSet"], shard_rows: int,
         dataset: str) -> "ExtractJob":
    """The job for ``ref``'s layers: the audit's selection (``--layer``, repeatable), in forward order."""
    from .embeddings._export import ExtractJob
    from .embeddings._extract import decoded_at
    from .embeddings._parquet import ShardMeta

    images = {k: decoded_at(v, ref.preprocess) for k, v in images.items()}  # as the audit decodes them
    layers = list(ref.layers)
    meta = ShardMeta(ref.embedder.sha256, tuple(layers), ref.pool, ref.preprocess.to_dict(), ref.name,
                     {"dataset": dataset, "ids": "CelebA image_id or the image path relative to the data folder"})
    return ExtractJob(settings, spec, layers, ref.preprocess, ref.pool, images, meta, shard_rows)
