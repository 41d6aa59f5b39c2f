"""The --model's check before any test runs: does it take each suite's input, and can it be read?

On the controller (``pytest_sessionstart``) the suites are found from the command-line
paths, so that with pytest-xdist a bad model is still one line before the workers
start, and the header names each suite the model does not take; on each process
``pytest_collection_modifyitems`` skips that suite's tests with the reason (a run that
audits nothing is then not green, see ``_outcomes``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from .checks import Suite
from .checks._suite import CONFIG_NAME
from .models._contract import OPT_INPUT_BATCH

if TYPE_CHECKING:
    import numpy as np

    from ._audit import Audit, ModelRef
    from .errors import EmbeddingError

# Folders never searched for suites (environments, caches, VCS).
_PRUNE = {"node_modules", "site-packages", "__pycache__", "venv", "env"}


def discover_suites(args: Iterable[str], base: Path, rootdir: Path) -> list[Suite]:
    """Suites (``invariance.toml`` with a ``[suite] input``) at, under or above the given paths."""
    found: dict[Path, Suite] = {}
    for arg in args:
        path = Path(arg.split("::")[0])
        path = path if path.is_absolute() else base / path
        if not path.exists():
            continue
        suite = Suite.find(path, stop=rootdir)
        if suite.config:
            found[suite.root] = suite
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".") and d not in _PRUNE]
                if CONFIG_NAME in files:
                    s = Suite.load(Path(folder) / CONFIG_NAME)
                    found[s.root] = s
    return [s for s in found.values() if s.input_shape]


def probe_suites(audit: "Audit", suites: Iterable[Suite]) -> tuple[dict[str, str], list[str]]:
    """Probe the --model on each suite: ({suite root: reason it does not fit}, header lines).

    Raises the first InvarianceError (one line) of a model that fits but cannot be read.
    """
    from ._audit import model_names

    reasons, lines = {}, []
    for suite in suites:
        ref = audit.model(suite, model_names(audit.settings, suite)[0])
        reason = forward_probe(audit, suite, ref)[0]
        if reason:
            reasons[str(suite.root)] = reason
            lines.append(f"invariance: suite {suite.name}: skipped: {reason}")
        else:
            shown = ref.layer if len(ref.layers) == 1 else f"{len(ref.layers)} layers ({ref.layers[0]} ... {ref.layers[-1]})"
            lines.append(f"invariance: suite {suite.name}: {ref.name} layer={shown} pool={ref.pool} "
                         f"preprocessing: {ref.preprocess.describe()}{_size_note(audit, ref)}")
    return reasons, lines


def _size_note(audit: "Audit", ref: "ModelRef") -> str:
    """Why a model that declares no input H, W is fed the size it is (else "")."""
    shape = tuple(ref.embedder.input_shape or ())[1:]
    if not ref.user or ref.preprocess.size is None or (len(shape) == 2 and all(shape)) \
            or "size" in dict(audit.settings.preprocess):
        return ""
    h, w = ref.preprocess.size
    return (f" ({ref.embedder.path} declares no input size, so it is fed the suite's images resized to {h}x{w}, "
            f"the suite's [data] size; pass --invariance-preprocess size=HxW to feed another)")


def fed_shape(suite: Suite, ref: "ModelRef") -> tuple[int, int, int] | None:
    """``(C, H, W)`` the suite feeds ``ref`` after preprocessing, None when the suite does not say."""
    want = suite.input_shape
    if not want:
        return None
    c = ref.preprocess.channels or want[0]
    h, w = ref.preprocess.size or want[1:]
    return int(c), int(h), int(w)


def probe_shape(suite: Suite, ref: "ModelRef") -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the start-up forward: what the suite feeds, else (a suite that feeds
    the model at its own size, like factors) the size the preprocessing sets or the model
    declares; None when no size is known."""
    shape = fed_shape(suite, ref)
    if shape is not None:
        return shape
    e = ref.embedder
    c, h, w = (tuple(e.input_shape) + (None, None, None))[:3] if e.input_shape else (None, None, None)
    h, w = ref.preprocess.size or (h, w)
    if h is None or w is None:
        return None
    return int(ref.preprocess.channels or c or 3), int(h), int(w)


def forward_probe(audit: "Audit", suite: Suite, ref: "ModelRef") -> tuple[str | None, dict[str, int] | None]:
    """:func:`probe` once per suite and read-out in this process: (the reason the model does
    not fit the suite or None, each selected layer's embedding width or None when no size
    is known). The width check of --invariance-embeddings reuses the same forward."""
    import json

    key = ("start-up probe", str(suite.root), ref.embedder.sha256, tuple(ref.layers), ref.pool,
           json.dumps(ref.preprocess.to_dict(), sort_keys=True, default=str))
    if key not in audit._memo:  # only successes are kept: an error is raised to the caller each time
        audit._memo[key] = _probe(suite, ref, audit.seed)
    return audit._memo[key]  # type: ignore[no-any-return]


def probe(suite: Suite, ref: "ModelRef", seed: int = 0) -> str | None:
    """One forward before the tests: the reason the model does not fit the suite, or None.

    Raises an InvarianceError (one line) when it fits but cannot be read correctly: an
    ambiguous read-out, preprocessing a uint8 model cannot take, or embeddings that depend
    on which images share a batch (a model exported in training mode: batch statistics,
    dropout). Compares a batch of 4 against the same images one at a time, to 1e-4, at
    every selected layer (``ref.layers``), all read in the same forward.
    """
    return _probe(suite, ref, seed)[0]


def backend_failure(e: Any, x: "np.ndarray", layers: list[str], exc: Exception) -> "EmbeddingError":
    """The one-line error for the backend's own failure on a batch ``x`` met during
    extraction (see :func:`_failure`)."""
    from .errors import EmbeddingError, out_of_memory

    if out_of_memory(exc):  # neither the layer nor the input: the batch is too large for the device
        return EmbeddingError(f"{e.path} runs out of memory on a batch of {len(x)} images: {_first_line(exc)}; "
                              f"fix: pass a smaller --invariance-batch-size (images per model call; this batch "
                              f"held {len(x)})")
    return EmbeddingError(_failure(e, x, layers, exc, f"{e.path} fails", f" on a batch of {len(x)} images")[0])


def _raise_if_out_of_memory(e: Any, suite: Suite, n: int, exc: Exception) -> None:
    """Out of memory in the start-up check's forward of ``n`` images is no reason the model
    does not take the suite's input (it was a skip): one error naming the device."""
    from .errors import EmbeddingError, out_of_memory

    if out_of_memory(exc):
        raise EmbeddingError(f"{e.path} runs out of memory on {n} image(s) of suite {suite.name}'s start-up check: "
                             f"{_first_line(exc)}; fix: pass --device cpu, or free the device's memory") from None


# onnxruntime's status codes for a graph it cannot run at all (no kernel for an operator or
# element type, a failing execution provider), whatever input it is fed.
_ORT_CANNOT = (": NOT_IMPLEMENTED :", ": EP_FAIL :", ": ENGINE_ERROR :", ": INVALID_GRAPH :")


def _backend_cannot_run(exc: Exception) -> bool:
    """Whether the backend's error says it cannot run the model at all (no kernel for an
    operator or element type: onnxruntime's NOT_IMPLEMENTED, torch's 'not implemented for
    'Half''), rather than that the model does not take this input."""
    said = str(exc)
    return isinstance(exc, NotImplementedError) or any(c in said for c in _ORT_CANNOT) \
        or "not implemented for" in said


def _failure(e: Any, x: "np.ndarray", layers: list[str], exc: Exception, fails: str,
             unbatched: str = "") -> tuple[str, bool]:
    """``(message, fatal)`` after the backend's own error on ``x``.

    Fatal (the suite fits; the model or an option is the fault): the backend cannot run the
    model at all (names the element type it is fed), the graph runs at one batch size only
    (names --invariance-input-batch), or it runs on the other axis order (names
    --invariance-input-layout). Not fatal (the suite's input does not fit): the backend's
    reason (``fails`` + ``unbatched``), with the input size and channels it runs at when
    another one does (then the message names --invariance-preprocess). Each retry is the
    raw forward, without the pool: a layer the pool refuses is named after the input is fed."""
    from .models._contract import OPT_INPUT_LAYOUT

    said = f"{fails}{unbatched}: {_first_line(exc)}"
    if _backend_cannot_run(exc):
        dtype = e.contract.dtype
        fix = (f"re-export it with float32 input and weights (it takes {dtype})" if dtype != "float32"
               else "re-export it with operators the backend implements, or pass another --device")
        return (f"{said}; {e.provider} cannot run this model whatever input it is fed, so the suite is not the "
                f"fault: {fix}"), True
    runs_at = _runs_at(e, x, layers, str(exc))
    if runs_at is not None:
        if e.contract.batch_source == "option":
            return (f"{fails} in batches of {e.contract.batch} ({OPT_INPUT_BATCH} {e.contract.batch}) but runs in a "
                    f"batch of {runs_at}: pass {OPT_INPUT_BATCH} {runs_at}"), True
        return (f"{fails} in a batch of {len(x)} but runs in a batch of {runs_at}: its graph fixes the batch size "
                "although its input declares any (e.g. len(x) or a constant reshape at export); re-export it with a "
                f"dynamic batch, or pass {OPT_INPUT_BATCH} {runs_at}"), True
    layout = _runs_in_layout(e, x, layers)
    if layout is not None:
        shown = "[N, H, W, C] (channels-last)" if layout == "nhwc" else "[N, C, H, W] (channels-first)"
        return (f"{said}; it runs on {shown} input, so the axis order it is fed is the fault, not the layer: "
                f"pass {OPT_INPUT_LAYOUT} {layout}"), True
    fits = _runs_at_input(e, x, layers)
    if fits is None:
        return said, False
    c, h, w = fits
    return (f"{said}; it runs on a {c}x{h}x{w} input, so the input it is fed ({x.shape[1]}x{x.shape[2]}x"
            f"{x.shape[3]}) is the fault, not the layer: pass {feed_fix(x.shape[1:], fits)}"), False


def _runs_in_layout(e: Any, x: "np.ndarray", layers: list[str]) -> str | None:
    """After a failure on ``x``: the other axis order (``nhwc``/``nchw``) when the model runs
    on x fed in it, for a layout the user did not give; else None."""
    from dataclasses import replace

    told = e.contract
    if told.layout_source == "option":
        return None
    other = "nhwc" if told.layout == "nchw" else "nchw"
    e.contract = replace(told, layout=other)
    try:
        e.forward_many(x, layers)
    except Exception:  # noqa: BLE001 - not in this order either
        return None
    finally:
        e.contract = told
    return other


def feed_fix(fed: "Iterable[int]", takes: "Iterable[int | None]") -> str:
    """The --invariance-preprocess that turns the fed ``(C, H, W)`` into what the model
    ``takes`` (declared, or found by running it; None: any), e.g. ``--invariance-preprocess
    channels=1 --invariance-preprocess size=28x28``; "" when nothing known differs. One wording for every backend."""
    (c0, h0, w0), (c, h, w) = tuple(fed), tuple(takes)
    fix = [f"channels={c}"] if c is not None and c != c0 else []
    fix += [f"size={h}x{w}"] if h and w and (h, w) != (h0, w0) else []
    # One flag per key: the option takes one KEY=VALUE, so the hint pastes as printed.
    return " ".join(f"--invariance-preprocess {f}" for f in fix)


# Image sizes models are commonly built for, tried (largest first) after a failure.
_SIZES = (224, 160, 128, 112, 96, 64, 32, 28)


def _runs_at_input(e: Any, x: "np.ndarray", layers: list[str]) -> tuple[int, int, int] | None:
    """After a failure on the NCHW batch ``x``: the first ``(C, H, W)`` (x's channels first,
    then 1 <-> 3; x's size, square, then :data:`_SIZES`) at which ``e`` runs one of x's images
    resized, for a model whose input size is not fixed; None when none runs (the fault is not
    the input's size)."""
    import numpy as np
    import torch

    fixed = tuple(e.input_shape or ())[1:3]
    if x.ndim != 4 or (len(fixed) == 2 and None not in fixed):
        return None
    try:  # the image tried at other sizes must fail at this one, or the size is not the fault
        e.forward_many(np.ascontiguousarray(x[:1]), layers)
        return None
    except Exception:  # noqa: BLE001 - it fails here: try it at other sizes
        pass
    one = torch.from_numpy(np.ascontiguousarray(x[:1], dtype=np.float32))
    c0 = one.shape[1]
    for c in dict.fromkeys((c0, 1 if c0 == 3 else 3)):
        img = one if c == c0 else one.mean(1, keepdim=True) if c == 1 else one.expand(-1, 3, -1, -1)
        for s in dict.fromkeys((max(one.shape[2:]), *_SIZES)):
            if (c, s, s) == tuple(one.shape[1:]):
                continue
            y = torch.nn.functional.interpolate(img, size=(s, s), mode="bilinear", align_corners=False)
            try:
                e.forward_many(y.numpy(), layers)
            except Exception:  # noqa: BLE001 - not at this input either
                continue
            return c, s, s
    return None


def _first_line(exc: Exception) -> str:
    """The backend's own reason, in one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]


def _runs_at(e: Any, x: "np.ndarray", layers: list[str], reason: str = "") -> int | None:
    """After a failure on ``x``: the batch size the graph runs at, for a model whose batch
    is free or set by --invariance-input-batch (then tried as if free); None for a batch
    fixed in the file, or when no size runs. ``reason``: the backend's error, whose numbers
    (``requested shape:{3,32}``) are tried first."""
    from dataclasses import replace

    told = e.contract
    if told.batch and told.batch_source != "option":
        return None
    e.contract = replace(told, batch=None)
    try:
        return _only_batch(e, x, layers, reason)
    finally:
        e.contract = told


def _only_batch(e: Any, x: "np.ndarray", layers: list[str], reason: str = "") -> int | None:
    """The one batch size at which ``e`` runs every one of ``x``'s images (in batches of that
    size, the last one filled with copies), or None: tells a batch fixed inside the graph
    from a model that takes none of this input (fails at every size) or fails for another
    reason (runs at two sizes, e.g. BatchNorm in training mode on one image). Every image,
    not copies of the first: a forward that fails on some images at any size (a bug on
    bright ones) was blamed on the batch size when the first one ran alone. Tried: the
    numbers in the backend's ``reason``, then every size to 16 and the larger ones exporters
    are usually traced with (only after a failure, so the cost is paid once, by a model that
    does not run)."""
    import re

    import numpy as np

    def runs(n: int) -> bool:
        try:
            for s in range(0, len(x), n):
                e.forward_many(np.resize(x[s: s + n], (n, *x.shape[1:])), layers)
        except Exception:  # the backend's own error at this size too
            return False
        return True

    said = sorted({int(m) for m in re.findall(r"\d+", reason) if 0 < int(m) <= 64})  # cheap ones: a batch, not a width
    for n in dict.fromkeys([*said, *range(1, 17), 20, 24, 25, 32, 48, 50, 64, 100, 128, 256]):
        if n != len(x) and runs(n):
            other = next(k for k in (2, 3, 5) if k not in (n, len(x)))
            return None if runs(other) else n
    return None


def suite_layer_reason(suite: Suite, ref: "ModelRef") -> tuple[str, str] | None:
    """``(reason, layer)`` when the suite cannot read the --model at the layer it declares
    (``[suite] user_layer``, used when no --layer is given) because the model has no layer
    of that name; None when it has.

    A --layer the user gave was checked against the model at start-up (a usage error); a
    layer the suite chose is not the user's mistake, so that suite skips with this reason.
    """
    from .models._common import names_layer

    known = ref.embedder.layers()
    missing = [la for la in ref.layers if not names_layer(la, known)]
    if not ref.user or not missing:
        return None
    return (f"suite {suite.name} reads a --model at layer {missing[0]!r} (its [suite] user_layer) and "
            f"{ref.embedder.path} has no layer of that name: pass --layer NAME to audit one of its layers "
            "(--invariance-list-layers lists them)"), missing[0]


def _probe(suite: Suite, ref: "ModelRef", seed: int) -> tuple[str | None, dict[str, int] | None]:
    import numpy as np
    import torch

    from .errors import EmbeddingError, InputShapeError, InvarianceError

    e = ref.embedder
    shape = probe_shape(suite, ref)
    no_layer = suite_layer_reason(suite, ref)
    if shape is None:
        return no_layer and no_layer[0], None
    took = f"{e.path} expects input {e.contract.describe()}"
    if any(h is not None and h != f for h, f in zip(e.input_shape, shape)):
        fix = feed_fix(shape, e.input_shape)
        return (f"{took} but suite {suite.name} feeds float32[N, {', '.join(map(str, shape))}] (NCHW)"
                + (f"; to feed it, pass {fix}" if fix else "")
                + (f"; and pass --layer NAME: it has no layer {no_layer[1]!r} (the suite's user_layer)"
                   if no_layer else "")), None
    if no_layer:
        return no_layer[0], None
    p = ref.preprocess
    if e.contract.dtype == "uint8" and (p.scale != 1.0 or p.mean != (0.0,) or p.std != (1.0,) or p.prewhiten):
        raise EmbeddingError(f"{took}: a uint8 model gets 0-255 pixels and normalises them itself; "
                             "drop scale/mean/std/prewhiten from --invariance-preprocess")
    rng = np.random.default_rng(seed)
    x = p(torch.from_numpy(rng.random((4, *(suite.input_shape or shape)), dtype=np.float32)))
    layers = list(ref.layers)
    try:
        together = e.embed_many(x.numpy(), layers, pool=ref.pool)
    except InputShapeError as exc:
        return str(exc), None
    except InvarianceError:
        raise
    except Exception as exc:  # the backend's own error: the model does not take this input
        _raise_if_out_of_memory(e, suite, len(x), exc)
        message, fatal = _failure(e, x.numpy(), layers, exc, _fails(e, suite, shape))
        if fatal:  # the suite fits: the model, the backend or an input option is the fault
            raise EmbeddingError(message)
        return message, None
    for layer in layers:  # before the batch comparison, whose NaN difference would blame eval mode
        if together[layer].shape[0] != len(x):  # e.g. a shape constant: not one row per image
            raise EmbeddingError(f"{e.path} layer {layer!r} gives {together[layer].shape[0]} rows for {len(x)} images "
                                 "(its first axis is not the batch); leave it out of --layer / --invariance-layers")
        bad = int((~np.isfinite(together[layer]).all(axis=1)).sum())
        if bad:
            raise EmbeddingError(
                f"{e.path} layer {layer!r} gives NaN/Inf embeddings for {bad} of {len(x)} random images at suite "
                f"{suite.name}'s input: check the model's numerics at this layer and --invariance-preprocess")
    try:
        singles = [e.embed_many(x[i:i + 1].numpy(), layers, pool=ref.pool) for i in range(len(x))]
    except InvarianceError:
        raise
    except Exception as exc:  # it ran on the batch of 4: a batch fixed at 4 inside the graph, or no single image
        _raise_if_out_of_memory(e, suite, 1, exc)
        message, fatal = _failure(e, x[:1].numpy(), layers, exc, _fails(e, suite, shape))
        raise EmbeddingError(message if fatal else f"{e.path} runs suite {suite.name}'s input in a batch "
                             f"of {len(x)} but fails on one image: {_first_line(exc)}") from None
    for layer in layers:
        if any(one[layer].shape[0] != 1 for one in singles):  # e.g. as many tokens as probe images
            raise EmbeddingError(f"{e.path} layer {layer!r} gives {singles[0][layer].shape[0]} rows for 1 image "
                                 "(its first axis is not the batch); leave it out of --layer / --invariance-layers")
        batch_dependence(e, layer, together[layer], np.concatenate([one[layer] for one in singles]), len(x))
    return None, {layer: int(v.shape[1]) for layer, v in together.items()}


def _fails(e: Any, suite: Suite, chw: tuple[int, int, int]) -> str:
    """``m fails on suite s's input float64[N, 3, 64, 64]``: what the model was fed, in its
    element type and axis order (the contract casts the suite's float32 NCHW pixels)."""
    c, h, w = chw
    dims, order = ((c, h, w), "") if e.contract.layout == "nchw" else ((h, w, c), " (NHWC)")
    return f"{e.path} fails on suite {suite.name}'s input {e.contract.dtype}[N, {', '.join(map(str, dims))}]{order}"


def batch_dependence(e: Any, layer: str, together: "np.ndarray", alone: "np.ndarray", batch: int) -> None:
    """Raise the one-line EmbeddingError when rows embedded in a batch of ``batch`` images
    (``together``) differ from the same images embedded one at a time (``alone``) by more
    than 1e-4 of the layer's scale: the figures would depend on which images share a batch."""
    import numpy as np

    from .errors import EmbeddingError

    if not (np.isfinite(together).all() and np.isfinite(alone).all()):
        return  # NaN/Inf rows are refused by the finite check, naming the image (an inf scale warned here)
    scale = float(np.abs(together).max()) + 1e-6
    if not np.allclose(together, alone, atol=1e-4 * scale, rtol=1e-4):
        raise EmbeddingError(
            f"{e.path} layer {layer!r} gives different embeddings for the same image in a batch of {batch} and "
            f"alone (max difference {float(np.abs(together - alone).max()):.3g}): the model is not in inference "
            "mode (BatchNorm on batch statistics, active dropout: re-export it after model.eval()), branches on "
            "a statistic of the batch, or the layer's first axis is not the batch (sequence-first tokens in a "
            "graph with a fixed batch: choose another --layer)")
