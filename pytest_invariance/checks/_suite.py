"""A suite's config file (``invariance.toml`` beside its tests) and threshold lookup.

Example::

    [suite]
    name = "mnist_rotation"
    input = [1, 28, 28]      # C, H, W the protocol feeds; a --model that needs other input skips

    [preprocess]
    channels = 1

    [thresholds]
    mav_accuracy = { min = 0.85 }              # every model
    "mu_lenet.mav_accuracy" = { min = 0.95 }   # one qualifier (details.model, .attribute, .bin ...)
    "Smiling.fn_rate" = { min = 0.45, confident = true }   # on the CI bound, not the point

    [expected_failures]      # known leaks: the test xfails with this reason instead of failing
    "lenet.mav_accuracy_drop" = "paper 4.1: LeNet's ip1 loses 9 points under MAV"

Threshold keys (here, ``--invariance-threshold KEY=V`` and a factors folder's
``[thresholds]``) read ``[LAYER.][QUALIFIER.]METRIC``: a metric, optionally qualified by
a layer of the run, by one other qualifier the check carries (model, attribute, factor,
bin, group), or by both, layer first (``layer4.rotation.mae``). Names are matched whole,
so layer names with dots or slashes work (``/blocks/blocks.3/Add_output_0.mae``). A key
that reads two ways (a name that is both a layer and a factor, or dots that split it
two ways) is refused (:func:`split_key`). Lookup runs from most to least specific:
``LAYER.QUALIFIER.METRIC``, ``LAYER.METRIC``, ``QUALIFIER.METRIC`` (model, attribute,
factor, bin, group in this order), then ``METRIC``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from ..errors import InvalidParameterError
from ._ranges import refuse_vacuous
from ._result import DIRECTIONS, Threshold

if TYPE_CHECKING:
    from .._scope import Scope

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "invariance.toml"

# The keys a suite's invariance.toml may hold, table by table, so that a misspelled key
# is an error instead of a silently ignored setting. None: free keys (names chosen by the
# suite, e.g. models, factors, threshold keys). A new table a study reads goes here.
TABLE_KEYS: dict[str, frozenset[str] | None] = {
    "suite": frozenset({"name", "input", "user_layer", "metrics", "qualifiers", "description", "precomputed",
                        "options"}),
    "preprocess": frozenset({"size", "channels", "scale", "mean", "std", "prewhiten", "adapt_size",
                             "pool", "input_layout", "layout", "dtype", "channel_order"}),
    "models": None,
    "thresholds": None,
    "expected_failures": None,
    "protocol": frozenset({"angles", "train_per_class", "heatmap_per_cell", "n_bootstrap", "n_refits"}),
    "celeba": frozenset({"crop", "limit_train", "limit_val", "limit_test", "C_grid", "bins"}),
    "data": frozenset({"identity", "train_fraction", "absolute", "n_splits"}),
    "probes": frozenset({"mlp_hidden", "mlp_max_train", "mlp_refits", "control_clusters", "n_bootstrap", "svm_max_iter"}),
    "perturbations": None,
    "neutral": None,
}
# Options that only some suites apply, with the Settings field each sets. A suite that applies one
# lists it under ``[suite] options``; the others are named once when it is given (not_applied).
SUITE_OPTIONS = {"--invariance-erase": "erase", "--invariance-gate": "gate",
                 "--invariance-factor-type": "factor_type", "--invariance-skip-bad": "skip_bad"}
MODEL_KEYS = frozenset({"path", "layer", "logits", "pool", "input_layout", "weights", "preprocess"})


def check_keys(cfg: Mapping[str, Any], path: Path) -> None:
    """Raise one InvalidParameterError naming the file and the first unknown key."""
    for table, value in cfg.items():
        if table not in TABLE_KEYS:
            raise InvalidParameterError(f"{path}: unknown table [{table}]; known tables: {', '.join(TABLE_KEYS)}")
        allowed = TABLE_KEYS[table]
        if not isinstance(value, Mapping):
            raise InvalidParameterError(f"{path}: [{table}] must be a table")
        unknown = sorted(set(value) - allowed) if allowed is not None else []
        if unknown:
            raise InvalidParameterError(
                f"{path}: unknown key {unknown[0]!r} in [{table}]; known keys: {', '.join(sorted(allowed or ()))}")
    for name, entry in cfg.get("models", {}).items():
        unknown = sorted(set(entry) - MODEL_KEYS) if isinstance(entry, Mapping) else ["(not a table)"]
        if unknown or "path" not in entry:
            what = f"unknown key {unknown[0]!r}" if unknown else "no 'path'"
            raise InvalidParameterError(
                f"{path}: [models.{name}] has {what}; known keys: {', '.join(sorted(MODEL_KEYS))}")


def not_applied(settings: Any, suites: Iterable["Suite"]) -> dict[str, list[str]]:
    """``{option: [suite names]}``: each suite-specific option given (:data:`SUITE_OPTIONS`) and
    the selected suites that do not apply it, so that a run never drops an option silently
    (``--invariance-erase`` on the factors suite measured nothing erased and said nothing).

    Examples
    --------
    >>> from types import SimpleNamespace as S
    >>> on = S(erase=True, gate=(), factor_type=(), skip_bad=False)
    >>> not_applied(on, [Suite("a", Path("."), {"suite": {"options": ["--invariance-erase"]}}), Suite("b", Path("."))])
    {'--invariance-erase': ['b']}
    """
    out: dict[str, list[str]] = {}
    for flag, name in SUITE_OPTIONS.items():
        if getattr(settings, name, None):
            ignored = sorted({s.name for s in suites if flag not in s.config.get("suite", {}).get("options", [])})
            if ignored:
                out[flag] = ignored
    return out


def threshold_from_table(key: str, table: Mapping[str, Any], where: str) -> Threshold:
    if not isinstance(table, Mapping):
        raise InvalidParameterError(f"{where}: threshold {key!r} must be a table like {{ min = 0.5 }}; got {table!r}")
    unknown = set(table) - set(DIRECTIONS) - {"confident"}
    if unknown:
        raise InvalidParameterError(
            f"{where}: threshold {key!r} has unknown keys {sorted(unknown)}; use one of min, max, above, below (+ confident)"
        )
    try:
        threshold = Threshold.from_kwargs(confident=bool(table.get("confident", False)),
                                          **{k: v for k, v in table.items() if k != "confident"})
    except InvalidParameterError as exc:
        raise InvalidParameterError(f"{where}: threshold {key!r}: {exc}") from None
    refuse_vacuous(key.rsplit(".", 1)[-1], threshold, f"{where}: threshold {key!r}")
    return threshold


@dataclass(frozen=True)
class FixHints:
    """What a gate's failure message may tell the user to edit: only what its suite reads.

    ``thresholds_file``: the file whose ``[thresholds]`` the suite reads (a factors data
    folder's own invariance.toml); ``gate``: whether it reads ``--invariance-gate`` and
    ``[gate] columns`` (its tests are the plugin's); ``known_leaks``: whether an
    ``[expected_failures]`` key in that file would excuse the check (not for a ``--model``:
    known leaks document a suite's own models).
    """

    thresholds_file: str = "the suite's invariance.toml"
    gate: bool = False
    known_leaks: bool = False


@dataclass(frozen=True)
class Suite:
    """The parsed config of one audit suite. ``thresholds_file``: the invariance.toml whose
    ``[thresholds]`` the user edits (default: the suite's own, ``root / CONFIG_NAME``)."""

    name: str
    root: Path
    config: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Threshold] = field(default_factory=dict)
    thresholds_file: Path | None = None

    @property
    def key(self) -> "Scope":
        """What this suite's studies depend on, for in-process memo keys: its folder and
        its whole config (``[protocol]``, ``[probes]``, ``[preprocess]``, models, any
        overlay such as a factors data folder's). See :mod:`pytest_invariance._scope`."""
        from .._scope import Scope, digest

        return Scope(("suite", digest({"root": str(self.root.resolve()), "config": self.config})))

    def fix_hints(self, known_leaks: bool = False) -> FixHints:
        """What this suite's failure messages may name (:class:`FixHints`); ``known_leaks``:
        whether the check is one ``[expected_failures]`` applies to."""
        path = self.thresholds_file or self.root / CONFIG_NAME
        try:
            shown = str(path.resolve().relative_to(Path.cwd()))
        except ValueError:
            shown = str(path)
        options = self.config.get("suite", {}).get("options", [])
        return FixHints(thresholds_file=shown, gate="--invariance-gate" in options, known_leaks=known_leaks)

    @classmethod
    def load(cls, path: Path) -> "Suite":
        try:
            with open(path, "rb") as f:
                cfg = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidParameterError(f"{path}: not valid TOML ({exc})") from None
        check_keys(cfg, path)
        thresholds = {k: threshold_from_table(k, v, str(path)) for k, v in cfg.get("thresholds", {}).items()}
        name = cfg.get("suite", {}).get("name", path.parent.name)
        suite = cls(name=name, root=path.parent, config=cfg, thresholds=thresholds)
        suite.check_own_keys(path)
        return suite

    @classmethod
    def find(cls, start: Path, stop: Path | None = None) -> "Suite":
        """The config at or above ``start``; a suite without one is named after its folder."""
        d = start if start.is_dir() else start.parent
        for folder in (d, *d.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls.load(folder / CONFIG_NAME)
            if stop is not None and folder == stop:
                break
        return cls(name=d.name, root=d)

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        shape = self.config.get("suite", {}).get("input")
        return tuple(shape) if shape else None  # type: ignore[return-value]

    def metrics(self) -> set[str] | None:
        """Metric names the suite emits: ``[suite] metrics`` plus its threshold keys' metrics;
        None when the suite declares none (then only its threshold keys are known)."""
        declared = self.config.get("suite", {}).get("metrics")
        gated = {k.rsplit(".", 1)[-1] for k in self.thresholds}
        return None if declared is None else set(declared) | gated

    def check_own_keys(self, path: Path) -> None:
        """With declared metrics, every [thresholds]/[expected_failures] key must name one of
        them (and a known qualifier): a misspelled key would never apply."""
        declared = self.config.get("suite", {}).get("metrics")
        if declared is None:
            return
        metrics = set(declared)
        qualifiers = {str(q) for q in self.config.get("suite", {}).get("qualifiers", [])} | set(
            self.config.get("models", {}))
        for table in ("thresholds", "expected_failures"):
            for key in self.config.get(table, {}):
                qualifier, _, metric = key.rpartition(".")
                if metric not in metrics or (qualifier and qualifier not in qualifiers):
                    bad = f"metric {metric!r}" if metric not in metrics else f"qualifier {qualifier!r}"
                    known = sorted(metrics) if metric not in metrics else sorted(qualifiers)
                    raise InvalidParameterError(f"{path}: [{table}] key {key!r} names an unknown {bad}; "
                                                f"known: {', '.join(known)}")

    def qualifiers(self) -> set[str]:
        """Qualifiers its checks carry: model names, ``[suite] qualifiers`` and the
        qualifier parts of its threshold and expected-failure keys."""
        keys = [*self.thresholds, *self.config.get("expected_failures", {})]
        return ({str(q) for q in self.config.get("suite", {}).get("qualifiers", [])}
                | set(self.config.get("models", {})) | {k.rsplit(".", 1)[0] for k in keys if "." in k})

    def section(self, name: str) -> dict[str, Any]:
        return dict(self.config.get(name, {}))

    def expected_failure(self, metric: str, qualifiers: Iterable[str], *, layer: str | None = None,
                         declared_layer: str | None = None) -> str | None:
        """The documented reason when this check is a known leak (``[expected_failures]``).

        A leak is documented at the layer the suite reads (``declared_layer``): in a layer
        sweep, another ``layer`` is excused only by a key qualified with that layer
        (``conv2.angle_mae``), never by the model's or a bare key.
        """
        known = self.config.get("expected_failures", {})
        elsewhere = layer is not None and declared_layer is not None and layer != declared_layer
        for k in lookup_keys(metric, list(qualifiers)):
            if k in known and not (elsewhere and k.rpartition(".")[0] != layer):
                return str(known[k])
        return None


def threshold_layer_qualifiers(settings: Any, suites: Iterable[Suite]) -> list[tuple[str, float, str]]:
    """``(key, value, qualifier)`` of each ``--invariance-threshold`` whose qualifier no suite
    declares: it can only be a layer (``layer4.rotation_mae``), checked once layers are selected."""
    suites = list(suites)
    known: set[str] = set().union(*(s.qualifiers() for s in suites)) if suites else set()
    if "*" in known:  # qualifiers named by the user's data (factors suite)
        return []
    out = []
    for key, value in settings.threshold:
        qualifier = key.rpartition(".")[0]
        if qualifier and qualifier not in known:
            out.append((key, value, qualifier))
    return out


def split_key(key: str, layers: Iterable[str], qualifiers: Iterable[str] | None,
              option: str = "--invariance-threshold") -> tuple[str | None, str | None, str]:
    """``(layer, qualifier, metric)`` of a threshold key ``[LAYER.][QUALIFIER.]METRIC``.

    ``layers`` are the run's selected layers; ``qualifiers`` the names the checks carry
    (None: any name that is not a layer). Metrics have no dots; names are matched whole.

    Raises
    ------
    InvalidParameterError
        One line naming ``option`` when the key reads two ways, or names neither a
        layer nor a qualifier.
    """
    head, _, metric = key.rpartition(".")
    if not head:
        return None, None, metric
    layers = list(dict.fromkeys(layers))
    known = None if qualifiers is None else set(qualifiers)

    def is_qualifier(q: str) -> bool:
        return q not in layers if known is None else q in known

    readings: list[tuple[str | None, str | None]] = []
    if head in layers:
        readings.append((head, None))
    if is_qualifier(head):
        readings.append((None, head))
    readings += [(la, head[len(la) + 1:]) for la in layers
                 if head.startswith(la + ".") and is_qualifier(head[len(la) + 1:])]
    if len(readings) > 1:
        shown = "; ".join(" and ".join(f"{w} {n!r}" for w, n in (("layer", la), ("qualifier", q)) if n)
                          for la, q in readings)
        raise InvalidParameterError(f"{option} {key}: {head!r} reads more than one way ({shown}); "
                                    "rename the data column or select the layer by a name that is not ambiguous")
    if not readings:
        raise InvalidParameterError(
            f"{option} {key}: {head!r} is neither a selected layer nor a qualifier of the checks "
            f"(write LAYER.METRIC, QUALIFIER.METRIC or LAYER.QUALIFIER.METRIC); selected layers: "
            f"{', '.join(layers) or 'none'}; qualifiers: {', '.join(sorted(known)) if known else 'none'}")
    return readings[0][0], readings[0][1], metric


def lookup_keys(metric: str, qualifiers: Iterable[str], layer: str | None = None) -> list[str]:
    """Keys from most to least specific; ``layer`` is also the first of ``qualifiers`` when given."""
    qualifiers = [q for q in qualifiers if q]
    # only the layer's own entry is skipped: a factor of the same name keeps LAYER.FACTOR.METRIC
    others = qualifiers[1:] if layer and qualifiers and qualifiers[0] == layer else qualifiers
    combined = [f"{layer}.{q}.{metric}" for q in others] if layer else []
    return combined + [f"{q}.{metric}" for q in qualifiers] + [metric]


def resolve_threshold(metric: str, qualifiers: Iterable[str], *, call: Threshold | None,
                      marker: Mapping[str, Threshold], suite: Mapping[str, Threshold],
                      overrides: Mapping[str, float], layer: str | None = None) -> Threshold | None:
    """Suite config > marker > the call's own default; an override then replaces the value.
    ``layer``: the check's layer (first of ``qualifiers``), for ``LAYER.QUALIFIER.METRIC`` keys."""
    keys = lookup_keys(metric, list(qualifiers), layer)
    found = call
    for source in (marker, suite):
        for k in keys:
            if k in source:
                found = source[k]
                break
    for k in keys:
        if k in overrides:
            if found is None:
                raise InvalidParameterError(
                    f"--invariance-threshold {k}={overrides[k]:g}: check {metric!r} has no threshold "
                    "direction to override; declare it in the suite's invariance.toml"
                )
            found = Threshold(found.comparator, overrides[k], found.confident)
            refuse_vacuous(metric, found, f"--invariance-threshold {k}={overrides[k]:g}")
            break
    return found
