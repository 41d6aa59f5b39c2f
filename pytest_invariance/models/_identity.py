"""A model's identity: the sha256 of every byte that determines its outputs.

The digest is the default version tag in the history and part of the embedding cache
key, so it must change whenever the outputs can: for ONNX the graph file *and* its
external-data files; for ``package.module:factory`` the package's source files, the
``--invariance-weights`` file and every other file the import and the factory call
read (weights a factory loads itself), seen through a Python audit hook.
"""
from __future__ import annotations

import hashlib
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

_FACTORY = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
# Files a process reads that say nothing about a model (kernel and device state).
_VOLATILE = ("/proc/", "/sys/", "/dev/")


def is_factory_spec(spec: str) -> bool:
    """True for ``package.module:factory`` (not a path: no separator, no existing file)."""
    return bool(_FACTORY.fullmatch(spec)) and not Path(spec).exists()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_files(main: Path, others: Iterable[Path] = ()) -> str:
    """The main file's own sha256 when it is the only file, else a digest over all of them.

    A single-file model keeps the plain file hash (what ``sha256sum`` prints); extra
    files are folded in by name and content, so renaming or editing any of them counts.
    """
    extra = sorted({Path(p).resolve() for p in others} - {Path(main).resolve()})
    own = sha256_file(main)
    if not extra:
        return own
    h = hashlib.sha256(own.encode())
    for p in extra:
        h.update(f"\0{p.name}\0{sha256_file(p) if p.is_file() else 'missing'}".encode())
    return h.hexdigest()


def onnx_external_files(model: object, folder: Path) -> list[Path]:
    """External-data files that ``model``'s tensors point to (``location`` is relative to the .onnx)."""
    found: list[Path] = []

    def visit(tensors: Iterable[object]) -> None:
        for t in tensors:
            for entry in getattr(t, "external_data", ()):
                if entry.key == "location":
                    found.append(folder / entry.value)

    graph = model.graph  # type: ignore[attr-defined]
    visit(graph.initializer)
    for node in graph.node:
        visit(a.t for a in node.attribute if a.HasField("t"))
    return found


_recording: list[list[str]] = []


def _audit_hook(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _recording and isinstance(args[0], (str, bytes)):
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else "r"
        if "r" in mode and not any(c in mode for c in "wax+"):
            _recording[-1].append(args[0].decode() if isinstance(args[0], bytes) else args[0])


_hook_installed = False


@contextmanager
def files_read() -> Iterator[list[str]]:
    """Record the paths opened for reading by Python code inside the block."""
    global _hook_installed
    if not _hook_installed:  # audit hooks cannot be removed: install one, switch it by the stack
        sys.addaudithook(_audit_hook)
        _hook_installed = True
    seen: list[str] = []
    _recording.append(seen)
    try:
        yield seen
    finally:
        _recording.pop()


def factory_digest(spec: str, module_file: str | None, read: Iterable[str], weights: Path | None) -> str:
    """Digest of a factory model: spec, package sources, files read while building it, weights.

    Files are named by their path inside the package (or their base name for files read
    elsewhere), so the digest does not depend on where the package is installed.
    """
    entries: dict[Path, str] = {}  # file -> label
    if module_file:
        src = Path(module_file).resolve()
        root = _package_root(src, spec.split(":")[0])
        for f in (root.rglob("*.py") if root.is_dir() else [src]):
            entries[f] = str(f.relative_to(root.parent)).replace("\\", "/")
    for p in read:
        path = Path(p)
        if p.startswith(_VOLATILE) or path.suffix in (".py", ".pyc") or not path.is_file():
            continue
        entries.setdefault(path.resolve(), path.name)
    if weights is not None:
        entries[weights.resolve()] = "weights"
    h = hashlib.sha256(spec.encode())
    for label, digest in sorted((label, sha256_file(f)) for f, label in entries.items()):
        h.update(f"\0{label}\0{digest}".encode())
    return h.hexdigest()


def _package_root(src: Path, module: str) -> Path:
    """``pkg/`` for ``pkg.sub.mod`` (every module of the package may shape the model); a lone module's own file."""
    depth = module.count(".")
    if src.name == "__init__.py":
        root = src.parent
    elif depth == 0:
        return src
    else:
        root, depth = src.parent, depth - 1
    for _ in range(depth):
        root = root.parent
    return root
