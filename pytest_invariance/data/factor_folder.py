"""A user's own labelled images: a folder, a ``labels.csv`` and optionally an ``invariance.toml``.

The CSV has an ``image`` column (path relative to the folder), optionally ``split``
(train/val/test) and ``identity``, and any number of factor columns. Each factor gets a
type (binary, categorical, continuous) inferred from its values or given by the
folder's ``invariance.toml`` ``[factors]`` table / ``--invariance-factor-type``, and an
empty cell means "unknown for this image" (that image is left out for that factor only).

Every problem is gathered before anything is raised, so a bad folder gives ONE
:class:`DataError` listing all of them (see :func:`load_factor_folder`).
"""
from __future__ import annotations

import csv
import math
import re
from collections import Counter
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DataError, DatasetNotFoundError
from ._decode import scan_images
from ._paths import folder_names
from .folder import (FileImageSet, aliased_rows, file_digests, files_fingerprint, header_problem, list_images,
                     odd_splits, unlabelled)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TYPES = ("binary", "categorical", "continuous", "ignore")
RESERVED = ("image", "split", "identity")
SPLITS = ("train", "val", "test")
MISSING = frozenset({"", "na", "n/a", "nan", "null"})  # not "none": a real level ("glasses: none")
UNKNOWN_KEY = "unknown"  # [data] unknown = [...] in invariance.toml: the cell spellings read as unknown
_DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+")
TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "y", "present"), ("0", "-1", "false", "no", "n", "absent")
MAX_LEVELS = 20        # more string levels than this is not a categorical factor
AMBIGUOUS_LEVELS = 10  # a numeric column with 3..10 distinct values may be codes or amounts
MIN_PER_CLASS = 10     # per level, over the whole folder
MIN_PER_SPLIT = 2      # per level and split: a probe needs both classes in train, val and test
FRACTIONS = (0.6, 0.2, 0.2)
TYPE_OPTION = "--invariance-factor-type"
_SHOW = 5


@dataclass(frozen=True)
class Factor:
    """One factor column.

    ``values`` is float per image: binary 0/1, categorical the level's code (index into
    ``levels``), continuous the number; NaN where the cell was empty.
    """

    name: str
    type: str
    values: np.ndarray
    levels: tuple[str, ...] = ()
    inferred: bool = True
    positive: str | None = None  # binary: the level counted as "present"
    # non-empty cells read as unknown by their spelling ({'NA': 12}): left out of this factor, and
    # said in the run's notes, since a level may be named so (North America, "not applicable")
    spelled_unknown: dict[str, int] = field(default_factory=dict)

    @property
    def known(self) -> np.ndarray:
        return ~np.isnan(self.values)

    def level_of(self) -> np.ndarray:
        """Level name per image ('' where unknown); for factors that have levels."""
        out = np.full(len(self.values), "", dtype=object)
        out[self.known] = [self.levels[int(v)] for v in self.values[self.known]]
        return out


DEFAULT_SIZE = (160, 160)  # (H, W) images are decoded at when [data] size is not set


@dataclass
class FactorFolder:
    """A loaded folder: images, factors, the split and the folder's own config."""

    root: Path
    images: FileImageSet
    factors: dict[str, Factor]
    split: np.ndarray            # 'train' / 'val' / 'test' per image
    split_source: str            # 'column', 'seeded', 'seeded, identity-disjoint'
    identity: np.ndarray | None  # identity per image (strings), or None
    config: dict[str, Any] = field(default_factory=dict)
    n_skipped: int = 0
    copies: int = 0  # images byte-identical to another listed image (kept on its side of the split)
    # the bootstrap's resampling unit per image [n]: the identity, joined with byte-identical
    # copies (a test image and its copy are one draw, not two); None: each image its own
    clusters: np.ndarray | None = None


def read_config(root: Path) -> dict[str, Any]:
    path = root / "invariance.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: not valid TOML ({exc})") from None


class _Problems:
    """Row problems (skippable: the image is left out) and column problems (never skippable)."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}
        self.columns: list[str] = []
        self.worded: list[str] = []  # column problems whose own words say the fix (no option fixes them)

    def row(self, key: str, reason: str) -> None:
        self.rows.setdefault(key, reason)

    def summary(self) -> str:
        """The row problems in one line: each reason with its count and first image."""
        by_reason: dict[str, list[str]] = {}
        for key, reason in sorted(self.rows.items()):
            by_reason.setdefault(reason, []).append(key)
        return "; ".join(f"{reason}: {len(keys)} (e.g. {keys[0]})" for reason, keys in by_reason.items())

    def message(self, where: Path) -> str:
        by_reason: dict[str, list[str]] = {}
        for key, reason in sorted(self.rows.items()):
            by_reason.setdefault(reason, []).append(key)
        # one problem per kind of row problem (each line counts its images) and per column problem
        lines = [f"{where}: {len(by_reason) + len(self.columns) + len(self.worded)} problem(s):"]
        for reason, keys in by_reason.items():
            more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
            lines.append(f"  - {reason}: {len(keys)} image(s): {', '.join(keys[:_SHOW])}{more}")
        lines += [f"  - {c}" for c in self.columns + self.worded]
        fixes = []
        if self.rows:
            fixes.append("fix or remove those rows, or pass --invariance-skip-bad to leave those images out")
        if self.columns:
            fixes.append(f"fix the columns, or pass {TYPE_OPTION} COL=TYPE (binary|categorical|continuous|ignore)")
        text = "; ".join(fixes)
        return "\n".join(lines) + ("\n" + text[:1].upper() + text[1:] + "." if text else "")


def _read_rows(csv_path: Path, problems: _Problems) -> tuple[list[str], list[list[str]]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f)]
    if not rows or "image" not in [h.strip() for h in rows[0]]:
        raise DataError(header_problem(csv_path, rows[0] if rows else [], "image",
                                       f"an 'image' column (path relative to {csv_path.parent})"))
    header = [h.strip() for h in rows[0]]
    unnamed = [i + 1 for i, h in enumerate(header) if not h]
    if unnamed:
        problems.columns.append(f"column(s) {unnamed} of the header have no name; name them or remove them")
    dupes = sorted({h for h in header if header.count(h) > 1 and h})
    if dupes:
        problems.columns.append(f"column name(s) {dupes} appear more than once in the header")
    col, good, seen = header.index("image"), [], set()
    # ./img/x.png, /abs/DIR/img/x.png, img\x.png: the name the folder listing uses (one line if outside DIR)
    names = folder_names((r[col] if len(r) > col else "" for r in rows[1:]), csv_path.parent, str(csv_path))
    for line, (row, name) in enumerate(zip(rows[1:], names), start=2):
        if not any(c.strip() for c in row):
            continue
        key = name or f"line {line}"
        if len(row) != len(header):
            problems.row(key, f"wrong number of columns (expected {len(header)})")
        elif key in seen:
            problems.row(key, "listed twice")
        else:
            seen.add(key)
            good.append([name if j == col else c.strip() for j, c in enumerate(row)])
    return header, good


def same_spelling(values: "list[str]") -> tuple[list[list[str]], list[list[str]]]:
    """Groups of distinct ``values`` that are one level written two ways: (differing only in
    case, the same number written differently: ``05`` / ``5``, ``1`` / ``1.0``)."""
    folded: dict[str, set[str]] = {}
    numbers: dict[float, set[str]] = {}
    for v in values:
        folded.setdefault(v.lower(), set()).add(v)
        if _is_number(v) and math.isfinite(float(v)):
            numbers.setdefault(float(v), set()).add(v)
    return ([sorted(g) for g in folded.values() if len(g) > 1],
            [sorted(g) for g in numbers.values() if len(g) > 1])


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def unknown_spellings(data_cfg: Mapping[str, Any], where: Path) -> frozenset[str]:
    """The cell spellings (lower case) read as unknown: ``[data] unknown`` of the folder's
    invariance.toml, else :data:`MISSING` ('', NA, N/A, NaN, null in any case)."""
    if UNKNOWN_KEY not in data_cfg:
        return MISSING
    given = data_cfg[UNKNOWN_KEY]
    if not isinstance(given, list) or not all(isinstance(v, str) for v in given):
        raise DataError(f"{where}: [data] {UNKNOWN_KEY} must be a list of strings (the cell spellings read as "
                        f'unknown, e.g. ["", "n/a"]); got {given!r}')
    return frozenset(v.strip().lower() for v in given) | {""}


def _read_as_unknown(cells: list[str], missing: frozenset[str]) -> str:
    """' (N spelled 'NA' read as unknown; ...)' when cells spelled out as unknown were left out
    (a level named NA reads as unknown), else ''."""
    spelled = _spelled_unknown(cells, missing)
    if not spelled:
        return ""
    shown = ", ".join(f"{n} spelled {v!r}" for v, n in spelled.items())
    return (f" ({shown} read as unknown; if that is a level, set [data] {UNKNOWN_KEY} = [\"\"] in the folder's "
            "invariance.toml so only empty cells are unknown)")


def _infer(name: str, cells: list[str], declared: str | None, problems: _Problems,
           images: list[str], missing: frozenset[str] = MISSING) -> Factor | None:
    """Type and values of one column; records its problems and returns None when unusable."""
    f = _infer_values(name, cells, declared, problems, images, missing)
    return None if f is None else replace(f, spelled_unknown=_spelled_unknown(cells, missing))


def _spelled_unknown(cells: list[str], missing: frozenset[str]) -> dict[str, int]:
    """Count of each non-empty cell spelling read as unknown ('NA', 'n/a', ...)."""
    spelled: dict[str, int] = {}
    for c in cells:
        if c and c.lower() in missing:
            spelled[c] = spelled.get(c, 0) + 1
    return spelled


def _infer_values(name: str, cells: list[str], declared: str | None, problems: _Problems,
                  images: list[str], missing: frozenset[str]) -> Factor | None:
    present = [i for i, c in enumerate(cells) if c.lower() not in missing]
    values = [cells[i] for i in present]
    distinct = sorted(set(values))
    numeric = [_is_number(v) for v in values]
    if declared == "ignore":
        return None
    if len(distinct) < 2:
        problems.columns.append(f"column {name!r} has a single value ({distinct[0] if distinct else 'all empty'!r})"
                                f"{_read_as_unknown(cells, missing)}: nothing to probe; drop it or pass "
                                f"{TYPE_OPTION} {name}=ignore")
        return None
    clash, numbers = same_spelling(distinct)
    # No type resolves these (worded: the generic "--invariance-factor-type COL=TYPE" tail would
    # name a fix that fails): whether 05 is another code than 5 only the file can say.
    if clash:
        problems.worded.append(f"column {name!r} has levels that differ only in case: "
                               f"{'; '.join(' / '.join(c) for c in clash[:_SHOW])}; spell each level one way")
        return None
    if numbers and declared != "continuous":  # as a continuous value 05 is 5 anyway
        problems.worded.append(
            f"column {name!r} has levels that are one number written two ways: "
            f"{'; '.join(' / '.join(c) for c in numbers[:_SHOW])}; write each level one way in labels.csv (whether "
            f"they are one level or two codes only the file can say, so no --invariance-factor-type {name}=binary or "
            f"=categorical merges them; an amount, not a level, is read as one number with {name}=continuous)")
        return None
    comma = [i for i, v in enumerate(values) if _DECIMAL_COMMA.fullmatch(v)]
    if comma and declared not in ("binary", "categorical") and len(comma) + sum(numeric) >= 0.8 * len(values):
        # 12,5 read as text made a 592-level column whose offered fix dropped the factor; not
        # parsed: 1,500 may be a thousands separator, so only the file can say what it means
        shown = ", ".join(f"{images[present[i]]}: {values[i]!r}" for i in comma[:3])
        problems.worded.append(f"column {name!r} holds numbers with a decimal comma ({len(comma)} cell(s), e.g. "
                               f"{shown}); write '.' as the decimal point in labels.csv (a column of codes such as "
                               f"'1,2' is read as levels with {TYPE_OPTION} {name}=categorical)")
        return None
    mostly_numeric = sum(numeric) >= 0.8 * len(values)
    if mostly_numeric or declared == "continuous":
        # inf, -inf, 1e400 (overflows to inf), -nan parse as numbers but are no figure a probe
        # can fit or an error can be measured against: refuse here, naming the cells, not later
        # in a study whose failure would blame the model.
        bad = [(images[present[i]], values[i]) for i, ok in enumerate(numeric)
               if ok and not math.isfinite(float(values[i]))]
        if bad:
            shown = ", ".join(f"{img}: {v!r}" for img, v in bad[:_SHOW])
            more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
            problems.worded.append(f"column {name!r} has {len(bad)} non-finite number(s) ({shown}{more}); "
                                   "write a finite number or leave the cell empty (unknown)")
            return None
    if mostly_numeric and not all(numeric) and declared != "categorical":
        bad = [(images[present[i]], values[i]) for i, ok in enumerate(numeric) if not ok]
        shown = ", ".join(f"{img}: {v!r}" for img, v in bad[:_SHOW])
        problems.columns.append(f"column {name!r} is numeric but has {len(bad)} non-numeric value(s) ({shown}); "
                                "fix them or leave the cells empty (unknown)")
        return None
    kind = declared or _guess(name, distinct, all(numeric), problems)
    if kind is None:
        return None
    out = np.full(len(cells), np.nan)
    if kind == "continuous":
        if not all(numeric):
            problems.columns.append(f"column {name!r} is declared continuous but holds text such as "
                                    f"{next(v for v, ok in zip(values, numeric) if not ok)!r}")
            return None
        out[present] = [float(v) for v in values]
        if _far_out(name, out, images, problems):
            return None
        return Factor(name, kind, out, inferred=declared is None)
    if kind == "binary":
        if len(distinct) != 2:
            problems.columns.append(f"column {name!r} is declared binary but has {len(distinct)} levels "
                                    f"({', '.join(distinct[:_SHOW])}...)")
            return None
        neg, pos = _binary_order(distinct, values)
        out[present] = [float(v == pos) for v in values]
        return Factor(name, kind, out, (neg, pos), declared is None, pos)
    levels = tuple(sorted(distinct, key=lambda v: (float(v), v) if all(numeric) else (0.0, v)))
    code = {v: i for i, v in enumerate(levels)}
    out[present] = [code[v] for v in values]
    return Factor(name, kind, out, levels, declared is None)


def _far_out(name: str, values: np.ndarray, images: list[str], problems: _Problems) -> bool:
    """Record values [n] (NaN = unknown) far outside the column's typical range, by the rule that
    clips far-out embedding values (:func:`~pytest_invariance.probes._standardise.robust_band`):
    3 typos of 1e6 in 600 cells took a ridge R^2 from 0.49 to -0.09 and the gate passed."""
    from ..probes._standardise import BAND, robust_band

    known = np.flatnonzero(~np.isnan(values))
    lo, hi = (float(b[0]) for b in robust_band(values[known, None]))
    far = known[(values[known] < lo) | (values[known] > hi)]
    if not len(far):
        return False
    p1, p99 = np.quantile(values[known], [0.01, 0.99])
    shown = ", ".join(f"{images[i]}: {values[i]:g}" for i in far[:_SHOW])
    more = f" and {len(far) - _SHOW} more" if len(far) > _SHOW else ""
    problems.worded.append(
        f"column {name!r} has {len(far)} value(s) far outside its typical range (1st-99th percentile {p1:.4g} to "
        f"{p99:.4g}; more than {BAND:g} robust standard deviations beyond it): {shown}{more}; typos? correct them or "
        f"leave the cells empty (unknown); real values? write the column on a scale where they are not far out "
        f"(its log, say); or leave the factor out with {TYPE_OPTION} {name}=ignore")
    return True


def _guess(name: str, distinct: list[str], numeric: bool, problems: _Problems) -> str | None:
    if len(distinct) == 2:
        return "binary"
    if numeric and len(distinct) > AMBIGUOUS_LEVELS:
        return "continuous"
    if numeric:
        problems.columns.append(
            f"column {name!r} has {len(distinct)} numeric levels ({', '.join(distinct[:_SHOW])}...): codes or "
            f"amounts? pass {TYPE_OPTION} {name}=categorical or {name}=continuous")
        return None
    if len(distinct) > MAX_LEVELS:
        problems.columns.append(f"column {name!r} has {len(distinct)} text levels, too many for a categorical "
                                f"factor; pass {TYPE_OPTION} {name}=ignore (or merge levels)")
        return None
    return "categorical"


def _binary_order(distinct: list[str], values: list[str]) -> tuple[str, str]:
    """(negative, positive): true/yes/1 is positive; otherwise the larger number, else the rarer level."""
    a, b = distinct
    for word in TRUE_WORDS:
        if b.lower() == word and a.lower() in FALSE_WORDS:
            return a, b
        if a.lower() == word and b.lower() in FALSE_WORDS:
            return b, a
    if _is_number(a) and _is_number(b):
        return (a, b) if float(a) < float(b) else (b, a)
    na, nb = values.count(a), values.count(b)
    return (a, b) if nb < na or (nb == na) else (b, a)


def seeded_split(n: int, identity: np.ndarray | None, seed: int,
                 fractions: tuple[float, float, float] = FRACTIONS) -> np.ndarray:
    """'train'/'val'/'test' per image; whole groups (identities, or :func:`same_image_groups`)
    go to one side when ``identity`` [n] (a group label per image) is given."""
    rng = np.random.default_rng(seed)
    groups = np.arange(n) if identity is None else np.unique(identity, return_inverse=True)[1]
    k = int(groups.max()) + 1
    order = rng.permutation(k)
    cut = np.cumsum(np.round(np.asarray(fractions) / sum(fractions) * k).astype(int))[:2]
    side = np.empty(k, dtype=object)
    side[order[:cut[0]]], side[order[cut[0]:cut[1]]], side[order[cut[1]:]] = "train", "val", "test"
    return side[groups].astype(str)


def same_image_groups(identity: np.ndarray | None, digests: list[bytes]) -> np.ndarray | None:
    """A group label per image [n] joining images of one identity and byte-identical files
    (``digests``, one per image), or None when no file is a copy of another (the split then
    stays the plain per-image or per-identity one)."""
    n = len(digests)
    if len(set(digests)) == n:
        return None
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[object, int] = {}
    keys = [digests] if identity is None else [digests, list(identity)]
    for key in keys:
        for i, k in enumerate(key):
            parent[root(i)] = root(first.setdefault(k, i))
    return np.array([root(i) for i in range(n)])


def _check_column_split(split: np.ndarray, identity: np.ndarray | None, images: list[str],
                        digests: list[bytes], fractions: tuple[float, ...],
                        missing: frozenset[str] = MISSING) -> tuple[list[str], bool]:
    """Problems of a user's ``split`` column that no factor's count would name: a split with no
    rows, byte-identical copies or one identity on two sides (a probe scores such test images by
    memory: a pure-noise label read as a leak). Returns (problems, counts_readable)."""
    out = []
    empty = [s for s in SPLITS if not (split == s).any()]
    if empty:
        counts = ", ".join(f"{int((split == s).sum())} {s}" for s in SPLITS)
        out.append(f"column 'split' has no {' or '.join(empty)} rows ({counts}): each probe fits on train, picks "
                   "its penalty on val and is scored on test; fill in the column, or delete it and the plugin "
                   f"splits the images {'/'.join(f'{x:g}' for x in fractions)} seeded by --invariance-seed "
                   "(identity-disjoint with an identity column; [data] fractions in invariance.toml)")
    by_digest: dict[bytes, list[int]] = {}
    for i, d in enumerate(digests):
        by_digest.setdefault(d, []).append(i)
    crossed = [g for g in by_digest.values() if len(set(split[g])) > 1]
    if crossed:
        shown = "; ".join(" = ".join(f"{images[i]} ({split[i]})" for i in g[:3]) for g in crossed[:3])
        more = f" and {len(crossed) - 3} more" if len(crossed) > 3 else ""
        out.append(f"{len(crossed)} image(s) have byte-identical copies in another split of the 'split' column "
                   f"({shown}{more}): the probe would score a test copy by memory; put all copies of an image in "
                   "one split, or keep one file per image")
    if identity is not None:
        sides: dict[str, set[str]] = {}
        for who, s in zip(identity, split):
            if who.lower() not in missing:  # an empty identity is its own row problem, not one person
                sides.setdefault(who, set()).add(s)
        spanning = [w for w, ss in sides.items() if len(ss) > 1]
        if spanning:
            shown = ", ".join(f"{w!r} in {'/'.join(s for s in SPLITS if s in sides[w])}" for w in spanning[:3])
            more = ", ..." if len(spanning) > 3 else ""
            out.append(f"column 'split' puts {len(spanning)} of {len(sides)} identities in more than one split "
                       f"({shown}{more}): a probe could read the person, not the factor; make the split "
                       "identity-disjoint (all of an identity's images in one split), or delete the 'split' "
                       "column and the plugin splits by identity (seeded by --invariance-seed)")
    return out, not empty


def _check_counts(f: Factor, split: np.ndarray, problems: _Problems, min_per_class: int) -> bool:
    if f.type == "continuous":
        short = [s for s in SPLITS if (f.known & (split == s)).sum() < min_per_class]
        if short:
            problems.columns.append(f"column {f.name!r} has fewer than {min_per_class} known values in split(s) {short}")
            return False
        # a constant target: no fit on train, no R^2 on test (its variance is the denominator)
        flat = [(s, f.values[f.known & (split == s)][0]) for s in SPLITS
                if np.ptp(f.values[f.known & (split == s)]) == 0]
        if flat:
            problems.worded.append(
                f"factor {f.name!r} cannot be probed: its values are all {flat[0][1]:g} in the {flat[0][0]} split"
                f"{' (also constant in ' + ', '.join(s for s, _ in flat[1:]) + ')' if len(flat) > 1 else ''}; "
                f"give that split varied values (or reassign rows in the 'split' column), or leave the factor "
                f"out with {TYPE_OPTION} {f.name}=ignore")
        return not flat
    low = []
    for code, level in enumerate(f.levels):
        hit = f.values == code
        per = {s: int((hit & (split == s)).sum()) for s in SPLITS}
        if hit.sum() < min_per_class or min(per.values()) < MIN_PER_SPLIT:
            low.append(f"{level!r} ({int(hit.sum())} images; train/val/test {per['train']}/{per['val']}/{per['test']})")
    if low:
        problems.columns.append(
            f"column {f.name!r} has too few samples per class: {'; '.join(low[:_SHOW])}; need >= {min_per_class} "
            f"per level and >= {MIN_PER_SPLIT} in each split (add images, merge levels, or ignore the column)")
    return not low


def load_factor_folder(root: str | Path, *, types: Mapping[str, str] | None = None, seed: int = 0,
                       skip_bad: bool = False, size: tuple[int, int] | None = None) -> FactorFolder:
    """Read ``root/labels.csv``, check every image and column, infer factor types, split.

    Parameters
    ----------
    root : path
        Folder with ``labels.csv``, the images, and optionally ``invariance.toml``
        (``[factors]`` COL = TYPE, ``[data]`` size / min_per_class / fractions).
    types : mapping column -> type
        Overrides ``[factors]`` (from ``--invariance-factor-type``); types are binary,
        categorical, continuous or ignore.
    seed : int
        Seeds the split when the CSV has no ``split`` column.
    skip_bad : bool
        Leave out images with row problems (missing file, unreadable, bad CSV row) and
        count them; column problems still raise.
    size : (H, W), optional
        Image size the loader resizes to; default ``[data] size`` or (160, 160).

    Returns
    -------
    FactorFolder

    Raises
    ------
    DatasetNotFoundError
        When the folder or its labels.csv does not exist.
    DataError
        One error listing every problem: label rows without an image, images without a
        label row, unreadable images, malformed or duplicate rows, a split outside
        train/val/test, a split column with an empty split, byte-identical copies or one
        identity in two of its splits, non-numeric values in a numeric column, decimal
        commas, continuous values far out (:func:`_far_out`) or constant on a split,
        single-valued columns, levels differing only in case, ambiguous numeric columns,
        unknown or invalid declared types, and factors with too few samples per class.
        Without a split column, byte-identical copies are kept on one side of the seeded
        split (``FactorFolder.copies`` counts them).
    """
    root = Path(root)
    csv_path = root / "labels.csv"
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"no {csv_path}: the factors suite needs DIR/labels.csv with an 'image' column "
                                   "(path relative to DIR) and one column per factor")
    config = read_config(root)
    data_cfg = config.get("data", {})
    declared = {**{k: str(v).lower() for k, v in config.get("factors", {}).items()},
                **{k: v.lower() for k, v in (types or {}).items()}}
    missing = unknown_spellings(data_cfg, root / "invariance.toml")
    problems = _Problems()
    header, rows = _read_rows(csv_path, problems)
    for col, t in declared.items():
        if t not in TYPES:
            problems.columns.append(f"type {t!r} for column {col!r} is not one of {', '.join(TYPES)}")
        elif col not in header:
            problems.columns.append(f"a type is given for column {col!r}, which labels.csv does not have "
                                    f"(columns: {', '.join(header)})")
    on_disk = list_images(root)
    names = [r[header.index("image")] for r in rows]
    listed = set(names)
    for name, first in aliased_rows(on_disk, names).items():
        problems.row(name, f"the same file as {first} (a symbolic or hard link)")
    for name in names:
        if name not in on_disk:
            problems.row(name, "label row without an image")
    for name in unlabelled(on_disk, listed):
        problems.row(name, "image without a label row")
    split_ok = True
    if "split" in header:
        j = header.index("split")
        for r in rows:
            r[j] = r[j].strip().lower()  # Train, VAL: the same splits
        odd = odd_splits(r[j] for r in rows)
        if odd:  # one line, and no per-split counts of a split it cannot read
            problems.worded.append(odd)
            split_ok = False
    # With skip_bad every image is decoded now, so a truncated one is left out and counted
    # instead of failing the study later (without it, that failure names --invariance-skip-bad).
    scan = scan_images({n: on_disk[n] for n in names if n in on_disk}, decode=skip_bad)
    for name, reason in scan.problems.items():
        problems.row(name, reason)
    if "identity" in header:
        for r in rows:
            if r[header.index("identity")].lower() in missing:
                problems.row(r[header.index("image")], "empty identity")
        twice = same_spelling(sorted({r[header.index("identity")] for r in rows}))[1]
        if twice:  # 05 and 5 would be two people, splitting one person's images across the split
            problems.worded.append(
                f"column 'identity' has identities that are one number written two ways: "
                f"{'; '.join(' / '.join(c) for c in twice[:_SHOW])}; write each identity one way (or, if they are "
                "different people, give them names that differ otherwise)")
    # Skipping leaves the bad rows out; otherwise all rows stay so column problems are listed too.
    table = [r for r in rows if r[header.index("image")] not in problems.rows] if skip_bad else rows
    min_per_class = int(data_cfg.get("min_per_class", MIN_PER_CLASS))
    if not rows:
        raise DataError(f"{csv_path}: no image rows under the header; add one row per image "
                        f"({', '.join(header)})")
    if len(table) < min(len(rows), 2 * min_per_class):  # skipping left too few for any factor
        raise DataError(f"{csv_path}: --invariance-skip-bad leaves {len(table)} of {len(rows)} image(s), too few to "
                        f"probe (a factor needs >= {min_per_class} per level); {problems.summary()}; fix those rows")
    images = [r[header.index("image")] for r in table]
    identity = np.array([r[header.index("identity")] for r in table], dtype=object) if "identity" in header else None
    # The files' bytes, read once (the fingerprint reuses them): copies under other names are one image.
    present = [n for n in images if n in on_disk]
    digest = dict(zip(present, file_digests([on_disk[n] for n in present])))
    digests = [digest.get(n, n.encode()) for n in images]  # a missing file: its own group (refused above)
    fractions = tuple(data_cfg.get("fractions", FRACTIONS))
    copies = len(images) - len(set(digests))
    groups = same_image_groups(identity, digests)
    if "split" in header:
        split, source = np.array([r[header.index("split")] for r in table]), "column"
        if split_ok:
            found, split_ok = _check_column_split(split, identity, images, digests, fractions, missing)
            problems.worded += found
    else:
        split = seeded_split(len(table), identity if groups is None else groups, seed, fractions)  # type: ignore[arg-type]
        source = "seeded, identity-disjoint" if identity is not None else "seeded"
        empty = [s for s in SPLITS if not (split == s).any()]
        if groups is not None and empty and split_ok:  # one file copied so often the sides cannot be filled
            top = Counter(digests).most_common(1)[0][0]
            same = [n for n, d in zip(images, digests) if d == top]
            problems.worded.append(
                f"the seeded split keeps byte-identical files together and {len(same)} of {len(images)} images are "
                f"one file ({', '.join(same[:3])}, ...), which leaves no {' or '.join(empty)} images; keep one "
                "file per image (or give the images a 'split' column)")
            split_ok = False
    factors = {}
    for j, col in enumerate(header):
        if col in RESERVED or not col:
            continue
        f = _infer(col, [r[j] for r in table], declared.get(col), problems, images, missing)
        if f is not None and (not split_ok or _check_counts(f, split, problems, min_per_class)):
            factors[col] = f
    if problems.columns or problems.worded or (problems.rows and not skip_bad):
        raise DataError(problems.message(csv_path))
    if not factors:
        raise DataError(f"{csv_path}: no factor columns besides {', '.join(c for c in RESERVED if c in header)}; "
                        "add one column per factor")
    size = tuple(data_cfg.get("size", size or DEFAULT_SIZE))  # type: ignore[assignment]
    paths = [on_disk[n] for n in images]
    import pandas as pd

    labels = pd.DataFrame({"image": images, "split": split})
    fp = files_fingerprint(paths, [csv_path], "factors", size, seed, source, digests=[digest[n] for n in images])
    # the same files, labels and split rule without the seed (a seeded split is the seed's, which the
    # CI covers) nor the size: checks on this and on another seed are of the same data
    data = files_fingerprint(paths, [csv_path], "factors", source, fractions, digests=[digest[n] for n in images])
    # conversions of the images kept (a bad file converts nothing): each image counted once
    scan = scan_images({n: on_disk[n] for n in images})
    # rows of labels.csv left out; an image file with no row was never part of the set
    left_out = sum(1 for why in problems.rows.values() if why != "image without a label row")
    return FactorFolder(root, FileImageSet(paths, labels, size=size, fingerprint=fp, n_skipped=left_out,
                                           conversions=scan.conversions, data_digest=data),
                        factors, split, source, identity, config, left_out, copies,
                        identity if groups is None else groups)
