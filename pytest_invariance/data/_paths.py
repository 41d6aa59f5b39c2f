"""Image paths as a labels file writes them, turned into the names the folder listing uses.

:func:`.folder.list_images` keys each file by its POSIX path relative to the data folder
(``img/0001.jpg``). People write the same file as ``./img/0001.jpg``, ``img/../img/0001.jpg``,
``img\\0001.jpg`` (a CSV made on Windows) or ``/data/faces/img/0001.jpg``; compared as
written, each was reported as a label row without an image next to an image without a label
row. A path that leads out of the folder is refused: the folder is what is audited (and
fingerprinted), so its labels may not reach other files.
"""
from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Iterable

from ..errors import DataError

_SHOW = 3
_DRIVE = re.compile(r"^[A-Za-z]:/")


def folder_name(cell: str, root: Path) -> str | None:
    """The POSIX path relative to ``root`` that ``cell`` names, or None when it leads outside
    ``root`` (``..`` past it, an absolute path elsewhere, a Windows drive path).

    Lexical (``os.path.normpath`` rules, no file is opened), so a name reached through a
    symlinked subfolder keeps that name. An empty cell is returned as is.
    """
    s = cell.strip()
    if not s:
        return s
    if "\\" in s and not (root / s).exists():  # a backslash is a separator unless a file is so named
        s = s.replace("\\", "/")
    if _DRIVE.match(s):
        return None
    if not posixpath.isabs(s):
        rel = posixpath.normpath(s)
        if rel != ".." and not rel.startswith("../"):
            return rel
        s = posixpath.join(os.path.abspath(root), s)  # ../DIR/img/x.png may come back in
    s = posixpath.normpath(s)
    for base in dict.fromkeys((os.path.abspath(root), os.path.realpath(root))):
        rel = posixpath.relpath(s, base)
        if rel != ".." and not rel.startswith("../"):
            return rel
    return None


def folder_names(cells: Iterable[str], root: Path, where: str) -> list[str]:
    """:func:`folder_name` of each cell; one DataError naming those that lead outside ``root``.

    Raises
    ------
    DataError
        One line: how many paths lead outside ``root``, a few of them, and the fix.
    """
    cells = list(cells)
    names = [folder_name(c, root) for c in cells]
    outside = [c for c, n in zip(cells, names) if n is None]
    if outside:
        shown = ", ".join(outside[:_SHOW]) + (f" and {len(outside) - _SHOW} more" if len(outside) > _SHOW else "")
        raise DataError(f"{where}: {len(outside)} image path(s) lead outside {root} ({shown}); the images must be "
                        f"inside the data folder: write each path relative to it (e.g. img/0001.jpg) or move the "
                        "images in")
    return names  # type: ignore[return-value]
