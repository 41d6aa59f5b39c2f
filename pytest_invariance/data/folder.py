"""Images in a folder plus one CSV of labels, streamed from disk.

The CSV has an ``image`` column (a path relative to the image folder) and any label
columns: binary attributes, continuous factors (yaw, blur level), identity. An optional
``split`` column (``train``/``val``/``test``) selects a split.

Both this loader and :mod:`.celeba` check the files up front and report every problem at
once: an image without a label row, a label row without an image, a row with the wrong
number of columns, an image whose header cannot be read. That is one :class:`DataError`
listing the first few and the count, or, with ``skip_bad=True``, the bad items are left
out and counted in ``n_skipped``. Decoding happens in ``__getitem__``, one image at a time.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from ..errors import DataError, DatasetNotFoundError, InvalidParameterError
from ._paths import folder_names
from ._source import ImageSet

if TYPE_CHECKING:
    import pandas as pd
    import torch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
_SHOW = 5


class FileImageSet(ImageSet):
    """Images decoded from files on demand, optionally cropped to a box, resized, RGB.

    Parameters
    ----------
    paths : sequence of Path
        One file per item, aligned with ``labels``.
    labels : DataFrame
        One row per item.
    size : (int, int) or None
        Output (H, W); None keeps each file's size (then items may differ in shape).
    boxes : array [N, 4] of (x, y, w, h), optional
        Crop box per item; the crop is the square of side ``max(w, h)`` around the box
        centre, so faces are not stretched; pixels outside the image are black.
    fingerprint : str
        Identifies files, labels and preprocessing (see :func:`files_fingerprint`).
    n_skipped : int
        How many bad items the loader left out.
    conversions : mapping, optional
        Images per conversion decoding makes (see :mod:`._decode`), for the report.
    data_digest : str, optional
        The data whatever the seed (:attr:`ImageSet.data_digest`); default the fingerprint,
        for a loader whose fingerprint holds no seed.

    Images are decoded by :func:`._decode.open_rgb`: EXIF orientation applied, any mode
    converted to RGB (transparency on white).
    """

    def __init__(self, paths: Sequence[Path], labels: "pd.DataFrame", *, size: tuple[int, int] | None,
                 fingerprint: str, boxes: np.ndarray | None = None, n_skipped: int = 0,
                 conversions: Mapping[str, int] | None = None, data_digest: str | None = None):
        self.paths = list(paths)
        self.labels = labels.reset_index(drop=True)
        self.size, self.boxes, self.n_skipped = size, boxes, n_skipped
        self.conversions = dict(conversions or {})
        self.fingerprint = fingerprint
        self.data_digest = data_digest

    def at_size(self, size: tuple[int, int] | None) -> "FileImageSet":
        """The same images decoded straight to ``size`` (H, W): one resampling from the
        file instead of two (the loader's size, then the model's). None: unchanged."""
        if size is None or tuple(size) == self.size:
            return self
        size = (int(size[0]), int(size[1]))
        fp = hashlib.sha256(f"{self.fingerprint}|size={size}".encode()).hexdigest()[:32]
        return FileImageSet(self.paths, self.labels, size=size, fingerprint=fp, boxes=self.boxes,
                            n_skipped=self.n_skipped, conversions=self.conversions,
                            data_digest=self.data_digest)  # the same data, read at the model's size

    def ids(self) -> list[str] | None:
        """CelebA's ``image_id`` (file name) or a labels.csv's ``image`` path, as written."""
        for col in ("image_id", "image"):
            if col in self.labels.columns:
                return [str(v) for v in self.labels[col]]
        return None

    def __getitem__(self, index: int) -> "torch.Tensor":
        import torch
        from PIL import Image

        from ._decode import open_rgb

        path = self.paths[index]
        try:
            with open_rgb(path) as im:
                if self.boxes is not None:
                    x, y, w, h = (float(v) for v in self.boxes[index])
                    side, cx, cy = max(w, h), x + w / 2, y + h / 2
                    im = im.crop((round(cx - side / 2), round(cy - side / 2),
                                  round(cx + side / 2), round(cy + side / 2)))
                if self.size is not None:
                    im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / np.float32(255)
        except (OSError, ValueError) as exc:  # PIL raises OSError for truncated/corrupt data
            raise DataError(f"{path}: cannot decode the image ({exc}); replace or delete the file "
                            "or pass --invariance-skip-bad (skip_bad=True in Python) to leave it out") from exc
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise InvalidParameterError(f"The 'size' parameter must be (height, width) of positive ints. Got {size!r}.")
    return int(size[0]), int(size[1])


def unreadable(files: dict[str, Path], decode: bool = False) -> dict[str, str]:
    """Items (name -> path) whose image header PIL cannot read (cheap), or with ``decode``
    whose pixels cannot be decoded (finds truncated files; a full decode of each)."""
    from ._decode import scan_images

    return scan_images(files, decode=decode).problems


# other names people give the three splits; said in the refusal, never read silently
_SPLIT_NAMES = {"training": "train", "trn": "train", "validation": "val", "valid": "val", "dev": "val",
                "development": "val", "eval": "val", "testing": "test", "tst": "test", "holdout": "test"}


def odd_splits(values: Iterable[str]) -> str | None:
    """One line naming the ``split`` values (lower-cased) outside train/val/test and how to write
    them, or None when there are none. A misnamed split is one column fault, not a row fault:
    as rows, 'validation' left the factors no val images and cascaded into a problem per factor.

    Examples
    --------
    >>> odd_splits(["train", "validation", "validation", "testing"])
    "column 'split' has value(s) outside train/val/test: 'validation' (2 rows), 'testing' (1 row); the accepted values are train, val and test (in any case): write val for 'validation' and test for 'testing'"
    """
    counts: dict[str, int] = {}
    for v in values:
        if v not in SPLITS:
            counts[v] = counts.get(v, 0) + 1
    if not counts:
        return None
    shown = ", ".join(f"{v!r} ({n} row{'s' if n > 1 else ''})" for v, n in list(counts.items())[:_SHOW])
    more = f" and {len(counts) - _SHOW} more" if len(counts) > _SHOW else ""
    known = [f"{_SPLIT_NAMES[v]} for {v!r}" for v in counts if v in _SPLIT_NAMES]
    how = f": write {' and '.join(known)}" if known else ""
    return (f"column 'split' has value(s) outside train/val/test: {shown}{more}; the accepted values are train, "
            f"val and test (in any case){how}")


def add_problems(problems: dict[str, str], names: Iterable[str], reason: str) -> None:
    """Record ``reason`` for each name, keeping the first reason found for an item."""
    for name in names:
        problems.setdefault(name, reason)


def raise_or_skip(where: str, problems: dict[str, str], skip_bad: bool, left: int | None = None) -> int:
    """Raise one DataError listing ``problems`` (item -> reason), or return their count when
    skipping; skipping that would leave no image (``left``: how many items remain) is refused too."""
    shown = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items())[:_SHOW])
    if problems and not skip_bad:
        raise DataError(f"{where}: {len(problems)} bad item(s), e.g. {shown}. Fix or remove them, "
                        "or pass --invariance-skip-bad (skip_bad=True in Python) to leave them out.")
    if problems and left == 0:
        raise DataError(f"{where}: leaving out the {len(problems)} bad item(s) leaves no image, e.g. {shown}; "
                        "fix them (--invariance-skip-bad only leaves a few bad images out)")
    return len(problems)


def header_problem(csv_path: Path, header: list[str], column: str, what: str) -> str:
    """Why a CSV header lacks ``column`` (``what`` describes it), in one line with the fix: the
    file uses another delimiter (the row read as one cell), the name is in other case, or
    else the columns it has."""
    must = f"{csv_path}: the header must contain {what}"
    if len(header) == 1:
        for sep, name in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in header[0]:
                return (f"{must}; its header is one cell, {header[0][:60]!r}: the file looks {name}-delimited; save it "
                        "comma-separated (with '.' as the decimal point)")
    near = [h for h in header if h.strip().lower() == column.lower()]
    if near:
        return f"{must}; got {near[0]!r}: name the column {column!r}"
    got = ", ".join(repr(h) for h in header[:8]) + (", ..." if len(header) > 8 else "") if header else "an empty file"
    return f"{must}; got {got}"


def _content_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).digest()


def file_digests(paths: Sequence[Path]) -> list[bytes]:
    """blake2b (16 bytes) of each file's bytes, in order: equal digests are byte-identical files."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # hashlib releases the GIL on file reads and hashing
        return list(pool.map(_content_digest, paths, chunksize=64))


def files_fingerprint(paths: Sequence[Path], label_files: Sequence[Path], *extra: object,
                      digests: Sequence[bytes] | None = None) -> str:
    """sha256 over each file's name and bytes (in order), the label files' bytes and ``extra``.

    The bytes, not sizes and mtimes: an image edited in place whose mtime is then
    restored (``cp -p``, ``rsync -a``, unpacking an archive) kept its cached embeddings
    and the audit reported the old images' figures. Reading every file costs I/O on each
    run (blake2b, 4 threads; docs/performance.md has the measured rate); data moved to
    another folder keeps its fingerprint. ``digests``: :func:`file_digests` of ``paths``,
    when the caller has read them already.
    """
    h = hashlib.sha256(repr(extra).encode())
    for p, digest in zip(paths, file_digests(paths) if digests is None else digests):
        h.update(p.name.encode() + b"|" + digest)
    for f in label_files:
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:32]


class ImageFiles(dict):  # type: ignore[type-arg]  # name -> Path
    """:func:`list_images`'s result: image path relative to the folder -> Path.

    Each real folder is listed under one name (the first the walk meets); a name through
    another link to it (``alias/x.png`` for ``b/x.png`` when ``alias -> b``) is found by
    :meth:`canonical`, and ``in`` / ``[]`` take it too. ``same_file`` maps each listed name of
    a file listed under several names (a symlink to a file, a hard link) to all of them."""

    same_file: dict[str, tuple[str, ...]]
    folder_alias: dict[str, str]  # another name of a folder -> the name it is listed under

    def canonical(self, name: str) -> str | None:
        """The listed name of the file ``name`` reaches (through folder links), or None."""
        for _ in range(name.count("/") + 1):  # each step maps a prefix into the walked tree
            if dict.__contains__(self, name):
                return name
            parts = name.split("/")
            hit = next((k for k in range(len(parts) - 1, 0, -1) if "/".join(parts[:k]) in self.folder_alias), None)
            if hit is None:
                return None
            name = "/".join([self.folder_alias["/".join(parts[:hit])], *parts[hit:]])
        return name if dict.__contains__(self, name) else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) is not None

    def __missing__(self, name: str) -> Path:
        found = self.canonical(name)
        if found is None:
            raise KeyError(name)
        return dict.__getitem__(self, found)  # type: ignore[no-any-return]

    def one_file(self, name: str) -> tuple[str, ...]:
        """What identifies the file ``name`` reaches: the same for all of its names."""
        c = self.canonical(name) or name
        return self.same_file.get(c, (c,))


def list_images(image_dir: Path) -> ImageFiles:
    """Image files below ``image_dir`` keyed by POSIX path relative to it.

    Symlinked subfolders are followed (datasets are often assembled from links to where
    the images are; skipping them would silently drop their rows). Each real folder
    (``st_dev``, ``st_ino``) is walked once, however many links lead to it (a DAG of links
    has exponentially many paths); its other names are kept in ``folder_alias``. A link to
    a folder that is already on the way down (a loop) is not entered. When links make one
    file reachable under several names in the folders walked, ``same_file`` says which (see
    :func:`unlabelled`)."""
    found, inode = ImageFiles(), {}
    found.folder_alias = {}
    root = os.stat(image_dir)
    walked = {(root.st_dev, root.st_ino): ""}
    stack = [(Path(image_dir), (), frozenset({(root.st_dev, root.st_ino)}))]
    while stack:
        folder, parts, on_path = stack.pop()
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            if e.is_dir():
                st = e.stat()
                key, name = (st.st_dev, st.st_ino), "/".join((*parts, e.name))
                if key in on_path:  # a loop
                    continue
                if key in walked:
                    found.folder_alias[name] = walked[key]
                    continue
                walked[key] = name
                stack.append((Path(e.path), (*parts, e.name), on_path | {key}))
            elif e.name.lower().endswith(IMAGE_SUFFIXES):
                name = "/".join((*parts, e.name))
                found[name] = Path(e.path)
                try:  # through links: a symlink and a hard link both lead to the file's inode
                    st = e.stat()
                    inode[name] = (st.st_dev, st.st_ino)
                except OSError:  # a broken link: reported when the image is read
                    pass
    groups: dict[tuple[int, int], list[str]] = {}
    for name, key in inode.items():
        groups.setdefault(key, []).append(name)
    found.same_file = {n: tuple(g) for g in groups.values() if len(g) > 1 for n in g}
    return found


def unlabelled(on_disk: ImageFiles, listed: set[str] | Mapping[str, object]) -> list[str]:
    """Names in ``on_disk`` with no label row. A file reached under several names has one
    when any of its names is ``listed`` (the labels name the link, or the target)."""
    labelled = {on_disk.one_file(n) for n in listed}
    return [n for n in on_disk if on_disk.one_file(n) not in labelled]


def aliased_rows(on_disk: ImageFiles, names: Iterable[str]) -> dict[str, str]:
    """Listed names that are the same file (through a link) as a name listed before them,
    mapped to that name: such an image would be embedded twice and could land in both the
    training and the test split."""
    first: dict[tuple[str, ...], str] = {}
    again = {}
    for n in names:
        if n in on_disk:
            if (group := on_disk.one_file(n)) in first:
                again[n] = first[group]
            else:
                first[group] = n
    return again


def refuse_aliases(on_disk: ImageFiles, names: Iterable[str], where: str) -> None:
    """Raise DataError when two listed names are one file (see :func:`aliased_rows`)."""
    if again := aliased_rows(on_disk, names):
        shown = "; ".join(f"{b} = {a}" for a, b in list(again.items())[:_SHOW])
        raise DataError(f"{where}: {len(again)} image(s) listed under two names that are the same file "
                        f"(a symbolic or hard link), e.g. {shown}; list each image once")


def _numeric(col: "pd.Series") -> "pd.Series":
    import pandas as pd

    try:
        return pd.to_numeric(col)
    except (ValueError, TypeError):
        return col


def load_image_folder(image_dir: str | os.PathLike[str], labels_csv: str | os.PathLike[str], split: str | None = None,
                      *, size: tuple[int, int] | None = (160, 160), image_column: str = "image",
                      skip_bad: bool = False) -> FileImageSet:
    """Load a folder of images labelled by one CSV.

    Parameters
    ----------
    image_dir : path
        Folder holding the images (subfolders allowed).
    labels_csv : path
        CSV with ``image_column`` (path relative to ``image_dir``), label columns and
        optionally ``split``. Numeric columns become numbers; others stay strings.
    split : {"train", "val", "test"}, optional
        Keep only rows whose ``split`` equals it; requires a ``split`` column.
    size : (int, int) or None
        Output (H, W); default (160, 160).
    image_column : str
        Name of the image path column.
    skip_bad : bool
        Leave out bad items instead of raising; their count is ``n_skipped``.

    Returns
    -------
    FileImageSet
        ``labels`` has ``image`` (the relative path) and every other CSV column, in file order.

    Raises
    ------
    DatasetNotFoundError
        When the folder or the CSV does not exist.
    DataError
        On bad items (see the module docstring), a missing image column, duplicate image
        names or a split value outside train/val/test.
    """
    import pandas as pd

    image_dir, labels_csv, size = Path(image_dir), Path(labels_csv), check_size(size)
    for p in (image_dir, labels_csv):
        if not p.exists():
            raise DatasetNotFoundError(f"{p} does not exist; point load_image_folder at your image folder and CSV")
    with labels_csv.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows or image_column not in rows[0]:
        raise DataError(header_problem(labels_csv, rows[0] if rows else [], image_column, f"a {image_column!r} column"))
    header, problems, good = rows[0], {}, []
    col = header.index(image_column)
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            # keyed by the image name when we can read it, so the image is not reported twice
            key = row[col] if len(row) > col else f"line {line}"
            problems[key] = f"line {line} has {len(row)} columns, expected {len(header)}"
        else:
            good.append(row)
    table = pd.DataFrame(good, columns=header).rename(columns={image_column: "image"})
    # ./img/x.png, /abs/DIR/img/x.png, img\x.png: the name the folder listing uses (one line if outside DIR)
    table["image"] = folder_names(table["image"], image_dir, str(labels_csv))
    dupes = table["image"][table["image"].duplicated()].tolist()
    if dupes:
        raise DataError(f"{labels_csv}: {len(dupes)} image(s) listed twice, e.g. {dupes[:_SHOW]}")
    on_disk = list_images(image_dir)
    refuse_aliases(on_disk, table["image"], f"{labels_csv}")
    add_problems(problems, (n for n in table["image"] if n not in on_disk), "label row without an image")
    add_problems(problems, unlabelled(on_disk, set(table["image"])), "image without a label row")
    if split is not None:
        if split not in SPLITS or "split" not in table:
            raise DataError(f"{labels_csv}: split={split!r} needs a 'split' column and one of {SPLITS}")
        table["split"] = table["split"].str.strip().str.lower()  # Train, VAL: the same splits
        odd = odd_splits(table["split"])
        if odd:
            raise DataError(f"{labels_csv}: {odd}")
        table = table[table["split"] == split]
    table = table[~table["image"].isin(problems)]
    from ._decode import scan_images

    scan = scan_images({name: on_disk[name] for name in table["image"]})
    problems.update(scan.problems)
    table = table[~table["image"].isin(problems)]
    n_skipped = raise_or_skip(f"{labels_csv}", problems, skip_bad, left=len(table))
    paths = [on_disk[name] for name in table["image"]]
    labels = table.apply(_numeric).reset_index(drop=True)
    fp = files_fingerprint(paths, [labels_csv], "folder", split, size, image_column)
    return FileImageSet(paths, labels, size=size, fingerprint=fp, n_skipped=n_skipped, conversions=scan.conversions)
