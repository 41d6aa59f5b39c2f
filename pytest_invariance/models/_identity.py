"""A model's identity: the sha256 of every byte that determines its outputs.

The digest is the default version tag in the history and part of the embedding cache
key, so it must change whenever the outputs can: for ONNX the graph file *and* its
external-data files; for ``package.module:factory`` what the built module *is*
(:func:`module_digest`: every parameter and buffer's bytes, every module's class and
the source of the code it reaches, in whatever package it lives), plus the factory's
package sources, the ``--invariance-weights`` file and every other file the import and
the factory call read, seen through a Python audit hook. Files alone missed weights read
without Python's ``open`` (``safetensors.load_file``, ``torch.from_file``) and code in
another top-level package.
"""
from __future__ import annotations

import hashlib
import re
import sys
import sysconfig
import types
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


def factory_digest(spec: str, module_file: str | None, read: Iterable[str], weights: Path | None,
                   module: object = None) -> str:
    """Digest of a factory model: spec, package sources, files read while building it, weights,
    and the built ``module`` itself (:func:`module_digest`).

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
    if module is not None:
        h.update(f"\0module\0{module_digest(module, [spec.split(':')[0]])}".encode())
    return h.hexdigest()


_PLAIN = (int, float, bool, str, bytes, type(None))


def _plain(value: object) -> bool:
    return isinstance(value, _PLAIN) or isinstance(value, (tuple, list)) and all(_plain(v) for v in value)


def _library_dirs() -> tuple[str, ...]:
    """Where installed libraries and the standard library live (their code is named by version)."""
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return tuple(str(Path(p).resolve()) + "/" for p in {sysconfig.get_paths().get(k) for k in keys} if p)


def _code_of(names: Iterable[str]) -> list[tuple[str, str]]:
    """``(module name, sha256 of its source)`` of each user-code module in ``names`` and of every
    user-code module their globals reach (imported modules, and the home module of each function
    and class they import); an installed library is ``(top package, its __version__)``."""
    libs = _library_dirs()
    out: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out or name is None:
            continue
        mod = sys.modules.get(name)
        file = getattr(mod, "__file__", None)
        if mod is None or not file or not file.endswith(".py"):
            out[name] = "builtin"
            continue
        path = Path(file).resolve()
        if str(path).startswith(libs):
            top = name.split(".")[0]
            out[top] = str(getattr(sys.modules.get(top), "__version__", "?"))
            out[name] = "library"
            continue
        out[name] = sha256_file(path) if path.is_file() else "missing"
        for value in list(vars(mod).values()):
            if isinstance(value, types.ModuleType):
                todo.append(value.__name__)
            elif isinstance(value, (type, types.FunctionType)):
                todo.append(getattr(value, "__module__", None))  # type: ignore[arg-type]
    return sorted((k, v) for k, v in out.items() if v != "library")


def module_digest(module: object, code_roots: Iterable[str] = ()) -> str:
    """sha256 of what a built ``torch.nn.Module`` is, the same in every process.

    Every submodule's name, class (its qualified name through the MRO) and plain attributes
    (numbers, strings: ``eps``, ``stride``); every tensor it holds (parameters, buffers and
    tensor attributes: name, dtype, shape, bytes); the source of every user-code module that
    defines those classes or that their modules reach (:func:`_code_of`), installed libraries
    by version; ``code_roots`` (module names, e.g. the factory's) are followed too. A TorchScript
    submodule is its compiled code instead of its class. So a weight loaded by any means, or an
    edit of the forward code in any package, changes it. A ResNet-50's 100 MB of weights hash in about 0.1 s.
    """
    import torch

    h = hashlib.sha256()
    homes: set[str] = set(code_roots)
    for name, m in module.named_modules():  # type: ignore[attr-defined]
        if isinstance(m, torch.jit.ScriptModule):
            h.update(f"\0script\0{name}\0{getattr(m, 'code', '')}".encode())
        else:
            classes = [c for c in type(m).__mro__ if c not in (torch.nn.Module, object)]
            homes.update(c.__module__ for c in classes)
            h.update(f"\0mod\0{name}\0{'|'.join(f'{c.__module__}.{c.__qualname__}' for c in classes)}".encode())
            for key, value in sorted(vars(m).items()):
                if key in ("_parameters", "_buffers", "_modules", "training") or "hook" in key:
                    continue
                if _plain(value):
                    h.update(f"\0attr\0{key}\0{value!r}".encode())
                elif isinstance(value, torch.Tensor):
                    _tensor(h, f"{name}.{key}", value)
        for key, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            _tensor(h, f"{name}.{key}", t)
    for mod, digest in _code_of(homes):
        h.update(f"\0code\0{mod}\0{digest}".encode())
    return h.hexdigest()


def _tensor(h: "hashlib._Hash", name: str, t: object) -> None:
    import torch

    t = t.detach()  # type: ignore[attr-defined]
    h.update(f"\0t\0{name}\0{t.dtype}\0{tuple(t.shape)}".encode())
    if t.device.type == "meta":
        return
    t = t.cpu()
    if t.layout != torch.strided or t.is_quantized:  # sparse or quantized: their values as float64
        t = (t.dequantize() if t.is_quantized else t.to_dense()).double()
    flat = t.contiguous().reshape(-1)
    if flat.numel():
        h.update(memoryview(flat.view(torch.uint8).numpy()))


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
