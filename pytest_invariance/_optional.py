"""Import heavy optional backends lazily, with an install hint when missing."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pkg = {"onnxruntime": "onnxruntime", "onnx": "onnx", "torch": "torch"}.get(module, module)
        raise ImportError(f"{purpose} requires {module}: pip install {pkg}") from exc
