"""torch backend: TorchScript archives, torch.export programs, and module:factory specs.

Intermediate layers of an ``nn.Module`` (and of torch.export's unflattened module) are
read with a forward hook on the named module. A TorchScript module cannot be hooked,
so for it the forward graph is cut at the named submodule's call instead (see
:func:`_script_layer_fn`). A module that runs several times per forward (torchvision's
``BasicBlock`` calls one ``relu`` twice) is named with a call index, ``layer1.0.relu#2``;
every backend counts calls in execution order and refuses a bare name that is ambiguous.
"""
from __future__ import annotations

import importlib
import os
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .._optional import require
from ..errors import EmbeddingError, InputShapeError, LayerNotFoundError, ModelLoadError
from ._common import check_batch, pick_call, split_call, unknown_layer
from ._contract import LAYOUTS, InputContract, ambiguous_layout, chw_of, layout_from_shape, run_batched
from ._identity import factory_digest, files_read, sha256_file, sha256_files
from ._pool import pool_outputs
from ._torch_layout import layout_from_calls, script_value_layout

OUTPUT = "output"  # the layer name of the model's own output
OPT_TRUST = "--invariance-trust-pickle"


def _torch_device(torch: Any, device: str) -> str:
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} asked for CUDA but torch sees no GPU; use --device cpu or auto")
    return "cuda:0" if device == "cuda" else device


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` inside to the weights-only unpickler (no code from the file runs)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _pt2_unsafe_members(path: Path) -> list[str]:
    """Members of a .pt2 that torch.export.load would unpickle outside torch.load (custom/opaque objects)."""
    import json

    bad = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith((".so", ".dll", ".dylib")):
                bad.append(name)
            if not name.endswith("_constants_config.json"):
                continue
            try:
                config = json.loads(z.read(name)).get("config", {})
            except ValueError:
                bad.append(name)
                continue
            for entry in config.values():
                path_name = str(entry.get("path_name", "")) if isinstance(entry, dict) else ""
                if path_name.startswith(("custom_obj", "opaque_obj")):
                    bad.append(f"{name}:{path_name}")
    return bad


def _load_pt2(torch: Any, path: Path, trust_pickle: bool) -> Any:
    refuse = (f"{path} holds pickled Python objects; loading it would run code from the file. "
              f"Re-export it with torch.export.save, or pass {OPT_TRUST} if you trust it")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a torch.export archive (not a zip file)")
    if not trust_pickle and _pt2_unsafe_members(path):
        raise ModelLoadError(refuse)
    try:
        if trust_pickle:
            return torch.export.load(str(path))
        with _weights_only_loads():
            return torch.export.load(str(path))
    except Exception as exc:
        if not trust_pickle and ("weights_only" in str(exc).lower() or "Unsupported global" in str(exc)):
            raise ModelLoadError(refuse) from None
        raise ModelLoadError(f"{path} is not a loadable torch.export archive ({type(exc).__name__}: {exc}"[:300] + ")") from None


def _export_contract(ep: Any, spec: str, layout_option: str) -> InputContract:
    """Input contract from the placeholders of a torch.export program (shape, dtype, fixed batch)."""
    names = list(ep.graph_signature.user_inputs)
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    feeds = "the suites feed one image batch [N, C, H, W]"
    vals = [nodes[n].meta.get("val") for n in names if n in nodes]
    if len(vals) != 1 or not hasattr(vals[0], "shape"):
        raise InputShapeError(f"{spec} takes {len(names)} inputs ({', '.join(names)}); {feeds}")
    val = vals[0]
    dims = [d if isinstance(d, int) else None for d in val.shape]
    dtype = str(val.dtype).replace("torch.", "")
    if len(dims) != 4:
        raise InputShapeError(f"{spec} takes input {dtype}[{', '.join('?' if d is None else str(d) for d in dims)}] "
                              f"(rank {len(dims)}); {feeds}")
    if dtype not in ("float32", "float16", "float64", "uint8"):
        raise InputShapeError(f"{spec} takes {dtype} input; image inputs must be float32, float16, float64 or uint8")
    if layout_option in LAYOUTS:
        layout, source = layout_option, "option"
    else:
        layout, source = layout_from_shape(dims), "declared shape"
        if layout is None and all(d is not None for d in dims[1:]):
            raise ambiguous_layout(spec, dims)
        layout, source = (layout, source) if layout else ("nchw", "torch convention")
    low, high = _batch_range(ep, val.shape[0])
    return InputContract(layout=layout, dtype=dtype, batch=dims[0], chw=chw_of(dims, layout), layout_source=source,
                         batch_min=low, batch_max=high)


def _batch_range(ep: Any, n: Any) -> tuple[int, int | None]:
    """``(min, max)`` of a dynamic batch from the program's range_constraints (``Dim("N",
    min=2, max=64)``): the program refuses a call above max; (0, None) when unbounded or fixed."""
    import sympy

    expr = getattr(getattr(n, "node", None), "expr", None)
    bounds = ep.range_constraints.get(expr) if expr is not None else None
    if bounds is None:
        return 0, None
    low = int(bounds.lower) if isinstance(bounds.lower, sympy.Integer) else 0
    high = int(bounds.upper) if isinstance(bounds.upper, sympy.Integer) else None  # int_oo: no bound
    return max(low, 0), high


def _import_factory(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    try:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            # `pytest` (unlike `python -m pytest`) does not put the working directory on
            # sys.path; a package there is what a user means by 'package.module'.
            if exc.name != mod_name.split(".")[0] or os.getcwd() in sys.path:
                raise
            sys.path.insert(0, os.getcwd())
            module = importlib.import_module(mod_name)
        return module, getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"--model {spec}: cannot import it ({exc}); --model takes 'package.module:factory'") from None


def _load_factory(torch: Any, spec: str, weights: str | None) -> tuple[Any, str]:
    wpath = Path(weights) if weights is not None else None
    if wpath is not None and not wpath.is_file():
        raise ModelLoadError(f"--invariance-weights {weights}: file not found")
    with files_read() as read:
        module_obj, factory = _import_factory(spec)
        try:
            # torch's CPU generator seeded (and restored after): layers a factory leaves at their
            # random init are the same in every process, so its digest and figures are too.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                module = factory()
        except Exception as exc:
            raise ModelLoadError(f"--model {spec}: the factory raised {type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(module, torch.nn.Module):
            raise ModelLoadError(f"--model {spec}: {spec}() returned {type(module).__name__}, not a torch.nn.Module")
        if wpath is not None:
            try:
                module.load_state_dict(torch.load(str(wpath), map_location="cpu", weights_only=True))
            except Exception as exc:
                raise ModelLoadError(f"--invariance-weights {weights}: cannot load it into {spec}: "
                                     f"{str(exc).splitlines()[0][:300]}") from None
    return module, factory_digest(spec, getattr(module_obj, "__file__", None), read, wpath, module)


def _load_module(spec: str, *, weights: str | None, trust_pickle: bool, factory: bool,
                 layout_option: str) -> tuple[Any, str, str, InputContract | None]:
    """Return (module, kind, sha256 of the bytes that define it, contract if the file declares one)."""
    torch = require("torch", "loading torch models")
    if factory:
        module, sha = _load_factory(torch, spec, weights)
        return module, "factory", sha, None
    path = Path(spec)
    sha = sha256_file(path)
    if path.suffix == ".pt2":
        ep = _load_pt2(torch, path, trust_pickle)
        contract = _export_contract(ep, spec, layout_option)
        # unflatten keeps the module hierarchy, so forward hooks on submodules fire.
        return torch.export.unflatten(ep), "torch.export", sha, contract
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a torch archive (not a zip file); expected TorchScript .pt, torch.export .pt2 or ONNX .onnx")
    try:
        return torch.jit.load(str(path), map_location="cpu"), "torchscript", sha, None
    except Exception:
        pass  # not TorchScript: maybe a torch.save'd module or a state_dict
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:
        if not trust_pickle:
            raise ModelLoadError(
                f"{path} is a pickled torch object; unpickling it would run code from the file. "
                f"Export it with torch.jit.save or torch.export, or pass {OPT_TRUST} if you trust it"
            ) from None
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        # A pickled module stores its classes by reference: their source is part of the model.
        sources = {Path(f) for m in obj.modules() if not type(m).__module__.startswith("torch.")
                   and (f := getattr(sys.modules.get(type(m).__module__), "__file__", None))}
        return obj, "torch.save", sha256_files(path, sources), None
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__} (a state_dict?), not a model; "
        "use --model package.module:factory --invariance-weights " + str(path)
    )


def _nodes(block: Any) -> Iterator[Any]:
    """Every node of a graph or block, those inside ``if``/loop blocks included, in textual order."""
    for node in block.nodes():
        yield node
        for inner in node.blocks():
            yield from _nodes(inner)


def _nested(node: Any) -> bool:
    return node.owningBlock().owningNode() is not None


def _script_calls(graph: Any, path: str) -> list[Any]:
    """``prim::CallMethod`` nodes of ``graph`` that call the submodule at ``path``, in textual
    order, those inside ``if``/loop blocks included.

    Tracing names the second call of one module ``forward1`` (then ``forward2`` ...),
    scripting keeps ``forward``; both count.
    """
    paths: dict[int, str] = {}
    calls = []
    for node in _nodes(graph):
        if node.kind() == "prim::GetAttr":
            base = paths.get(node.input().unique())
            paths[node.output().unique()] = f"{base}.{node.s('name')}" if base else node.s("name")
        elif node.kind() == "prim::CallMethod" and node.s("name").startswith("forward"):
            if paths.get(node.inputsAt(0).unique(), "") == path:
                calls.append(node)
    return calls


def _self_calls(graph: Any) -> list[Any]:
    """``prim::CallMethod`` nodes of ``graph`` (blocks included) that call another method of
    the same module (torchvision's scripted ``forward`` is one call of ``self._forward_impl``)."""
    me = next(iter(graph.inputs())).unique()
    return [n for n in _nodes(graph) if n.kind() == "prim::CallMethod" and n.inputsAt(0).unique() == me]


def _reaches(mod: Any, method: str, parts: list[str], depth: int = 0) -> bool:
    """Whether ``mod.method`` calls the submodule ``parts`` (or its first parts), directly or
    through methods of ``mod`` it calls."""
    graph = getattr(mod, method).graph
    if any(_script_calls(graph, ".".join(parts[:k])) for k in range(len(parts), 0, -1)):
        return True
    return depth < 8 and any(_reaches(mod, n.s("name"), parts, depth + 1) for n in _self_calls(graph))


def post_order(names: list[str]) -> list[str]:
    """Module paths in definition (pre-)order -> each module after the modules inside it, the
    order forward hooks fire in when a model calls its children in definition order."""
    out: list[str] = []
    open_: list[str] = []
    for n in names:
        while open_ and not n.startswith(open_[-1] + "."):
            out.append(open_.pop())
        open_.append(n)
    return out + open_[::-1]


def _script_order(module: Any) -> list[str]:
    """Submodule paths of a TorchScript module in the order their first call returns, as
    forward hooks on the eager module list them: a walk of the forward graph (blocks
    included), into each called submodule's graph and the module's own helper methods.
    Modules no call reaches follow, in :func:`post_order`."""
    order: dict[str, None] = {}

    def walk(mod: Any, prefix: str, method: str, depth: int) -> None:
        graph = getattr(mod, method).graph
        me = next(iter(graph.inputs())).unique()
        paths: dict[int, str] = {}
        for node in _nodes(graph):
            if node.kind() == "prim::GetAttr":
                base = paths.get(node.input().unique())
                if base is not None or node.input().unique() == me:
                    paths[node.output().unique()] = f"{base}.{node.s('name')}" if base else node.s("name")
            elif node.kind() == "prim::CallMethod" and depth < 32:
                target = node.inputsAt(0).unique()
                if target == me:
                    walk(mod, prefix, node.s("name"), depth + 1)
                elif target in paths:
                    sub = mod
                    for part in paths[target].split("."):
                        sub = getattr(sub, part)
                    walk(sub, f"{prefix}{paths[target]}.", node.s("name"), depth + 1)
                    order.setdefault(prefix + paths[target])

    walk(module, "", "forward", 0)
    names = [n for n, _ in module.named_modules() if n and not n.startswith("_")]
    return [n for n in order if n in set(names)] + [n for n in post_order(names) if n not in order]


def _script_layer_fn(module: Any, layer: str, index: int | None, where: str) -> tuple[Callable[[Any], Any], str | None]:
    """A function x -> activation of ``layer`` for a TorchScript module, and that activation's layout.

    The forward graph is copied, its output replaced by the value the named
    submodule's call returns, and compiled into a new function. A nested path
    (``body.act``) is reached one level at a time: the outer graph is cut at the
    inputs of ``body``'s call and the rest is done inside ``body``'s own graph.
    """
    import torch

    parts = layer.split(".")
    mod, stages, method, layout = module, [], "forward", None
    while parts:
        graph = getattr(mod, method).graph.copy()
        hit = next(((k, calls) for k in range(len(parts), 0, -1)
                    if (calls := _script_calls(graph, ".".join(parts[:k])))), None)
        target = parts[:hit[0]] if hit else parts
        helpers = [n for n in _self_calls(graph) if _reaches(mod, n.s("name"), target)]
        if helpers and (hit or len(helpers) > 1):  # a count across methods the cut cannot order
            raise LayerNotFoundError(
                f"{'.'.join(target)!r} of {where} runs more than once per forward (also "
                f"inside the scripted method {helpers[0].s('name')}), and TorchScript's calls cannot be told apart "
                "there: read it from the model as package.module:factory, or choose another --layer")
        if hit is None:  # maybe inside a method of this module that the forward calls
            via = helpers[0] if helpers else None
            if via is None:
                raise LayerNotFoundError(f"layer {layer!r} of {where} is not called in the scripted forward; "
                                         "choose another --layer")
            method = via.s("name")
            _cut(graph, list(via.inputs())[1:], via, keep=False, what=f"{layer!r} of {where}")
            stages.append((torch._C._create_function_from_graph(f"invariance_cut_{len(stages)}", graph), mod))
            continue
        k, calls = hit
        last = k == len(parts)
        if not last and len(calls) > 1:
            raise LayerNotFoundError(f"{'.'.join(parts[:k])!r} of {where} runs {len(calls)} times per forward; "
                                     f"a layer inside it cannot be named; choose --layer {'.'.join(parts[:k])}#N")
        if len(calls) > 1 and any(_nested(c) for c in calls):
            raise LayerNotFoundError(
                f"{'.'.join(parts[:k])!r} of {where} is called {len(calls)} times in the scripted forward, some "
                "inside an if or loop, so which call runs first depends on the input; read it from the model "
                "as package.module:factory (its hooks count the calls that run), or choose another --layer")
        node = pick_call(calls, layer, index if last else None, where) if last else calls[0]
        method = "forward" if last else node.s("name")
        if last:
            layout = script_value_layout(mod, node.output())
            if layout == "param":
                layout = "nchw" if not stages else None
            # Every node after the call is removed, so no later in-place op can change the value.
            _cut(graph, [node.output()], node, keep=True, what=f"{layer!r} of {where}")
        else:
            _cut(graph, list(node.inputs())[1:], node, keep=False, what=f"{layer!r} of {where}")
        fn = torch._C._create_function_from_graph(f"invariance_cut_{len(stages)}", graph)
        stages.append((fn, mod))
        for name in parts[:k]:
            mod = getattr(mod, name)
        parts = parts[k:]

    def run(x: Any) -> Any:
        args: tuple[Any, ...] = (x,)
        for fn, owner in stages:
            try:
                out = fn(owner._c, *args)
            except torch.jit.Error as exc:
                if _NOT_REACHED not in str(exc):
                    raise
                raise EmbeddingError(
                    f"layer {layer!r} of {where} did not run on this batch: an if of the scripted forward took the "
                    "branch without it; choose a --layer that every input reaches") from None
            args = out if isinstance(out, tuple) else (out,)
        return args[0]

    return run, layout


_NOT_REACHED = "invariance: the layer's branch was not taken"


def _cut(graph: Any, values: list[Any], at: Any, *, keep: bool, what: str) -> None:
    """Make ``values`` the outputs of ``graph`` and remove every node after ``at`` (and ``at``
    itself unless ``keep``): a dead-code pass keeps module calls, which may have side effects,
    so without this every cut would run the whole forward.

    When ``at`` sits inside ``if`` blocks, each enclosing ``prim::If`` returns the values from
    the branch that holds ``at`` and raises :data:`_NOT_REACHED` in the other (the run refuses
    that batch; no placeholder is ever read). A call inside a loop is refused
    (LayerNotFoundError): which iteration's value to read is not ours to guess.
    """
    block = at.owningBlock()
    nodes = list(block.nodes())
    drop = nodes[nodes.index(at) + (1 if keep else 0):]
    while True:
        owner = block.owningNode()
        if owner is not None and owner.kind() != "prim::If":
            raise LayerNotFoundError(
                f"{what} is called inside a loop of the scripted forward, so a cut graph cannot tell which "
                "iteration's value to read; read it from the model as package.module:factory (its hooks "
                "number each call, --layer NAME#k), or choose another --layer")
        _clear_results(graph, block)  # the old results are no longer computed
        for n in reversed(drop):
            n.destroy()
        if owner is None:
            for v in values:
                graph.registerOutput(v)
            if len(values) != 1:
                graph.makeMultiOutputIntoTuple()  # a method returns one value
            return
        other = next(b for b in owner.blocks() if b != block)
        other.returnNode().removeAllInputs()
        with graph.insert_point_guard(other.returnNode()):  # as TorchScript compiles `raise` in a branch
            graph.insertNode(graph.create("prim::RaiseException",
                                          [graph.insertConstant(_NOT_REACHED), graph.insertConstant(None)], 0))
            for v in values:
                hole = graph.insertNode(graph.create("prim::Uninitialized"))
                hole.output().setType(v.type())
                other.registerOutput(hole.output())
        for v in values:
            block.registerOutput(v)
        # the if's own outputs become the branches' new ones (every use of the old ones comes after it)
        block = owner.owningBlock()
        nodes = list(block.nodes())
        drop = nodes[nodes.index(owner) + 1:]
        _clear_results(graph, block)
        for n in reversed(drop):
            n.destroy()
        drop = []
        while owner.outputsSize():
            owner.eraseOutput(owner.outputsSize() - 1)
        for v in values:
            owner.addOutput().setType(v.type())
        values = list(owner.outputs())


def _clear_results(graph: Any, block: Any) -> None:
    if block.owningNode() is None:
        while len(list(graph.outputs())):
            graph.eraseOutput(0)
    else:
        block.returnNode().removeAllInputs()


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _model_output(out: Any, path: str) -> Any:
    """The model's own output as one tensor. A model that returns several (``(embedding,
    logits)``) is refused: which one is the embedding is not ours to guess."""
    if isinstance(out, dict) or (isinstance(out, (tuple, list)) and len(out) != 1):
        parts = list(out.items()) if isinstance(out, dict) else list(enumerate(out))
        shown = ", ".join(f"{k}: {list(v.shape) if hasattr(v, 'shape') else type(v).__name__}" for k, v in parts)
        raise LayerNotFoundError(
            f"{path} returns {len(parts)} values ({shown}), so its 'output' layer is ambiguous; name the "
            "module that produces the embedding with --layer (see --invariance-list-layers), or pass "
            "--model module:factory returning a model whose output is the embedding")
    return _first(out)


class TorchEmbedder:
    """A torch model; layers are module paths (``named_modules``) plus ``output``, ``#k`` for the k-th call."""

    backend = "torch"

    def __init__(self, spec: str, *, device: str = "auto", weights: str | None = None,
                 trust_pickle: bool = False, factory: bool = False, input_layout: str = "auto",
                 layer_layout: str = "auto"):
        torch = require("torch", "loading torch models")
        self.path = spec
        self.name = spec.split(":")[-1] if factory else Path(spec).stem
        module, self.kind, self.sha256, contract = _load_module(
            spec, weights=weights, trust_pickle=trust_pickle, factory=factory, layout_option=input_layout)
        self.device = _torch_device(torch, device)
        self.provider = f"torch ({self.kind})"
        self.module = module.to(self.device)
        try:
            self.module.eval()  # batch statistics and dropout off; a file that ignores this is caught by the probe
        except NotImplementedError:  # some torch versions' exported modules refuse eval(): the probe decides
            pass
        if contract is None:
            params = [p for p in self.module.parameters() if p.is_floating_point()] if hasattr(self.module, "parameters") else []
            dtype = str(params[0].dtype).replace("torch.", "") if params else "float32"
            layout = input_layout if input_layout in LAYOUTS else "nchw"
            contract = InputContract(layout=layout, dtype=dtype if dtype in ("float16", "float64") else "float32",
                                     layout_source="option" if input_layout in LAYOUTS else "torch convention")
        self.contract = contract
        self.input_shape = contract.chw
        self.layer_layout = layer_layout
        self.default_layer = OUTPUT
        self._script: dict[str, tuple[Callable[[Any], Any], str | None]] = {}
        self._layouts: dict[str, str | None] = {}

    @property
    def calls_traced(self) -> bool:
        """Whether :meth:`trace_layers` sees each call of a module (TorchScript: no hooks)."""
        import torch

        return not isinstance(self.module, torch.jit.ScriptModule)

    def layers(self) -> list[str]:
        # Names starting with "_" are torch.export's internals (guards), not layers.
        return [OUTPUT] + [n for n, _ in self.module.named_modules() if n and not n.startswith("_")]

    def _module_order(self) -> list[str]:
        """The modules as a traced listing orders them, each after the modules it calls (forward
        hooks fire so): TorchScript's from its graph, otherwise definition order so arranged."""
        import torch

        if isinstance(self.module, torch.jit.ScriptModule):
            return _script_order(self.module)
        return post_order(self.layers()[1:])

    def _hooked(self, x: Any, layers: list[str]) -> dict[str, Any]:
        """One forward with a hook on every requested module: ``{layer: activation}``."""
        import torch

        parsed = {layer: split_call(layer) for layer in layers}
        modules = dict(self.module.named_modules())
        captured: dict[str, list[Any]] = {name: [] for name, _ in parsed.values()}
        marks: dict[str, list[int]] = {name: [] for name, _ in parsed.values()}
        calls: list[tuple[Any, tuple[int, ...], bool]] = []
        want_layout = any(layer not in self._layouts for layer in layers)

        def hook(name: str) -> Callable[[Any, Any, Any], None]:
            def on_target(_m: Any, _i: Any, out: Any) -> None:
                # A copy now: a later in-place op (torchvision's `out += identity`, ReLU(inplace=True))
                # would otherwise change the activation read after the forward.
                captured[name].append(_first(out).clone())
                marks[name].append(len(calls) - 1)
            return on_target

        def on_any(m: Any, _i: Any, out: Any) -> None:
            o = _first(out)
            calls.append((m, tuple(o.shape) if hasattr(o, "shape") else (), not any(True for _ in m.children())))

        # The global hook runs before a module's own hooks, so a mark points at its own call.
        handles = [torch.nn.modules.module.register_module_forward_hook(on_any)] if want_layout else []
        handles += [modules[name].register_forward_hook(hook(name)) for name in captured if name != OUTPUT]
        try:
            out = self.module(x)
        finally:
            for h in handles:
                h.remove()
        if OUTPUT in captured:
            captured[OUTPUT], marks[OUTPUT] = [_model_output(out, self.path)], [len(calls) - 1]
        acts = {}
        for layer, (name, index) in parsed.items():
            acts[layer] = pick_call(captured[name], layer, index, self.path)
            if want_layout and layer not in self._layouts:
                self._layouts[layer] = layout_from_calls(calls, marks[name][0 if index is None else index - 1])
        return acts

    def _script_run(self, x: Any, layer: str) -> Any:
        """A TorchScript module cannot be hooked: its forward graph is cut at ``layer``."""
        name, index = split_call(layer)
        if name == OUTPUT:
            if layer not in self._script:
                ret = next(iter(self.module.graph.return_node().inputs()))
                lay = script_value_layout(self.module, ret)
                self._script[layer] = (self.module, "nchw" if lay == "param" else lay)
            return _model_output(self.module(x), self.path)
        if layer not in self._script:
            self._script[layer] = _script_layer_fn(self.module, name, index, self.path)
        return _first(self._script[layer][0](x))  # a module returning a tuple: its first value, as hooks read it

    def _script_trace(self, batch: Any) -> list[tuple[str, tuple[int | None, ...]]]:
        """:meth:`trace_layers` for TorchScript: one partial forward per module (its cut graph,
        kept for the run), so that a tensor whose first axis is not the batch is known. A module
        that cannot be cut (not called, or called several times) keeps an unknown shape."""
        import torch

        x, seen = self._input(batch), []
        for layer in self._module_order() + [OUTPUT]:
            try:  # run once each: not worth the JIT's profiling and optimising passes
                with torch.inference_mode(), torch.jit.optimized_execution(False):
                    out = _first(self._script_run(x, layer))
            except Exception:  # noqa: BLE001 - a listing: the run names the error if this layer is chosen
                if layer != OUTPUT:  # several outputs: no 'output' layer (see _model_output)
                    seen.append((layer, ()))
                continue
            shape = tuple(out.shape) if hasattr(out, "shape") else ()
            seen.append((layer, (None, *shape[1:]) if shape and shape[0] == len(x) else shape))
        return seen

    def _run(self, x: Any, layers: list[str]) -> dict[str, Any]:
        import torch

        known = set(self.layers())
        for layer in layers:
            name = split_call(layer)[0]
            if name not in known:
                raise unknown_layer(name, self.layers(), self.path)
        if isinstance(self.module, torch.jit.ScriptModule):
            # One cut graph per layer (each runs the forward up to its layer): TorchScript
            # has no hooks, so a sweep costs more than one pass here (docs/models.md).
            return {layer: self._script_run(x, layer) for layer in layers}
        return self._hooked(x, layers)

    def activation_layout(self, layer: str) -> str | None:
        if self.layer_layout in LAYOUTS:
            return self.layer_layout
        return self._script[layer][1] if layer in self._script else self._layouts.get(layer)

    def _input(self, batch: Any) -> Any:
        """An NCHW batch (numpy or torch) -> the model's layout and dtype, on its device."""
        torch = require("torch", "")
        check_batch(batch, self.input_shape, self.path)
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        x = x.to(self.device, non_blocking=True).float()
        if self.contract.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        x = torch.round(x * 255).clamp(0, 255).to(torch.uint8) if self.contract.dtype == "uint8" \
            else x.to(getattr(torch, self.contract.dtype))
        return x.contiguous()

    def forward_many(self, batch: Any, layers: list[str]) -> dict[str, np.ndarray]:
        """Raw activations (float32 numpy) of every one of ``layers`` from one forward per chunk."""
        torch = require("torch", "")
        layers = list(dict.fromkeys(layers))
        x = self._input(batch)

        def call(chunk: Any) -> list[np.ndarray]:
            with torch.inference_mode():
                t = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(chunk).to(self.device)
                acts = self._run(t, layers)
            return [acts[layer].float().cpu().numpy() for layer in layers]

        outs = call(x) if self.contract.takes(len(x)) else run_batched(call, x.cpu().numpy(), self.contract)
        return dict(zip(layers, outs))

    def forward(self, batch: Any, layer: str) -> np.ndarray:
        """Raw activation (float32 numpy) of ``layer`` for an NCHW batch (numpy or torch, any size)."""
        return self.forward_many(batch, [layer])[layer]

    def embed_many(self, batch: Any, layers: list[str], *, pool: str = "auto") -> dict[str, np.ndarray]:
        """Every one of ``layers`` pooled to ``[N, D_layer]`` (see :mod:`._pool`), from one forward."""
        return pool_outputs(self, self.forward_many(batch, layers), pool, batch)

    def embed(self, batch: Any, layer: str, *, pool: str = "auto") -> np.ndarray:
        """``batch``: numpy array or torch tensor ``[N, C, H, W]`` (a tensor may already be on the device)."""
        return self.embed_many(batch, [layer], pool=pool)[layer]

    def trace_layers(self, batch: Any = None) -> list[tuple[str, tuple[int | None, ...]]]:
        """``(layer, output shape)`` of every module call in forward order (when each finishes),
        ``name#k`` for the k-th call of a module run several times, then ``output``.

        Needs a ``batch`` (one forward with a hook on every module); without one, the
        modules with unknown shapes, each after the modules inside it. TorchScript has no
        hooks: its modules in the order of its forward graph's calls (the order hooks give),
        each shape from the module's own cut graph.
        """
        import torch

        if batch is None:
            return [(la, ()) for la in self._module_order() + [OUTPUT]]
        if isinstance(self.module, torch.jit.ScriptModule):
            return self._script_trace(batch)
        names = {id(m): n for n, m in self.module.named_modules() if n and not n.startswith("_")}
        seen: list[tuple[str, tuple[int, ...]]] = []

        def on_any(m: Any, _i: Any, out: Any) -> None:
            o = _first(out)
            if id(m) in names:
                shape = tuple(o.shape) if hasattr(o, "shape") else ()
                batch_first = bool(shape) and shape[0] == len(batch)  # axis 0 as None: the batch
                seen.append((names[id(m)], (None, *shape[1:]) if batch_first else shape))

        handle = torch.nn.modules.module.register_module_forward_hook(on_any)
        try:
            with torch.inference_mode():
                out = self.module(self._input(batch))
        finally:
            handle.remove()
        counts: dict[str, int] = {}
        for name, _ in seen:
            counts[name] = counts.get(name, 0) + 1
        order, k = [], dict.fromkeys(counts, 0)
        for name, shape in seen:
            k[name] += 1
            order.append((f"{name}#{k[name]}" if counts[name] > 1 else name, shape))
        # A model that returns several values has no single 'output' layer (see _model_output).
        single = not isinstance(out, dict) and (not isinstance(out, (tuple, list)) or len(out) == 1)
        return order + ([(OUTPUT, (None, *tuple(_first(out).shape)[1:]))] if single else [])
