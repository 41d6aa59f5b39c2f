"""Atomic file writes: readers (another xdist worker, a CI upload, a browser) see either
the old file or the whole new one, never half of it."""
from __future__ import annotations

import os
import tempfile
from os import PathLike
from pathlib import Path


def atomic_write_bytes(path: str | PathLike[str], data: bytes) -> Path:
    """Write ``data`` through a temp file in the same folder, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
