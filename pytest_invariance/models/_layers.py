"""Which layers a run reads: ``--layer`` (repeatable) and ``--invariance-layers``.

``--invariance-layers`` takes ``all``, a glob (``blocks.*``, ``*/Relu_output_0``) or a
comma-separated list of names and globs. Every spec is resolved against the model's
layers in forward order (:meth:`Embedder.trace_layers`), so a sweep's layers, its test
ids and its depth curves run from input to output whatever order they were typed in.
A name that is not a layer, or a glob that matches none, is one error naming the option.
"""
from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Iterable

from ..errors import LayerNotFoundError
from ._common import names_layer, unknown_layer

if TYPE_CHECKING:
    import numpy as np

    from ._base import Embedder

OPT_LAYERS = "--invariance-layers"
OPT_LIST_LAYERS = "--invariance-list-layers"
_GLOB = set("*?[")


def is_glob(spec: str) -> bool:
    return bool(_GLOB & set(spec))


def split_spec(spec: str) -> list[str]:
    """``'a, b*,c'`` -> ``['a', 'b*', 'c']``; ``'all'`` -> ``['*']``; ``\\,`` is a comma inside
    a name (``'feat\\, a'`` -> ``['feat, a']``; or give such a name to ``--layer``, verbatim)."""
    items = [s.strip().replace("\\,", ",") for s in re.split(r"(?<!\\),", spec) if s.strip()]
    return ["*" if s == "all" else s for s in items]


def select_layers(order: list[str], known: Iterable[str], patterns: list[str], option: str,
                  model: str, calls_known: bool = True, not_per_image: Iterable[str] = ()) -> list[str]:
    """The layers named by ``patterns`` (names or globs), in the forward ``order``.

    Parameters
    ----------
    order : list of str
        Every layer in forward order (``name#k`` for repeated calls).
    known : iterable of str
        Names the backend accepts (a bare module name of a repeated module is known but
        not in ``order``; asking for it is refused by the backend with the ``#k`` names).
    patterns : list of str
        Names and globs; a name is kept even when the trace could not place it.
    calls_known : bool
        Whether ``order`` counts each module's calls (False for TorchScript, which has no
        hooks: a ``name#k`` is then left to the backend, which counts them in its graph).
    not_per_image : iterable of str
        Traced layers whose first axis is not the batch: a glob passes over them (named
        exactly, one is refused by the start-up probe).
    option : str
        The option that named them, for the error message.

    Raises
    ------
    LayerNotFoundError
        A name that is not a layer, or a glob that matches none; the message names ``option``.
    """
    known = set(known)
    chosen: set[str] = set()
    extra: list[str] = []
    for pat in patterns:
        if pat in order:  # an exact name wins over a glob or a '#k' call index (ONNX 'x[0]', 'relu#1')
            chosen.add(pat)
        elif is_glob(pat) and pat not in known:
            hits = [la for la in order if fnmatch.fnmatchcase(la, pat)]
            if hits and not (hits := [la for la in hits if la not in set(not_per_image)]):
                raise LayerNotFoundError(f"{option} {pat!r} matches only layers of {model} whose first axis is "
                                         f"not the batch (no row per image); {OPT_LIST_LAYERS} marks them")
            if not hits:
                shown = ", ".join(order[:12]) + (f", ... ({len(order)} in all)" if len(order) > 12 else "")
                raise LayerNotFoundError(f"{option} {pat!r} matches no layer of {model}; "
                                         f"layers in forward order: {shown} ({OPT_LIST_LAYERS} lists them all)")
            chosen.update(hits)
        elif f"{pat}#1" in order:  # a module the forward calls more than once: which call?
            calls = ", ".join(la for la in order if la.rpartition("#")[0] == pat)
            raise LayerNotFoundError(f"{option} {pat}: layer {pat!r} of {model} runs more than once per forward; "
                                     f"name one call with --layer: {calls}")
        elif calls_known and names_layer(pat, known) and (pat.rpartition("#")[0] in order
                                                          or f"{pat.rpartition('#')[0]}#1" in order):
            base = pat.rpartition("#")[0]  # traced, but without this call
            calls = [la for la in order if la == base or la.rpartition("#")[0] == base]
            raise LayerNotFoundError(f"{option} {pat}: layer {base!r} of {model} runs {len(calls)} time(s) per "
                                     f"forward; name one of: {', '.join(calls)}")
        elif names_layer(pat, known):
            if pat not in extra:  # not traced (TorchScript, no forward yet): the backend checks it
                extra.append(pat)
        else:
            err = unknown_layer(pat, sorted(known), model)
            raise LayerNotFoundError(f"{option} {pat}: {err}") from None
    return [la for la in order if la in chosen] + extra


# A torch model of dynamic input size whose size no suite or option gives is traced at
# this size, for its layers' names, forward order and call counts only (not shapes).
TRACE_SIZE = (224, 224)


def trace_names(emb: "Embedder", shape: tuple[int | None, ...], seed: int = 0
                ) -> tuple[list[tuple[str, tuple[int | None, ...]]], bool]:
    """``(trace, shapes_known)``: :meth:`Embedder.trace_layers` at ``shape`` (C, H, W); when
    H or W is unknown, names from one forward at :data:`TRACE_SIZE` with the shapes dropped
    (a model that cannot take that size: the untraced names, as the backend lists them)."""
    sample = sample_batch(shape, seed)
    if sample is not None or emb.backend != "torch":
        return emb.trace_layers(sample), sample is not None
    try:
        trace = emb.trace_layers(sample_batch((shape[0] or 3, *TRACE_SIZE), seed))
    except Exception:  # noqa: BLE001 - the size is a guess; fall back to the untraced names
        return emb.trace_layers(None), False
    return [(name, ()) for name, _ in trace], False


def sample_batch(shape: tuple[int | None, ...] | None, seed: int = 0) -> "np.ndarray | None":
    """One seeded random image ``float32[1, C, H, W]`` for a trace, or None when H or W is unknown."""
    import numpy as np

    if not shape or any(d is None for d in shape):
        return None
    return np.random.default_rng(seed).random((1, *shape), dtype=np.float32)  # type: ignore[arg-type]


def per_image(shape: tuple[int | None, ...]) -> bool:
    """Whether a traced shape (see :func:`describe_layers`) has the batch on axis 0, or is unknown."""
    return not shape or shape[0] is None


def describe_layers(trace: list[tuple[str, tuple[int | None, ...]]], default: str) -> list[str]:
    """Lines of ``--invariance-list-layers``: each layer and its output shape, in forward order.

    ``trace`` shapes: the batch axis and unknown sizes are None; a first axis given as a
    number is not the batch (a sequence-first tensor, a weight) and is marked, since such
    a layer gives no row per image."""
    width = max((len(n) for n, _ in trace), default=0)
    lines = []
    for name, shape in trace:
        dims = "[" + ", ".join("N" if i == 0 and d is None else "?" if d is None else str(d)
                               for i, d in enumerate(shape)) + "]" if shape else "[?]"
        mark = "  (default)" if name == default else ""
        if not per_image(shape):
            mark += ("  (axis 0 is not the batch: a glob passes over it; named, a sequence-first [T, N, D] "
                     "is read with --invariance-pool cls or mean)")
        lines.append(f"{name:<{width}}  {dims}{mark}")
    return lines
