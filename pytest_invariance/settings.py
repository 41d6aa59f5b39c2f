"""Resolved settings: CLI value if given, else the ini key, else the default — once.

Every option is declared here as data (name, ini key, parser, default, help) so that
plugin.py can register them in a loop and the README's option table has one source.
Parsers raise ``argparse.ArgumentTypeError`` so a bad value fails before collection
with one line that says what is wrong.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Option strings are constants so tests and docs refer to one spelling.
OPT_MODEL, OPT_LAYER, OPT_DEVICE = "--model", "--layer", "--device"
OPT_LAYERS, OPT_LIST_LAYERS, OPT_MAX_DIM = "--invariance-layers", "--invariance-list-layers", "--invariance-max-dim"


def parse_device(value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v):
        return v
    raise argparse.ArgumentTypeError(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N")


def _parse_int(value: str, minimum: int, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise argparse.ArgumentTypeError(f"{value!r} is not a {what} integer")
    return n


def parse_positive_int(value: str) -> int:
    return _parse_int(value, 1, "positive")


def parse_nonneg_int(value: str) -> int:
    return _parse_int(value, 0, "non-negative")


def parse_model_spec(value: str) -> str:
    # Either a file path (checked when loaded, so the error can name the backend) or
    # 'package.module:factory'. Reject the obviously malformed here.
    if not value.strip():
        raise argparse.ArgumentTypeError("--model needs a path (.onnx, .pt, .pt2) or 'module:factory'")
    return value.strip()


def parse_layer(value: str) -> str:
    """One layer name, verbatim (an ONNX tensor may be called ``feat, a#b``); checked against
    the model's layers later."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a layer name like 'ip1', 'layer4' or 'layer1.0.relu#2', got ''")
    return value


def parse_layers(value: str) -> str:
    """``all``, a glob, or comma-separated names and globs (``\\,`` is a comma inside a name);
    resolved against the model later."""
    from .models._layers import split_spec

    if not split_spec(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a layer selection; use all, a glob like 'layer*' "
                                         "or names like 'conv1,conv2,ip1'")
    return value


def parse_threshold(value: str) -> tuple[str, float]:
    # The qualifier may be a layer name: ONNX tensors ('/blocks/blocks.3/Add_output_0'), '#k' calls.
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-/:#\[\]]+)\s*=\s*(\S+?)\s*", value)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not METRIC=VALUE like 'mav_accuracy=0.9' or 'Smiling.fn_rate=0.45'"
        )
    num = m.group(2)
    try:
        f = float(num[:-1]) / 100 if num.endswith("%") else float(num)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: {num!r} is not a number") from None
    if not math.isfinite(f):
        raise argparse.ArgumentTypeError(f"{value!r}: a threshold must be a finite number")
    return m.group(1), f


def parse_factor_type(value: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([^=]+?)\s*=\s*(binary|categorical|continuous|ignore)\s*", value, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not COLUMN=TYPE with TYPE binary, categorical, continuous or ignore, like 'yaw=continuous'")
    return m.group(1), m.group(2).lower()


def parse_gate(value: str) -> tuple[str, ...]:
    cols = tuple(c.strip() for c in value.split(",") if c.strip())
    if not cols:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of columns like 'Smiling,yaw' (or 'all')")
    return cols


def parse_tolerance(value: str) -> Any:
    """'METRIC=ABS' or 'METRIC=PCT%' -> history.Tolerance (raises ArgumentTypeError)."""
    from .history import parse_tolerance as _parse

    tol = _parse(value)
    if not math.isfinite(tol.amount):
        raise argparse.ArgumentTypeError(f"{value!r}: a tolerance must be a finite number")
    return tol


def parse_progress(value: str) -> str:
    v = value.strip().lower()
    if v not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a progress mode; use auto, on or off")
    return v


def _parse_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    v = value.strip().lower()
    if v not in choices:
        raise argparse.ArgumentTypeError(f"{value!r} is not {what}; use {'|'.join(choices)}")
    return v


def parse_pool(value: str) -> str:
    return _parse_choice(value, ("auto", "gap", "cls", "mean", "flatten"), "a pooling mode")


def parse_layout(value: str) -> str:
    return _parse_choice(value, ("auto", "nchw", "nhwc"), "a layout")


def parse_preprocess(value: str) -> tuple[str, Any]:
    """'KEY=VALUE' of the model's preprocessing -> (Preprocess field, parsed value)."""
    from .embeddings._preprocess import parse_preprocess_item

    try:
        return parse_preprocess_item(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_path(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return value.strip()


def is_factory_spec(spec: str) -> bool:
    """True for a ``package.module:factory`` model spec, which is not a file path."""
    return bool(re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", spec)) and not Path(spec).exists()


def absolute_path(value: str, base: str | Path) -> str:
    """The one rule for paths given to the plugin: ``~`` expanded, relative to ``base``.

    ``base`` is the folder where pytest was started for command-line values and defaults
    (as pytest's own ``--junitxml``), the ini file's folder for ini values. A
    ``module:factory`` model spec is returned unchanged.
    """
    if is_factory_spec(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(base) / path)


@dataclass(frozen=True)
class Option:
    flag: str
    parser: Callable[[str], Any] | None  # None: a boolean flag
    default: Any
    help: str
    multiple: bool = False
    metavar: str | None = None
    path: bool = False  # a file or folder: made absolute once, see absolute_path()

    @property
    def dest(self) -> str:
        return "invariance_" + self.flag.lstrip("-").replace("invariance-", "").replace("-", "_")

    @property
    def ini(self) -> str:
        return self.dest


OPTIONS: tuple[Option, ...] = (
    Option(OPT_MODEL, parse_model_spec, None, "model to audit: .onnx, TorchScript .pt, torch.export .pt2, "
           "or module.path:factory (with --invariance-weights). Default: each suite's bundled model.", metavar="PATH", path=True),
    Option(OPT_LAYER, parse_layer, [], "layer to embed from: ONNX tensor name or torch module path "
           "(default: the model's output, or the suite's declared layer); repeat it to audit several layers "
           "from one forward pass", multiple=True, metavar="NAME"),
    Option(OPT_LAYERS, parse_layers, None, "layers to audit, in forward order: all, a glob ('blocks.*') or "
           "comma-separated names/globs; every check runs once per layer", metavar="SPEC"),
    Option(OPT_LIST_LAYERS, None, False, "print the model's layers with their output shapes, in forward "
           "order, and exit"),
    Option(OPT_MAX_DIM, parse_nonneg_int, 2048, "a layer wider than this is reduced to it by a seeded "
           "random projection (0: never)", metavar="N"),
    Option(OPT_DEVICE, parse_device, "auto", "auto|cpu|cuda[:N]; auto picks CUDA when present", metavar="DEV"),
    Option("--invariance-weights", parse_path, None, "state_dict file for a module:factory model", metavar="PATH", path=True),
    Option("--invariance-trust-pickle", None, False, "allow loading pickled full torch modules (runs code from the file)"),
    Option("--invariance-pool", parse_pool, "auto", "how a layer becomes one vector per image: auto (mean over H, W "
           "of a conv map; refuses token sequences), gap, cls (token 0), mean (token mean), flatten", metavar="MODE"),
    Option("--invariance-input-layout", parse_layout, "auto", "axis order of the model's image input when its "
           "declared shape is ambiguous: nchw or nhwc", metavar="LAYOUT"),
    Option("--invariance-input-batch", parse_positive_int, None, "feed the model exactly N images per call (the "
           "last padded): for a graph whose batch size was fixed at export although its input declares any batch",
           metavar="N"),
    Option("--invariance-layer-layout", parse_layout, "auto", "axis order of a 4-D layer when the graph does not "
           "tell: nchw or nhwc", metavar="LAYOUT"),
    Option("--invariance-preprocess", parse_preprocess, [], "preprocessing of --model, KEY=VALUE: size=160 or 224x224, "
           "scale=255, mean=0.485,0.456,0.406, std=..., channels=1|3, channel_order=rgb|bgr, prewhiten=true",
           multiple=True, metavar="K=V"),
    Option("--invariance-batch-size", parse_positive_int, 256, "images per model call", metavar="N"),
    Option("--invariance-workers", parse_nonneg_int, 0, "DataLoader worker processes for decoding images", metavar="N"),
    Option("--invariance-data-dir", parse_path, None, "root folder of datasets (MNIST IDX files, CelebA layout, ...)", metavar="DIR", path=True),
    Option("--invariance-cache-dir", parse_path, ".cache/invariance", "embedding cache folder", metavar="DIR", path=True),
    Option("--invariance-no-cache", None, False, "neither read nor write the embedding cache"),
    Option("--invariance-clear-cache", None, False, "empty the embedding cache before the run"),
    Option("--invariance-seed", parse_nonneg_int, 0, "seed of every probe, bootstrap and permutation", metavar="N"),
    Option("--invariance-json", parse_path, "reports/results.json", "results JSON file", metavar="PATH", path=True),
    Option("--invariance-report", parse_path, "reports/index.html", "self-contained HTML report", metavar="PATH", path=True),
    Option("--invariance-no-report", None, False, "do not write the HTML report"),
    Option("--invariance-history", parse_path, "reports/history.sqlite", "SQLite history of runs", metavar="PATH", path=True),
    Option("--model-version", parse_path, None, "tag of this model version in the history (default: sha256[:12])", metavar="TAG"),
    Option("--invariance-baseline", parse_path, None, "compare every figure to this stored version (TAG or 'latest')", metavar="TAG"),
    Option("--invariance-tolerance", parse_tolerance, [], "allowed move toward failure against the baseline, METRIC=ABS or METRIC=PCT%",
           multiple=True, metavar="M=T"),
    Option("--invariance-threshold", parse_threshold, [], "override a threshold's value, METRIC=VALUE or QUALIFIER.METRIC=VALUE",
           multiple=True, metavar="M=V"),
    Option("--invariance-factor-type", parse_factor_type, [], "factors suite: type of a label column, "
           "COLUMN=binary|categorical|continuous|ignore (default: inferred)", multiple=True, metavar="COL=TYPE"),
    Option("--invariance-gate", parse_gate, [], "factors suite: columns that must be invariant (gated), "
           "comma-separated, or 'all'; the others are measured only", multiple=True, metavar="COLS"),
    Option("--invariance-skip-bad", None, False, "skip unreadable or unlabelled images (and report how many) instead of failing"),
    Option("--invariance-erase", None, False, "also erase each leaking factor with LEACE (concept-erasure) and "
           "report the probes and the task before/after (slower)"),
    Option("--invariance-embeddings", parse_path, None, "precomputed embeddings: a Parquet file or folder of shards "
           "(an id column, one vector column per layer; see docs/scale.md) joined to the suites' images by id, "
           "instead of running the model", metavar="PATH", path=True),
    Option("--invariance-embeddings-unverified", None, False, "audit --invariance-embeddings whose metadata does "
           "not record the model sha256, layers, pool or preprocessing (results.json then records them as "
           "unverified); without it such shards are refused"),
    Option("--invariance-max-rows", parse_positive_int, None, "rows of embeddings held at once by the streamed "
           "probes and the regression and class-mean fits, and the seeded subsample of training rows the SVM "
           "probes fit on (docs/scale.md)", metavar="N"),
    Option("--invariance-progress", parse_progress, "auto", "progress bar: auto (on a terminal, not in CI), on, off", metavar="MODE"),
)


@dataclass(frozen=True)
class Settings:
    """Everything the fixtures need, resolved once in ``pytest_configure``."""

    model: str | None = None
    layer: tuple[str, ...] = ()  # --layer, repeatable
    layers: str | None = None    # --invariance-layers spec
    list_layers: bool = False
    max_dim: int = 2048
    device: str = "auto"
    weights: str | None = None
    trust_pickle: bool = False
    pool: str = "auto"
    input_layout: str = "auto"
    input_batch: int | None = None
    layer_layout: str = "auto"
    preprocess: tuple[tuple[str, Any], ...] = ()
    batch_size: int = 256
    workers: int = 0
    data_dir: str | None = None
    cache_dir: str = ".cache/invariance"
    no_cache: bool = False
    clear_cache: bool = False
    seed: int = 0
    json: str = "reports/results.json"
    report: str = "reports/index.html"
    no_report: bool = False
    history: str = "reports/history.sqlite"
    model_version: str | None = None
    baseline: str | None = None
    tolerance: tuple[Any, ...] = ()
    threshold: tuple[tuple[str, float], ...] = ()
    factor_type: tuple[tuple[str, str], ...] = ()
    gate: tuple[tuple[str, ...], ...] = ()
    skip_bad: bool = False
    progress: str = "auto"
    erase: bool = False
    embeddings: str | None = None
    embeddings_unverified: bool = False
    max_rows: int | None = None
    rootdir: str = "."  # base of paths still relative: the folder where pytest was started

    @property
    def layer_patterns(self) -> list[str]:
        """Every layer name and glob of ``--layer`` and ``--invariance-layers`` (``all`` is ``*``)."""
        from .models._layers import split_spec

        return list(self.layer) + (split_spec(self.layers) if self.layers else [])

    def resolve_path(self, p: str | None) -> Path | None:
        """``p`` as an absolute Path (see :func:`absolute_path`); None stays None."""
        return None if p is None else Path(absolute_path(p, self.rootdir))


def settings_field(opt: Option) -> str:
    name = opt.dest.removeprefix("invariance_")
    return name


class Refused:
    """A command-line value its parser refused, held until the outputs are cleared.

    argparse would stop pytest at once (exit 4) on a parser's ArgumentTypeError, before any
    hook of this plugin runs, so the previous run's results.json and report would stay in
    place as if this run had written them. The parser is wrapped (:func:`deferred`) to
    return this instead; ``plugin._resolve_settings`` removes the outputs, then refuses the
    run with the same message.
    """

    def __init__(self, flag: str, message: str) -> None:
        self.flag, self.message = flag, message

    def __repr__(self) -> str:
        return f"argument {self.flag}: {self.message}"


def deferred(opt: Option) -> Callable[[str], Any]:
    """``opt``'s parser for argparse: a refused value becomes a :class:`Refused`."""
    parse = opt.parser
    assert parse is not None

    def parse_or_hold(value: str) -> Any:
        try:
            return parse(value)
        except argparse.ArgumentTypeError as exc:
            return Refused(opt.flag, str(exc))

    parse_or_hold.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its own errors
    return parse_or_hold


def refused(value: Any) -> Refused | None:
    """The first refused value of an option's parsed value (a list for a repeated option)."""
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, Refused):
            return v
    return None


def coerce_ini(opt: Option, raw: Any) -> Any:
    """Ini values arrive as strings (or lists for linelist keys); parse them like the CLI."""
    if opt.parser is None:
        return str(raw).strip().lower() in ("1", "true", "yes", "on") if not isinstance(raw, bool) else raw
    if opt.multiple:
        return [opt.parser(v) for v in raw if str(v).strip()]
    return opt.parser(str(raw))
