"""Atomic file writes: readers (another xdist worker, a CI upload, a browser) see either
the old file or the whole new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from os import PathLike
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write_bytes(path: str | PathLike[str], data: bytes) -> Path:
    """Write ``data`` through a temp file in the same folder, fsync, then ``os.replace``."""
    return atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: str | PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Like :func:`atomic_write_bytes`, with ``write(f)`` writing the bytes to the open temp
    file: a large file is streamed, never held in memory whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name so that remove_stale_temps() can tell a live write
    # from one left behind by a killed run.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temps(folder: str | PathLike[str], max_age_s: float = 24 * 3600, *,
                       recursive: bool = False) -> list[Path]:
    """Delete temp files of atomic_write_bytes() left by interrupted writes in ``folder``
    (and its subfolders with ``recursive``, for folders that are wholly ours, like the cache).

    A temp file goes when its writer (the pid in its name) no longer runs on this
    machine, or when it is older than ``max_age_s`` (a writer on another machine of a
    shared folder, or a pid reused since). Returns the removed paths.
    """
    import time

    removed = []
    now = time.time()
    for tmp in (Path(folder).rglob if recursive else Path(folder).glob)(".*.tmp"):
        parts = tmp.name[: -len(".tmp")].split(".")
        pid = int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None
        try:
            old = now - tmp.stat().st_mtime > max_age_s
            if old or pid is None or not _alive(pid):
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
