"""CelebA in its released layout, streamed from disk.

Expected under ``data_dir`` (the names of the official release):

- ``img_align_celeba/`` (aligned 178x218 crops), or ``img_celeba/`` plus
  ``list_bbox_celeba.txt`` (in-the-wild images, cropped here to a square around the box);
- ``list_attr_celeba.txt``: a count line, a header of the 40 attribute names, then
  ``image_id`` and 40 values of -1/1 per line;
- ``list_eval_partition.txt``: ``image_id 0|1|2`` for train/val/test;
- optional ``list_landmarks_align_celeba.txt`` (count, header of 10 names, rows) and
  ``pose.csv`` (``image_id,yaw,pitch,roll`` in degrees, e.g. HyperFace estimates as in the
  paper's Sec. 3.2; CelebA itself ships no pose).

Problems are reported as in :mod:`.folder`: one :class:`DataError` or ``skip_bad=True``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DataError, DatasetNotFoundError, InvalidParameterError
from .folder import FileImageSet, add_problems, check_size, files_fingerprint, list_images, raise_or_skip, unreadable

ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)
SPLITS = {"train": "0", "val": "1", "test": "2"}
POSE_COLUMNS = ("yaw", "pitch", "roll")
ATTR_FILE, PARTITION_FILE = "list_attr_celeba.txt", "list_eval_partition.txt"
BBOX_FILE, LANDMARK_FILE, POSE_FILE = "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt", "pose.csv"


def _table(path: Path, problems: dict[str, str], *, head: int, width: int | None = None,
           sep: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Read ``head`` leading lines (the last is the header) and rows into (header, {image_id: values}).

    Bad rows go to ``problems``. CelebA's lists use runs of spaces; their header omits the
    image_id column. The count line is not trusted: a truncated or padded file shows up as
    unmatched images or rows.
    """
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < head:
        raise DataError(f"{path}: expected {head} header line(s) before the rows")
    header = (lines[head - 1].split(sep) if sep else lines[head - 1].split()) if head else []
    if sep:  # pose.csv names its image_id column; the CelebA lists do not
        header = [h.strip() for h in header[1:]]
    width = width if width is not None else len(header)
    rows: dict[str, list[str]] = {}
    for i, line in enumerate(lines[head:], start=head + 1):
        parts = [p.strip() for p in line.split(sep)] if sep else line.split()
        if len(parts) != width + 1:
            problems.setdefault(parts[0], f"{path.name} line {i} has {len(parts)} columns, expected {width + 1}")
        elif parts[0] in rows:
            problems.setdefault(parts[0], f"{path.name} lists it twice")
        else:
            rows[parts[0]] = parts[1:]
    return header, rows


def _image_source(data_dir: Path) -> tuple[Path, bool]:
    if (data_dir / "img_align_celeba").is_dir():
        return data_dir / "img_align_celeba", False
    if (data_dir / "img_celeba").is_dir() and (data_dir / BBOX_FILE).is_file():
        return data_dir / "img_celeba", True
    raise DatasetNotFoundError(
        f"{data_dir}: no CelebA images; expected img_align_celeba/ (or img_celeba/ with {BBOX_FILE}). "
        "CelebA cannot be downloaded at run time: get it from the authors' page and unpack it there"
    )


def load_celeba(data_dir: str | os.PathLike[str], split: str, *, size: tuple[int, int] | None = (160, 160),
                skip_bad: bool = False, check_images: bool = True) -> FileImageSet:
    """Load one CelebA split, images decoded lazily.

    Parameters
    ----------
    data_dir : path
        Folder with the CelebA files (see the module docstring).
    split : {"train", "val", "test", "all"}
        Partition from ``list_eval_partition.txt``.
    size : (int, int) or None
        Output (H, W); default (160, 160), FaceNet's input.
    skip_bad : bool
        Leave out bad items instead of raising; their count is ``n_skipped``.
    check_images : bool
        Read every image header of the split up front (measured 0.25 ms per file with a warm
        disk cache, ~5 s for the 19,962 test images) so a corrupt file is reported now, not
        mid-extraction. Truncated pixel data still only shows when the item is decoded.

    Returns
    -------
    FileImageSet
        ``labels``: ``image_id``, ``split``, the 40 attributes as 0/1 int64, then the 10
        landmark columns and ``yaw``, ``pitch``, ``roll`` (float degrees) when those files exist.

    Raises
    ------
    DatasetNotFoundError
        When images or a required list file are missing.
    DataError
        On bad or misaligned items: image without labels, labels without image, wrong
        column count, values other than -1/1, unreadable image header.
    """
    import pandas as pd

    data_dir, size = Path(data_dir), check_size(size)
    if split != "all" and split not in SPLITS:
        raise InvalidParameterError(f"The 'split' parameter must be one of {[*SPLITS, 'all']}. Got {split!r}.")
    image_dir, crop = _image_source(data_dir)
    for name in (ATTR_FILE, PARTITION_FILE):
        if not (data_dir / name).is_file():
            raise DatasetNotFoundError(f"{data_dir / name} is missing; it comes with the CelebA release")
    problems: dict[str, str] = {}
    header, attrs = _table(data_dir / ATTR_FILE, problems, head=2)
    if tuple(header) != ATTRIBUTES:
        raise DataError(f"{data_dir / ATTR_FILE}: header is not CelebA's 40 attribute names: {header[:5]}...")
    for image_id, values in attrs.items():
        if any(v not in ("1", "-1") for v in values):
            problems.setdefault(image_id, f"{ATTR_FILE} has values other than -1/1")
    _, parts = _table(data_dir / PARTITION_FILE, problems, head=0, width=1)
    extra = _optional_tables(data_dir, crop, problems)

    on_disk = list_images(image_dir)
    add_problems(problems, (i for i in attrs if i not in on_disk), "label row without an image")
    add_problems(problems, (i for i in on_disk if i not in attrs), f"image without a row in {ATTR_FILE}")
    add_problems(problems, (i for i in attrs if i not in parts), f"missing from {PARTITION_FILE}")
    for name, (_, rows) in extra.items():
        add_problems(problems, (i for i in attrs if i not in rows), f"missing from {name}")
        add_problems(problems, (i for i in rows if i not in attrs), f"{name} row without an image")
    # Only items of this split (or of no known split) are checked and counted.
    wanted = set(SPLITS.values()) if split == "all" else {SPLITS[split]}
    keep = [i for i in attrs if parts.get(i, [None])[0] in wanted]
    if check_images:
        problems.update(unreadable({i: on_disk[i] for i in keep if i not in problems}))
    problems = {k: v for k, v in problems.items() if parts.get(k, [None])[0] in wanted | {None}}
    n_skipped = raise_or_skip(f"CelebA at {data_dir} ({split})", problems, skip_bad)
    keep = [i for i in keep if i not in problems]

    labels = pd.DataFrame(np.array([attrs[i] for i in keep], dtype=np.int64).reshape(-1, 40) > 0,
                          columns=list(ATTRIBUTES)).astype(np.int64)
    inverse = {v: k for k, v in SPLITS.items()}
    labels.insert(0, "split", [inverse[parts[i][0]] for i in keep])
    labels.insert(0, "image_id", keep)
    boxes = None
    for name, (cols, rows) in extra.items():
        values = np.array([rows[i] for i in keep], dtype=np.float64).reshape(-1, len(cols))
        if name == BBOX_FILE:
            boxes = values
        else:
            labels[list(cols)] = values
    paths = [on_disk[i] for i in keep]
    label_files = [data_dir / n for n in (ATTR_FILE, PARTITION_FILE, *extra)]
    fp = files_fingerprint(paths, label_files, "celeba", split, size, crop)
    return FileImageSet(paths, labels, size=size, boxes=boxes, fingerprint=fp, n_skipped=n_skipped)


def _optional_tables(data_dir: Path, crop: bool, problems: dict[str, str]) -> dict[str, tuple[list[str], dict]]:
    """Boxes (when cropping), aligned landmarks (when not) and pose, each only if its file exists."""
    out: dict[str, tuple[list[str], dict]] = {}
    if crop:
        # the header names image_id too, so only the last four names are columns
        header, rows = _table(data_dir / BBOX_FILE, problems, head=2, width=4)
        out[BBOX_FILE] = (header[-4:], rows)
    elif (data_dir / LANDMARK_FILE).is_file():
        out[LANDMARK_FILE] = _table(data_dir / LANDMARK_FILE, problems, head=2, width=10)
    if (data_dir / POSE_FILE).is_file():
        header, rows = _table(data_dir / POSE_FILE, problems, head=1, sep=",")
        if tuple(header) != POSE_COLUMNS:
            raise DataError(f"{data_dir / POSE_FILE}: header must be image_id,yaw,pitch,roll; got {header}")
        out[POSE_FILE] = (header, rows)
    return out


def attribute_groups() -> dict[str, list[str]]:
    """The paper's Fig. 2 grouping of the 40 attributes (our reading of its text).

    Returns
    -------
    dict
        ``identity_dependent``, ``identity_correlated``, ``identity_independent`` -> names.

    Examples
    --------
    >>> groups = attribute_groups()
    >>> "Smiling" in groups["identity_independent"], sum(map(len, groups.values()))
    (True, 40)
    """
    import json
    from importlib import resources

    text = resources.files(__package__).joinpath("celeba_attribute_groups.json").read_text(encoding="utf-8")
    return {k: list(v) for k, v in json.loads(text)["groups"].items()}
