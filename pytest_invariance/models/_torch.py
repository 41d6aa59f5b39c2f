"""torch backend: TorchScript archives, torch.export programs, and module:factory specs.

Intermediate layers of an ``nn.Module`` are read with a forward hook on the named
module. A TorchScript module cannot be hooked, so for it the forward graph is cut at
the named submodule's call instead (see :func:`_script_layer_fn`).
"""
from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._optional import require
from ..errors import ModelLoadError
from ._common import check_batch, sha256_file, to_embedding, unknown_layer

OUTPUT = "output"  # the layer name of the model's own output


def _torch_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    return "cuda:0" if device == "cuda" else device


def _load_module(spec: str, *, weights: str | None, trust_pickle: bool, factory: bool) -> tuple[Any, str, str]:
    """Return (module, kind, sha256 of the bytes that define it)."""
    torch = require("torch", "loading torch models")
    if factory:
        return _load_factory(torch, spec, weights)
    path = Path(spec)
    sha = sha256_file(path)
    if path.suffix == ".pt2":
        try:
            # unflatten keeps the module hierarchy, so forward hooks on submodules fire.
            return torch.export.unflatten(torch.export.load(str(path))), "torch.export", sha
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a loadable torch.export archive ({type(exc).__name__}: {exc}"[:300] + ")") from None
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a torch archive (not a zip file); expected TorchScript .pt, torch.export .pt2 or ONNX .onnx")
    try:
        return torch.jit.load(str(path), map_location="cpu"), "torchscript", sha
    except Exception:
        pass  # not TorchScript: maybe a torch.save'd module or a state_dict
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is a pickled torch object; unpickling it would run code from the file. "
                "Export it with torch.jit.save or torch.export, or pass --invariance-trust-pickle if you trust it"
            ) from None
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        return obj, "torch.save", sha
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__} (a state_dict?), not a model; "
        "use --model package.module:factory --invariance-weights " + str(path)
    )


def _load_factory(torch: Any, spec: str, weights: str | None) -> tuple[Any, str, str]:
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import {spec!r} ({exc}); --model takes 'package.module:factory'") from None
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{spec}() returned {type(module).__name__}, not a torch.nn.Module")
    import hashlib

    h = hashlib.sha256(spec.encode())
    if weights is not None:
        wpath = Path(weights)
        if not wpath.is_file():
            raise ModelLoadError(f"--invariance-weights {weights}: file not found")
        try:
            state = torch.load(str(wpath), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except Exception as exc:
            raise ModelLoadError(f"cannot load weights {weights} into {spec}: {str(exc).splitlines()[0][:300]}") from None
        h.update(sha256_file(wpath).encode())
    return module, "factory", h.hexdigest()


def _script_layer_fn(module: Any, layer: str) -> Callable[[Any], Any] | None:
    """A function x -> activation of ``layer`` for a TorchScript module, or None.

    The forward graph is copied, its output replaced by the value the named
    submodule's call returns, and compiled into a new function. A nested path
    (``body.act``) is reached one level at a time: the outer graph is cut at the
    inputs of ``body``'s call and the rest is done inside ``body``'s own graph.
    """
    import torch

    parts = layer.split(".")
    mod, stages = module, []
    while parts:
        graph = mod.graph.copy()
        paths: dict[int, str] = {}
        hit = None
        for node in graph.nodes():
            if node.kind() == "prim::GetAttr":
                base = paths.get(node.input().unique())
                paths[node.output().unique()] = f"{base}.{node.s('name')}" if base else node.s("name")
            elif node.kind() == "prim::CallMethod" and node.s("name") == "forward":
                called = paths.get(node.inputsAt(0).unique(), "")
                for k in range(len(parts), 0, -1):
                    if called == ".".join(parts[:k]):
                        if hit is not None and hit[1] == k:
                            return None  # called twice: which call is meant is ambiguous
                        hit = (node, k)
        if hit is None:
            return None
        node, k = hit
        values = [node.output()] if k == len(parts) else list(node.inputs())[1:]
        while len(list(graph.outputs())):
            graph.eraseOutput(0)
        for v in values:
            graph.registerOutput(v)
        fn = torch._C._create_function_from_graph(f"invariance_cut_{len(stages)}", graph)
        stages.append((fn, mod))
        sub = ".".join(parts[:k])
        parts = parts[k:]
        for name in sub.split("."):
            mod = getattr(mod, name)

    def run(x: Any) -> Any:
        args: tuple[Any, ...] = (x,)
        for fn, owner in stages:
            out = fn(owner._c, *args)
            args = out if isinstance(out, tuple) else (out,)
        return args[0]

    return run


class TorchEmbedder:
    """A torch model; layers are module paths (``named_modules``) plus ``output``."""

    backend = "torch"

    def __init__(self, spec: str, *, device: str = "auto", weights: str | None = None,
                 trust_pickle: bool = False, input_shape: tuple[int | None, ...] | None = None,
                 factory: bool = False):
        torch = require("torch", "loading torch models")
        self.path = spec
        self.name = spec.split(":")[-1] if factory else Path(spec).stem
        module, self.kind, self.sha256 = _load_module(spec, weights=weights, trust_pickle=trust_pickle, factory=factory)
        self.device = _torch_device(torch, device)
        self.provider = f"torch ({self.kind})"
        self.module = module.to(self.device)
        try:
            self.module.eval()
        except NotImplementedError:  # torch.export's unflattened modules are always in eval mode
            pass
        self.input_shape = tuple(input_shape) if input_shape else (None, None, None)
        self.default_layer = OUTPUT
        self._script_fns: dict[str, Callable[[Any], Any]] = {}

    def layers(self) -> list[str]:
        # Names starting with "_" are torch.export's internals (guards), not layers.
        return [OUTPUT] + [n for n, _ in self.module.named_modules() if n and not n.startswith("_")]

    def _run(self, x: Any, layer: str) -> Any:
        torch = require("torch", "")
        if layer == OUTPUT:
            out = self.module(x)
            return out[0] if isinstance(out, (tuple, list)) else out
        if layer not in self.layers():
            raise unknown_layer(layer, self.layers(), self.path)
        if isinstance(self.module, torch.jit.ScriptModule):
            fn = self._script_fns.get(layer) or _script_layer_fn(self.module, layer)
            if fn is None:
                raise ModelLoadError(
                    f"layer {layer!r} of TorchScript model {self.path} is not called exactly once from its "
                    "parent's forward, so it cannot be cut out; export to ONNX or torch.export (.pt2) instead"
                )
            self._script_fns[layer] = fn
            return fn(x)
        captured: list[Any] = []
        handle = dict(self.module.named_modules())[layer].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, (tuple, list)) else out)
        )
        try:
            self.module(x)
        finally:
            handle.remove()
        return captured[0]

    def embed(self, batch: Any, layer: str) -> np.ndarray:
        """``batch``: numpy array or torch tensor ``[N, C, H, W]`` (a tensor may already be on the device)."""
        torch = require("torch", "")
        check_batch(batch, self.input_shape, self.path)
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.float()
        with torch.inference_mode():
            out = self._run(x.to(self.device, non_blocking=True), layer)
        return to_embedding(out.float().cpu().numpy(), layer)
