"""CelebA in its released layout, streamed from disk.

Expected under ``data_dir`` (the names of the official release):

- ``img_align_celeba/`` (aligned crops, 178x218 in the release), or ``img_celeba/`` plus
  ``list_bbox_celeba.txt`` (in-the-wild images, cropped here to a square around the box);
- ``list_attr_celeba.txt``: a count line, a header of the 40 attribute names, then
  ``image_id`` and 40 values of -1/1 per line;
- ``list_eval_partition.txt``: ``image_id 0|1|2`` for train/val/test;
- optional ``list_landmarks_align_celeba.txt`` (count, header of 10 names, rows) and
  ``pose.csv`` (``image_id,yaw,pitch,roll`` in degrees, e.g. HyperFace estimates as in the
  paper's Sec. 3.2; CelebA itself ships no pose).

The widely mirrored copy is accepted too: every list as ``.csv`` (a header row starting
with ``image_id``; attributes as -1/1 or 0/1, one convention per file) and the images one
folder deeper, ``img_align_celeba/img_align_celeba/`` (any chain of single subfolders is
followed). A layout that is close but unusable (a zip not unpacked, lists without
images, images under other names) raises one :class:`DatasetNotFoundError` saying
"found X; expected Y"; a folder with nothing of CelebA in it is simply "not CelebA".

Problems are reported as in :mod:`.folder`: one :class:`DataError` or ``skip_bad=True``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, DatasetNotFoundError, InvalidParameterError
from ._decode import scan_images
from ._paths import folder_names
from .folder import (FileImageSet, add_problems, check_size, files_fingerprint, list_images, raise_or_skip,
                     refuse_aliases, unlabelled)

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
BBOX_COLUMNS = ("x_1", "y_1", "width", "height")
_SHOW = 5
ATTR_FILE, PARTITION_FILE = "list_attr_celeba.txt", "list_eval_partition.txt"
BBOX_FILE, LANDMARK_FILE, POSE_FILE = "list_bbox_celeba.txt", "list_landmarks_align_celeba.txt", "pose.csv"
ALIGNED_SIZE = (178, 218)  # (width, height) of the release's aligned images
EXPECTED = ("img_align_celeba/ (or img_celeba/ + list_bbox_celeba), list_attr_celeba and "
            "list_eval_partition as .txt or .csv")


def _table(path: Path, problems: dict[str, str], *, head: int, width: int | None = None,
           sep: str | None = None, images: Path | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """Read ``head`` leading lines (the last is the header) and rows into (header, {image_id: values}).

    Bad rows go to ``problems``. CelebA's lists use runs of spaces; their header omits the
    image_id column. The count line is not trusted: a truncated or padded file shows up as
    unmatched images or rows. With ``images`` (the image folder), each image_id is the name
    the folder listing uses (``./000001.jpg``, an absolute path inside it; see :mod:`._paths`).
    """
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if len(lines) < head:
        raise DataError(f"{path}: expected {head} header line(s) before the rows")
    header = (lines[head - 1].split(sep) if sep else lines[head - 1].split()) if head else []
    if sep:  # pose.csv names its image_id column; the CelebA lists do not
        header = [h.strip() for h in header[1:]]
    width = width if width is not None else len(header)
    rows: dict[str, list[str]] = {}
    body = [[p.strip() for p in line.split(sep)] if sep else line.split() for line in lines[head:]]
    if images is not None:
        for parts, name in zip(body, folder_names((b[0] for b in body), images, str(path))):
            parts[0] = name
    for i, parts in enumerate(body, start=head + 1):
        if len(parts) != width + 1:
            problems.setdefault(parts[0], f"{path.name} line {i} has {len(parts)} columns, expected {width + 1}")
        elif parts[0] in rows:
            problems.setdefault(parts[0], f"{path.name} lists it twice")
        else:
            rows[parts[0]] = parts[1:]
    return header, rows


@dataclass(frozen=True)
class CelebALayout:
    """Where the parts of one CelebA copy are: the image folder and each list file."""

    root: Path
    images: Path
    wild: bool  # img_celeba/ (in-the-wild, cropped by list_bbox_celeba) instead of aligned images
    lists: dict[str, Path]  # canonical .txt name -> the file found (.txt or .csv)

    def list_path(self, name: str) -> Path | None:
        return self.lists.get(name)


def _list_file(root: Path, name: str) -> Path | None:
    for p in (root / name, root / (name[:-4] + ".csv")):
        if p.is_file():
            return p
    return None


def _descend(folder: Path) -> Path:
    """Follow a chain of single subfolders holding no images (an archive unpacked into itself)."""
    from .folder import IMAGE_SUFFIXES

    for _ in range(4):
        entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        dirs = [e for e in entries if e.is_dir()]
        if len(dirs) != 1 or any(e.suffix.lower() in IMAGE_SUFFIXES for e in entries if e.is_file()):
            return folder
        folder = dirs[0]
    return folder


def locate_celeba(root: str | os.PathLike[str]) -> CelebALayout | None:
    """The CelebA parts under ``root``; None when nothing of CelebA is there.

    Raises
    ------
    DatasetNotFoundError
        When part of CelebA is there but the copy cannot be used, as "found X; expected Y".
    """
    root = Path(root)
    if not root.is_dir():
        return None
    lists = {n: p for n in (ATTR_FILE, PARTITION_FILE, BBOX_FILE, LANDMARK_FILE) if (p := _list_file(root, n))}
    if (root / POSE_FILE).is_file():
        lists[POSE_FILE] = root / POSE_FILE
    aligned, wild = root / "img_align_celeba", root / "img_celeba"
    zips = [p.name for p in root.glob("img*celeba*.zip")] + [p.name for p in root.glob("img*celeba*.7z")]
    if not lists and not aligned.is_dir() and not wild.is_dir() and not zips:
        return None
    where = f"CelebA at {root} (--invariance-data-dir)"
    found = ", ".join(sorted([p.name for p in lists.values()] + [d.name + "/" for d in (aligned, wild) if d.is_dir()]
                             + zips)) or "nothing usable"
    if aligned.is_dir():
        images, is_wild = _descend(aligned), False
    elif wild.is_dir() and BBOX_FILE in lists:
        images, is_wild = _descend(wild), True
    elif wild.is_dir():
        raise DatasetNotFoundError(f"{where}: found {found}; expected list_bbox_celeba.txt (or .csv) "
                                   "next to img_celeba/ to crop the in-the-wild images, or img_align_celeba/")
    else:
        hint = f" (unpack {zips[0]} there)" if zips else ""
        raise DatasetNotFoundError(f"{where}: found {found}; expected an image folder img_align_celeba/"
                                   f"{hint}")
    missing = [n[:-4] for n in (ATTR_FILE, PARTITION_FILE) if n not in lists]
    if missing:
        raise DatasetNotFoundError(f"{where}: found {found}; expected {' and '.join(missing)} "
                                   "(.txt or .csv) next to the image folder")
    # checked here, where the suites look for CelebA once, so a bad header is one error, not one per test
    problem = header_problem(_attribute_names(lists[ATTR_FILE]), ATTRIBUTES, "CelebA's 40 attribute names")
    if problem:
        raise DatasetNotFoundError(f"{where}: {lists[ATTR_FILE].name}: {problem}")
    return CelebALayout(root, images, is_wild, lists)


def _attribute_names(path: Path) -> list[str]:
    """The attribute names of list_attr_celeba's header: the .txt's second line, or the .csv's
    first after image_id (a file too short for a header gives none)."""
    with path.open(encoding="utf-8") as f:
        lines = [ln for ln in (f.readline() for _ in range(2)) if ln.strip()]
    if path.suffix.lower() == ".csv":
        return [h.strip() for h in lines[0].split(",")[1:]] if lines else []
    return lines[1].split() if len(lines) > 1 else []


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
    layout = locate_celeba(data_dir)
    if layout is None:
        raise DatasetNotFoundError(
            f"{data_dir}: no CelebA; expected {EXPECTED}. CelebA cannot be downloaded at run time: "
            "get it from the authors' page (or a mirror) and unpack it there")
    problems: dict[str, str] = {}
    attr_path, part_path = layout.lists[ATTR_FILE], layout.lists[PARTITION_FILE]
    header, attrs = _read_list(attr_path, problems, txt_head=2, images=layout.images)
    attrs = _by_name(attr_path, header, attrs, ATTRIBUTES, "CelebA's 40 attribute names")
    _check_attribute_values(attr_path, attrs, problems)
    _, parts = _read_list(part_path, problems, txt_head=0, width=1, images=layout.images)
    extra = _optional_tables(layout, problems)

    on_disk = list_images(layout.images)
    _check_names(layout, attr_path, attrs, on_disk)
    add_problems(problems, (i for i in attrs if i not in on_disk), "label row without an image")
    refuse_aliases(on_disk, attrs, f"{attr_path}")
    add_problems(problems, unlabelled(on_disk, attrs), f"image without a row in {attr_path.name}")
    add_problems(problems, (i for i in attrs if i not in parts), f"missing from {part_path.name}")
    for name, (_, rows) in extra.items():
        add_problems(problems, (i for i in attrs if i not in rows), f"missing from {layout.lists[name].name}")
        add_problems(problems, (i for i in rows if i not in attrs), f"{layout.lists[name].name} row without an image")
    # Only items of this split (or of no known split) are checked and counted.
    wanted = set(SPLITS.values()) if split == "all" else {SPLITS[split]}
    keep = [i for i in attrs if parts.get(i, [None])[0] in wanted]
    scan = scan_images({i: on_disk[i] for i in keep if i not in problems}) if check_images else None
    if scan is not None:
        problems.update(scan.problems)
    problems = {k: v for k, v in problems.items() if parts.get(k, [None])[0] in wanted | {None}}
    n_skipped = raise_or_skip(f"CelebA at {data_dir} ({split})", problems, skip_bad,
                              left=sum(i not in problems for i in keep))
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
    if scan is not None:  # upright (width, height) of each image, for crop boxes given in another frame
        labels["image_width"] = np.array([scan.sizes[i][0] for i in keep], dtype=np.int64)
        labels["image_height"] = np.array([scan.sizes[i][1] for i in keep], dtype=np.int64)
    paths = [on_disk[i] for i in keep]
    label_files = [attr_path, part_path, *(layout.lists[n] for n in extra)]
    fp = files_fingerprint(paths, label_files, "celeba", split, size, layout.wild)
    return FileImageSet(paths, labels, size=size, boxes=boxes, fingerprint=fp, n_skipped=n_skipped,
                        conversions=dict(scan.conversions) if scan is not None else None)


def _read_list(path: Path, problems: dict[str, str], *, txt_head: int, width: int | None = None,
               images: Path | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """A list file as released (.txt, runs of spaces) or as mirrored (.csv with an image_id header)."""
    if path.suffix.lower() == ".csv":
        return _table(path, problems, head=1, width=width, sep=",", images=images)
    header, rows = _table(path, problems, head=txt_head, width=width, images=images)
    return (header[-width:] if width and header else header), rows


def header_problem(header: Sequence[str], expected: Sequence[str], what: str) -> str | None:
    """Why ``header`` is not ``expected`` in some order (names missing, unexpected or given
    twice), in a few words; None when it is (a file read by name needs no fixed order)."""
    if sorted(header) == sorted(expected) and len(set(header)) == len(header):
        return None
    missing = [h for h in expected if h not in header]
    extra = [h for h in header if h not in expected]
    twice = sorted({h for h in header if list(header).count(h) > 1})
    parts = [f"{label} {', '.join(names[:_SHOW])}{' ...' if len(names) > _SHOW else ''}"
             for label, names in (("missing", missing), ("not CelebA's", extra), ("given twice", twice)) if names]
    return f"the header must name {what} (any order); {'; '.join(parts)}"


def _by_name(path: Path, header: Sequence[str], rows: dict[str, list[str]], expected: Sequence[str],
             what: str) -> dict[str, list[str]]:
    """``rows`` with their values in ``expected``'s order, read by the header's names (pandas and
    SQL exports reorder columns); raises DataError when the names are not ``expected``'s."""
    if tuple(header) == tuple(expected):
        return rows
    problem = header_problem(header, expected, what or ",".join(expected))
    if problem:
        raise DataError(f"{path}: {problem}")
    order = [list(header).index(h) for h in expected]
    return {k: [v[j] for j in order] for k, v in rows.items()}


def _check_attribute_values(path: Path, attrs: dict[str, list[str]], problems: dict[str, str]) -> None:
    """-1/1 (the release) or 0/1 (some mirrors), one convention per file; 0 with -1 is ambiguous."""
    seen = {v for values in attrs.values() for v in values}
    if "0" in seen and "-1" in seen:
        raise DataError(f"{path}: found attribute values 0 and -1 in one file; expected -1/1 (the release) "
                        "or 0/1 (mirrors), not both")
    allowed = ("0", "1") if "0" in seen else ("-1", "1")
    for image_id, values in attrs.items():
        if any(v not in allowed for v in values):
            problems.setdefault(image_id, f"{path.name} has values other than {'/'.join(allowed)}")


def _check_names(layout: CelebALayout, attr_path: Path, attrs: dict[str, list[str]], on_disk: dict[str, Path]) -> None:
    """Images under other names than the lists use (another extension, a deeper folder): say so once."""
    if not attrs or any(i in on_disk for i in attrs):
        return
    listed, where = next(iter(attrs)), f"CelebA at {layout.root} (--invariance-data-dir)"
    if not on_disk:
        raise DatasetNotFoundError(f"{where}: found no images in {layout.images}; expected "
                                   f"files named as in {attr_path.name}, e.g. {listed}")
    stem = Path(listed).stem  # show the file the first label row means, if it is there under another name
    example = next((p for k, p in sorted(on_disk.items()) if p.stem == stem), on_disk[min(on_disk)])
    raise DatasetNotFoundError(
        f"{where}: found images such as {example.relative_to(layout.root).as_posix()}; expected "
        f"{(layout.images / listed).relative_to(layout.root).as_posix()} as named in {attr_path.name}")


def _optional_tables(layout: CelebALayout, problems: dict[str, str]) -> dict[str, tuple[list[str], dict]]:
    """Boxes (when cropping), aligned landmarks (when not) and pose, each only if its file exists."""
    out: dict[str, tuple[list[str], dict]] = {}
    if layout.wild:
        # the .txt header names image_id too, so only the last four names are columns
        header, rows = _read_list(layout.lists[BBOX_FILE], problems, txt_head=2, width=4, images=layout.images)
        if sorted(header) == sorted(BBOX_COLUMNS):  # another order: read by name (other names: as given)
            header, rows = list(BBOX_COLUMNS), _by_name(layout.lists[BBOX_FILE], header, rows, BBOX_COLUMNS, "")
        out[BBOX_FILE] = (header, rows)
    elif LANDMARK_FILE in layout.lists:
        out[LANDMARK_FILE] = _read_list(layout.lists[LANDMARK_FILE], problems, txt_head=2, width=10,
                                        images=layout.images)
    if POSE_FILE in layout.lists:
        header, rows = _table(layout.lists[POSE_FILE], problems, head=1, sep=",", images=layout.images)
        rows = _by_name(layout.lists[POSE_FILE], header, rows, POSE_COLUMNS, "image_id,yaw,pitch,roll")
        out[POSE_FILE] = (list(POSE_COLUMNS), rows)
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
