"""pytest entry point: options, ini keys, the marker, fixtures and hooks.

Only pytest and the standard library are imported at module import time; the
settings table, probes, models and report code load when a hook needs them.

Data flow per test: the suite's test calls ``invariance_check(metric, estimate)``;
the check is evaluated against its threshold (and baseline) on the worker, attached
to the test report, failed tests raise after the test body, and the controller
collects every report's checks into the JSON, the HTML report and the history.
"""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest

from . import _progress

# Imported as an entry point, before pytest's capture redirects file descriptor 2: the progress
# bars drawn inside tests (extraction, studies) write to this duplicate of the terminal.
_progress.keep_terminal()

if TYPE_CHECKING:
    from ._audit import Audit, ModelRef
    from ._outcomes import Outcomes
    from .checks import CheckResult, Suite
    from .probes._estimate import Estimate
    from .settings import Settings

SETTINGS_KEY = pytest.StashKey["Settings"]()
AUDIT_KEY = pytest.StashKey["Audit"]()
COLLECTED_KEY = pytest.StashKey[dict]()
CHECKS_KEY = pytest.StashKey[list]()
PLOTS_KEY = pytest.StashKey[list]()
MODEL_KEY = pytest.StashKey["ModelRef"]()
OUTCOMES_KEY = pytest.StashKey["Outcomes"]()
PROBED_KEY = pytest.StashKey[tuple]()  # (suite root -> reason the model does not fit, header lines, roots probed)
PROBE_ERRORS_KEY = pytest.StashKey[dict]()  # suite root -> error of a model that fits but cannot be read
PRECOMPUTED_KEY = pytest.StashKey[list]()  # header lines of --invariance-embeddings
NOTED_KEY = pytest.StashKey[dict]()  # suite root -> the suite with an input size known at collection
REPORTED_KEY = pytest.StashKey[set]()  # suite roots whose probe error a test has raised in full
MARKER = "invariance"


def pytest_addoption(parser: pytest.Parser) -> None:
    from .settings import OPTIONS, deferred

    group = parser.getgroup("invariance", "embedding invariance audits (pytest-invariance)")
    for opt in OPTIONS:
        # argparse %-formats help strings
        kw: dict[str, Any] = {"dest": opt.dest, "help": opt.help.replace("%", "%%"), "default": None}
        if opt.parser is None:
            kw["action"] = "store_true"
        else:
            # a refused value is held, not raised: the run's outputs are cleared before it is refused
            kw.update(type=deferred(opt), metavar=opt.metavar, action="append" if opt.multiple else "store")
        group.addoption(opt.flag, **kw)
        ini_type = "bool" if opt.parser is None else "linelist" if opt.multiple else "string"
        parser.addini(opt.ini, f"default for {opt.flag}", type=ini_type, default=None)


def _resolve_settings(config: pytest.Config) -> "Settings":
    import argparse

    from .settings import OPTIONS, Settings, absolute_path, coerce_ini, refused, settings_field

    # Paths typed on the command line (and the defaults) are relative to where pytest was
    # started, like --junitxml; paths in an ini file are relative to that file.
    here = config.invocation_params.dir
    ini_dir = config.inipath.parent if config.inipath else config.rootpath
    values: dict[str, Any] = {"rootdir": str(here)}
    errors: list[str] = []  # each refused value; the run is refused after its outputs are removed
    for opt in OPTIONS:
        cli = config.getoption(opt.dest)
        base = here
        if cli is not None and cli is not False:
            bad = refused(cli)
            if bad is not None:
                errors.append(repr(bad))
                continue
            value = cli
        else:
            raw = config.getini(opt.ini)
            if raw is None or raw == [] or raw == "":
                if opt.path and opt.default is not None:
                    values[settings_field(opt)] = absolute_path(opt.default, here)
                continue
            try:
                value = coerce_ini(opt, raw)
            except argparse.ArgumentTypeError as exc:
                errors.append(f"ini key {opt.ini}: {exc}")
                continue
            base = ini_dir
        if opt.path:
            value = absolute_path(value, base)
        if opt.multiple:
            value = tuple(value)
        values[settings_field(opt)] = value
    if errors:
        # README: the previous run's results.json and report are removed when a run starts;
        # a run refused for an option's value is no exception (tryout 10).
        from ._startup import remove_stale_outputs

        if not hasattr(config, "workerinput"):
            # only where the paths themselves were accepted (a refused --invariance-json names no file)
            remove_stale_outputs(Settings(rootdir=values["rootdir"], json=values.get("json"), report=values.get("report")))
        raise pytest.UsageError(errors[0])
    return Settings(**values)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """``--invariance-list-layers``: print each model's layers with their shapes and exit 0
    (no test runs); like ``--markers``, before any session starts."""
    if not config.getoption("invariance_list_layers"):
        return None
    from ._layer_list import list_layers

    for line in list_layers(config, _resolve_settings(config)):
        print(line)
    return 0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**thresholds): default thresholds of this test's checks, e.g. "
        "@pytest.mark.invariance(mav_accuracy={'min': 0.85})",
    )
    settings = _resolve_settings(config)
    config.stash[SETTINGS_KEY] = settings
    config.stash[COLLECTED_KEY] = {"checks": [], "plots": {}, "started": _now()}
    from ._outcomes import Outcomes

    outcomes = Outcomes(config.stash[COLLECTED_KEY], suite_at=lambda path: _suite_name_at(config, path))
    config.stash[OUTCOMES_KEY] = outcomes
    config.pluginmanager.register(outcomes, "invariance-outcomes")
    if settings.clear_cache and not hasattr(config, "workerinput"):
        import shutil

        cache = settings.resolve_path(settings.cache_dir)
        if cache is not None and cache.exists():
            shutil.rmtree(cache)


@pytest.hookimpl(tryfirst=True)  # before the terminal reporter prints the header
def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail fast, once, on the controller: bad options, suites, output paths, --model or --layer,
    or a model that fits a suite but cannot be read correctly, are each one clear error before
    any test runs; a suite the model does not take is named in the header and skipped."""
    config = session.config
    settings = config.stash[SETTINGS_KEY]
    if hasattr(config, "workerinput"):
        return
    from ._startup import run_all

    run_all(config, settings, config.stash[COLLECTED_KEY])
    if settings.baseline:
        _audit(config)  # an unknown --invariance-baseline tag is a usage error now, not in a test
    if settings.embeddings:
        from ._precomputed import check_at_start
        from ._startup import find_suites

        config.stash[PRECOMPUTED_KEY] = check_at_start(_audit(config), find_suites(config))[1]
    if not settings.model:
        if settings.layers or settings.threshold:
            _select_bundled_layers(config, settings)
        return
    from ._audit import model_spec
    from ._model_check import discover_suites, probe_suites
    from .errors import InvarianceError

    audit = _audit(config)
    try:
        audit.load(model_spec(settings))  # type: ignore[arg-type]
        suites = discover_suites(config.args, config.invocation_params.dir, config.rootpath)
        from .checks import Suite

        # The layer selection is checked against the model even when no suite is found.
        audit.layers(suites[0] if suites else Suite(name="", root=config.rootpath), "model")
        reasons, lines = probe_suites(audit, suites)
        _check_layer_qualifiers(config, settings, audit)
    except (InvarianceError, ImportError) as exc:
        from .errors import StudyError

        raise pytest.UsageError(str(exc.cause if isinstance(exc, StudyError) else exc)) from None
    config.stash[PROBED_KEY] = (reasons, lines, {str(suite.root) for suite in suites})


def _select_bundled_layers(config: pytest.Config, settings: "Settings") -> None:
    """--invariance-layers on the suites' own models: every model's selection resolves, or one usage error."""
    from ._startup import find_suites
    from .errors import InvarianceError, StudyError

    from ._model_check import probe

    audit = _audit(config)
    try:
        for suite in find_suites(config):
            for name in suite.section("models"):
                audit.layers(suite, name)
                if settings.layers and suite.input_shape and (suite.root / suite.section("models")[name]["path"]).is_file():
                    try:  # every selected layer readable, before any test
                        probe(suite, audit.model(suite, name), seed=audit.seed)
                    except InvarianceError as exc:
                        raise pytest.UsageError(
                            f"{exc} (suite {suite.name}'s bundled model {name!r} takes its pool from `pool` in "
                            f"[models.{name}] of {suite.root / 'invariance.toml'}, not from --invariance-pool; or "
                            "leave that layer out of --invariance-layers)") from None
        _check_layer_qualifiers(config, settings, audit)
    except (InvarianceError, ImportError) as exc:
        raise pytest.UsageError(str(exc.cause if isinstance(exc, StudyError) else exc)) from None


def _check_layer_qualifiers(config: pytest.Config, settings: "Settings", audit: "Audit") -> None:
    """A threshold qualified by a layer must name a selected layer (a typo would never apply)."""
    from ._audit import model_names
    from ._startup import find_suites
    from .checks._suite import split_key, threshold_layer_qualifiers
    from .errors import InvalidParameterError

    suites = find_suites(config)
    if not threshold_layer_qualifiers(settings, suites):
        return
    layers = list(dict.fromkeys(la for suite in suites for name in model_names(settings, suite)
                                for la in audit.layers(suite, name)))
    known = set().union(*(suite.qualifiers() for suite in suites)) if suites else set()
    for key, value, _ in threshold_layer_qualifiers(settings, suites):
        try:
            split_key(key, layers, known, option="--invariance-threshold")
        except InvalidParameterError as exc:
            raise pytest.UsageError(str(exc)) from None


def note_suite(config: pytest.Config, suite: "Suite") -> None:
    """A suite whose ``[suite] input`` is known only at collection (the factors suite: the
    data folder's image size) hands it over here; the --model's layers are then checked
    at that size once, at the end of collection, before any test runs."""
    config.stash.setdefault(NOTED_KEY, {})[str(suite.root)] = suite


def selected_layers(config: pytest.Config, suite_dir: Path) -> list[str]:
    """Every layer this run reads from the models of the suite at ``suite_dir``, in forward
    order; [] when a model cannot be loaded or its layers selected (that is reported once,
    at start-up or by the fixture)."""
    from ._audit import model_names
    from .checks import Suite
    from .errors import InvarianceError

    settings = config.stash[SETTINGS_KEY]
    suite = Suite.find(suite_dir, stop=config.rootpath)
    try:
        return list(dict.fromkeys(la for name in model_names(settings, suite)
                                  for la in _audit(config).layers(suite, name)))
    except (InvarianceError, ImportError, KeyError):
        return []


def model_layers(config: pytest.Config, suite_dir: Path) -> list[str]:
    """Every layer name the models of the suite at ``suite_dir`` have, selected or not (a data
    folder's threshold for a layer this run does not read is not a typo); [] as above."""
    from ._audit import model_names
    from .checks import Suite
    from .errors import InvarianceError

    settings = config.stash[SETTINGS_KEY]
    suite = Suite.find(suite_dir, stop=config.rootpath)
    try:
        return list(dict.fromkeys(la for name in model_names(settings, suite)
                                  for la in _audit(config).model(suite, name).embedder.layers()))
    except (InvarianceError, ImportError, KeyError):
        return []


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    s = config.stash.get(SETTINGS_KEY, None)
    if s is None:
        return None
    model = s.model or (f"precomputed embeddings {s.embeddings}" if s.embeddings else "each suite's bundled default")
    backend = "onnx" if (s.model or "").endswith(".onnx") else "torch" if s.model else \
        "parquet" if s.embeddings else "per suite"
    cache = "off" if s.no_cache else str(s.resolve_path(s.cache_dir))
    layer = ",".join(s.layer_patterns) or "default"
    lines = [f"invariance: model={model} layer={layer} backend={backend} "
             f"device={s.device} seed={s.seed} cache={cache}"]
    emb = _loaded_model(config)
    if emb is not None:
        c = emb.contract
        batches = (f"; fed in batches of {c.batch} ({'--invariance-input-batch' if c.batch_source == 'option' else 'fixed in the file'})"
                   if c.batch else "")
        from .embeddings import Preprocess

        lines.append(f"invariance: input {c.describe()}, layout from {c.layout_source}{batches}; "
                     f"pool={s.pool}; preprocessing (suites may set size/channels): "
                     f"{Preprocess(**dict(s.preprocess)).describe()}")
    lines.extend(config.stash.get(PRECOMPUTED_KEY, []))
    lines.extend(config.stash.get(PROBED_KEY, ({}, [], set()))[1])
    return lines


def _loaded_model(config: pytest.Config) -> Any:
    """The --model's Embedder if it loads (its errors are reported once, by pytest_sessionstart)."""
    s = config.stash[SETTINGS_KEY]
    if not s.model:
        return None
    from ._audit import model_spec
    from .errors import InvarianceError

    try:
        return _audit(config).load(model_spec(s))  # type: ignore[arg-type]
    except (InvarianceError, ImportError):
        return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason, the tests of a suite whose input the --model does not take.

    The controller probed the suites it found on the command line (pytest_sessionstart);
    a suite it did not see (or an xdist worker's) is probed here. There a model that
    cannot be read fails the suite's tests as ERRORs through the fixture, not the worker.
    """
    s = config.stash[SETTINGS_KEY]
    if s.embeddings:
        _skip_unjoinable(config, items)
    if not s.model or not items:
        return
    from ._model_check import probe_suites
    from .errors import InvarianceError

    reasons, _, probed = config.stash.get(PROBED_KEY, ({}, [], set()))
    reasons = dict(reasons)
    errors = config.stash.setdefault(PROBE_ERRORS_KEY, {})
    by_suite: dict[str, tuple["Suite", list[pytest.Item]]] = {}
    for item in items:
        if "invariance_model" in getattr(item, "fixturenames", ()):
            suite = _suite_for(config, Path(str(item.path)))
            by_suite.setdefault(str(suite.root), (suite, []))[1].append(item)
    noted = config.stash.get(NOTED_KEY, {})
    for root, (suite, suite_items) in by_suite.items():
        if root not in probed or root in noted:  # a size known only now: check the layers at it
            try:
                found, lines = probe_suites(_audit(config), [noted.get(root, suite)])
                reasons.update(found)
                reporter = config.pluginmanager.get_plugin("terminalreporter")
                if root in noted and reporter is not None and not hasattr(config, "workerinput"):
                    for line in lines:  # the size known only now (the factors folder's): say what is fed
                        reporter.write_line(line)
            except (InvarianceError, ImportError) as exc:
                if not hasattr(config, "workerinput"):  # before any test: one line, like start-up
                    from .errors import StudyError

                    raise pytest.UsageError(str(exc.cause if isinstance(exc, StudyError) else exc)) from None
                from ._outcomes import study_error

                # Raised by the fixture: an ERROR (the first test in full, the others refer
                # back to it), never a crashed worker.
                errors[root] = study_error(f"the --model's check on suite {suite.name} failed", exc)
                continue
        if root in reasons:
            for item in suite_items:
                item.add_marker(pytest.mark.skip(reason=reasons[root]))


def _skip_unjoinable(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --invariance-embeddings, skip (one reason per suite) suites that make their own images."""
    from ._precomputed import not_joinable

    for item in items:
        if "invariance_model" in getattr(item, "fixturenames", ()):
            reason = not_joinable(_suite_for(config, Path(str(item.path))))
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def _audit(config: pytest.Config) -> "Audit":
    if AUDIT_KEY not in config.stash:
        from ._audit import Audit

        audit = Audit(config.stash[SETTINGS_KEY])
        _load_baseline(audit)
        config.stash[AUDIT_KEY] = audit
    return config.stash[AUDIT_KEY]


def _load_baseline(audit: "Audit") -> None:
    s = audit.settings
    if not s.baseline:
        return
    from .history import HistoryStore

    store = HistoryStore(s.resolve_path(s.history))  # type: ignore[arg-type]
    try:
        tag = store.resolve(s.baseline, current=_version_tag(s, audit))
    except Exception as exc:
        raise pytest.UsageError(f"--invariance-baseline {s.baseline}: {exc}") from None
    audit.baseline_tag = tag
    if tag is None:  # 'latest' with nothing stored yet: the first run has no baseline
        audit.baseline_checks = {}
        return
    doc = store.run(tag)
    audit.baseline_run = doc.get("run") or {}
    from .history import check_identity

    audit.baseline_checks = {check_identity(c): c for c in doc.get("checks", [])}


def _model_spec(s: "Settings") -> str | None:
    from ._audit import model_spec

    return model_spec(s)


def _version_tag(s: "Settings", audit: "Audit | None" = None) -> str:
    """--model-version, else the model's sha256[:12] (every file it loads; for precomputed
    embeddings the one their shards record, else ``emb-`` and their bytes' digest), else
    'suite-defaults'."""
    if s.model_version:
        return s.model_version
    if s.embeddings and not s.model:
        from ._audit import embeddings_source

        try:
            src = embeddings_source(s)
            # Shards without a model hash are told apart by their bytes: under one "precomputed"
            # tag a second set replaced the first, and "latest" compared nothing.
            return src.meta.model_sha256[:12] if src.meta.model_sha256 else "emb-" + src.content_digest[:12]
        except Exception:  # unreadable shards are reported once by pytest_sessionstart
            return "unreadable-embeddings"
    if s.model:
        from ._audit import Audit

        try:
            return (audit or Audit(s)).load(_model_spec(s)).sha256[:12]  # type: ignore[arg-type]
        except Exception:  # an unloadable model is reported once by pytest_sessionstart
            return "unloadable-model"
    return "suite-defaults"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def invariance_settings(pytestconfig: pytest.Config) -> "Settings":
    """The resolved settings (CLI > ini > default) of this run."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def invariance_audit(pytestconfig: pytest.Config) -> "Audit":
    """Session state: ``load``/``model`` for models, ``embed`` for cached embeddings, ``memo`` to share a study."""
    return _audit(pytestconfig)


@pytest.fixture
def invariance_suite(request: pytest.FixtureRequest) -> "Suite":
    """The suite config (``invariance.toml``) nearest to the requesting test file."""
    return _suite_for(request.config, Path(str(request.node.path)))


def _suite_name_at(config: pytest.Config, path: str) -> str | None:
    """The name of the suite whose folder (one with an invariance.toml) holds the test file
    ``path`` (relative to the rootdir, as in a node id); None outside every suite."""
    from .checks._suite import CONFIG_NAME

    suite = _suite_for(config, config.rootpath / path)
    return suite.name if (suite.root / CONFIG_NAME).is_file() else None


def _suite_for(config: pytest.Config, path: Path) -> "Suite":
    from .checks import Suite

    cache = config.stash[COLLECTED_KEY].setdefault("suites", {})
    key = str(path.parent)
    if key not in cache:
        cache[key] = Suite.find(path.parent, stop=config.rootpath)
    return cache[key]


@pytest.fixture
def invariance_model(request: pytest.FixtureRequest, invariance_audit: "Audit",
                     invariance_suite: "Suite") -> "ModelRef":
    """The model under audit: parametrized over the suite's ``[models.*]``, or the one ``--model``.

    A user's model whose input does not fit the suite's protocol skips with the reason.
    """
    name, layer = getattr(request, "param", (None, None))
    error = request.config.stash.get(PROBE_ERRORS_KEY, {}).get(str(invariance_suite.root))
    if error is not None:
        reported = request.config.stash.setdefault(REPORTED_KEY, set())
        first = str(invariance_suite.root) not in reported
        reported.add(str(invariance_suite.root))
        raise error if first else error.again()
    ref = invariance_audit.model(invariance_suite, name, layer)
    request.node.stash[MODEL_KEY] = ref
    return ref


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "invariance_model" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[SETTINGS_KEY]
    suite = _suite_for(metafunc.config, Path(str(metafunc.definition.path)))
    from ._audit import model_names

    params, ids = [], []
    for name in model_names(settings, suite):
        # A user's model gets the fixed id "model" so that node ids, and with them the
        # history's check identities, stay the same when the file name changes between
        # releases; details.model still carries the file stem.
        pid = "model" if settings.model or settings.embeddings else name
        layers = _param_layers(metafunc.config, suite, name)
        # One layer keeps today's id, so existing baselines and history still match;
        # a sweep adds the layer: [model-layer4].
        params += [(name, layer) for layer in layers]
        ids += [pid if len(layers) == 1 else f"{pid}-{layer}" for layer in layers]
    metafunc.parametrize("invariance_model", params, indirect=True, ids=ids)


def _param_layers(config: pytest.Config, suite: "Suite", name: str) -> list[Any]:
    """The layers a model's tests run over; [None] (the fixture's default) when no selection
    was given or it cannot be resolved here (then the fixture raises its one error)."""
    settings = config.stash[SETTINGS_KEY]
    if not settings.layer_patterns:
        return [None]
    from .errors import InvarianceError

    try:
        return list(_audit(config).layers(suite, name))
    except (InvarianceError, ImportError):
        return [None]


@pytest.fixture
def invariance_check(request: pytest.FixtureRequest, invariance_audit: "Audit",
                     invariance_suite: "Suite") -> Callable[..., "CheckResult"]:
    """Record one figure as a check: ``invariance_check(metric, estimate, min=..., details=..., plots=...)``.

    The threshold's direction is in the keyword (``min``, ``max``, ``above``, ``below``);
    the suite's ``invariance.toml`` and the ``invariance`` marker take precedence over it,
    and ``--invariance-threshold`` replaces its value. Pass ``confident=True`` to gate on
    the CI bound. A failed check fails the test after its body has run, so every figure
    of the test is recorded. Returns the :class:`~pytest_invariance.checks.CheckResult`.
    """
    return _make_check(request, invariance_audit, invariance_suite)


def _make_check(request: pytest.FixtureRequest, audit: "Audit", suite: "Suite") -> Callable[..., "CheckResult"]:
    from .checks import Threshold, evaluate, resolve_threshold
    from .checks._suite import threshold_from_table

    node = request.node
    marker_thresholds = {}
    for mark in node.iter_markers(MARKER):
        for key, table in mark.kwargs.items():
            marker_thresholds.setdefault(key, threshold_from_table(key, table, f"{node.nodeid} marker"))
    overrides = dict(audit.settings.threshold)
    results: list = node.stash.setdefault(CHECKS_KEY, [])
    plots_out: list = node.stash.setdefault(PLOTS_KEY, [])

    def check(metric: str, estimate: "Estimate", *, min: float | None = None, max: float | None = None,
              above: float | None = None, below: float | None = None, confident: bool = False,
              details: dict[str, Any] | None = None, plots: list[dict[str, Any]] | None = None) -> "CheckResult":
        __tracebackhide__ = True
        ref = node.stash.get(MODEL_KEY, None)
        details = {**(ref.info() if ref is not None else {}), **(details or {})}
        given = {k: v for k, v in dict(min=min, max=max, above=above, below=below).items() if v is not None}
        call = Threshold.from_kwargs(confident=confident, **given) if given else None
        qualifiers = [str(details[k]) for k in ("layer", "model", "attribute", "factor", "bin", "group")
                      if details.get(k) is not None]
        threshold = resolve_threshold(metric, qualifiers, call=call, marker=marker_thresholds,
                                      suite=suite.thresholds, overrides=overrides, layer=details.get("layer"))
        # Known leaks document the suite's bundled models: a --model (even one with the same
        # file name) meets every gate in full.
        own_model = not (ref is not None and ref.user)
        result = evaluate(node.nodeid, suite.name, metric, estimate, threshold, details, suite.fix_hints(own_model))
        if ref is not None:
            result.layer, result.test = ref.layer, _one_layer_id(node.nodeid, ref)
        known = None if not own_model else suite.expected_failure(
            metric, qualifiers, layer=ref.layer if ref is not None else None,
            declared_layer=ref.declared_layer if ref is not None else None)
        if known and not result.passed:
            result.details["expected_failure"] = known
        data = audit.data_read()
        if data is not None:
            result.details.setdefault("data_digest", data)
        _apply_baseline(audit, result)
        results.append(result)
        for plot in plots or ():
            plots_out.append(((node.nodeid, metric), plot))
        return result

    return check


def _one_layer_id(nodeid: str, ref: "ModelRef") -> str:
    """The node id this test has in a one-layer run: a sweep's ``[model-layer4]`` -> ``[model]``."""
    if len(ref.layers) == 1:
        return nodeid
    head, bracket, params = nodeid.partition("[")
    return head + bracket + params.replace(f"-{ref.layer}", "", 1)


def _apply_baseline(audit: "Audit", result: "CheckResult") -> None:
    if audit.baseline_checks is None:
        return
    from .checks import FAIL
    from .history import check_identity, find_tolerance, judge_change

    now = result.to_dict()
    base = audit.baseline_checks.get(check_identity(now))
    if base is None or base.get("value") is None:
        return
    tol = find_tolerance(result.metric, audit.settings.tolerance)
    judged = judge_change(now, base, tol)
    regressed, delta = judged["regressed"], judged["delta"]
    result.details.update(baseline=audit.baseline_tag, baseline_value=base["value"], delta=delta,
                          regressed=regressed, change=judged["change"])
    if judged["same_data"] is not None:  # None: the baseline's record (or this test) has no data digest
        result.details["same_data"] = judged["same_data"]
    if regressed:
        result.passed, result.verdict = False, FAIL
        toward = (f"toward failing {result.comparator} {result.threshold:g}" if result.comparator else
                  "toward more leakage (the metric's leak direction, measured from chance)")
        how = "the tolerance" if tol is not None else "the two runs' CIs allow (sqrt(h^2 + h_base^2))"
        chances = (f", chance {result.chance:.4g} vs {base['chance']:.4g}"
                   if result.chance is not None and base.get("chance") is not None else "")
        msg = (f"{result.metric}: regression against {audit.baseline_tag}: {result.value:.4g} "
               f"(CI {result.ci_low:.4g}..{result.ci_high:.4g}) vs {base['value']:.4g} (delta {delta:+.4g}{chances}) "
               f"moved {toward} by more than {how}")
        result.message = msg + ("\n" + result.message if result.message else "")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):  # type: ignore[no-untyped-def]
    out = yield
    failed = [r for r in item.stash.get(CHECKS_KEY, []) if not r.passed]
    if failed:
        __tracebackhide__ = True
        message = "\n".join(r.message for r in failed)
        reasons = [r.details.get("expected_failure") for r in failed]
        if all(reasons) and not any(r.details.get("regressed") for r in failed):
            # Every failure is a documented, known leak: xfail with the suite's reason.
            pytest.xfail("; ".join(sorted(set(reasons))) + "\n" + message)
        from .checks import INCONCLUSIVE

        if all(r.verdict == INCONCLUSIVE for r in failed):
            # the gate could not decide (test split too small): an ERROR naming the fix, never FAILED
            from .errors import InconclusiveError

            raise InconclusiveError("; ".join(r.message for r in failed))
        raise AssertionError(message)
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # What an audit test embeds, from its fixtures on, is the data its checks measured
    # (details.data_digest): a baseline measured on other data is not compared with it.
    if "invariance_audit" in getattr(item, "fixturenames", ()):
        _audit(item.config).start_reading()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    # Freed heap goes back after every test; after the last test of a suite's folder its
    # models' sessions are closed too (docs/performance.md).
    audit = item.config.stash.get(AUDIT_KEY, None)
    if audit is not None:
        audit.stop_reading()
        audit.release(models=nextitem is None or Path(str(nextitem.path)).parent != Path(str(item.path)).parent)


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    from ._outcomes import teststatus

    return teststatus(report)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    from ._outcomes import AUDIT_FIXTURES, mark_tool_error

    if AUDIT_FIXTURES & set(getattr(item, "fixturenames", ())):
        # Plain data on the report crosses from xdist workers to the controller.
        report.invariance_item = _suite_for(item.config, Path(str(item.path))).name
        ref = item.stash.get(MODEL_KEY, None)
        if ref is not None and report.when == "setup":
            report.invariance_model_info = ref.info()
        mark_tool_error(item, call, report)
    if report.when == "call":
        results = item.stash.get(CHECKS_KEY, [])
        if results:
            # Plain data on the report crosses from xdist workers to the controller.
            from ._notes import check_n_skipped

            report.invariance_checks = [check_n_skipped(r.to_dict()) for r in results]
            report.invariance_plots = [[list(k), p] for k, p in item.stash.get(PLOTS_KEY, [])]
            for r in results:  # junitxml properties (scalars only); junitxml reads them
                # from the teardown report, which copies item.user_properties.
                tag = ".".join([r.metric] + [str(r.details[k]) for k in ("attribute", "bin") if k in r.details])
                item.user_properties.append((f"invariance.{tag}", r.value))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if hasattr(config, "workerinput") or OUTCOMES_KEY not in config.stash:
        return
    collected, outcomes = config.stash[COLLECTED_KEY], config.stash[OUTCOMES_KEY]
    settings = config.stash[SETTINGS_KEY]
    status = outcomes.exit_status(int(session.exitstatus), settings)
    if outcomes.audit_items or collected.get("audit_run"):
        # Every audit run writes its outputs, with ERROR entries for what could not run,
        # so a results.json never describes an earlier run.
        from ._results import write_outputs

        from ._notes import run_notes

        collected["checks"] += outcomes.error_entries()
        notes, note_lines = run_notes(collected["checks"], collected.get("not_applied"))
        if settings.baseline and status != pytest.ExitCode.INTERRUPTED:
            from .history import baseline_report

            audit = _audit(config)
            notes["baseline"], line, outcomes.baseline_error = baseline_report(
                collected["checks"], settings.baseline, audit.baseline_tag,
                audit.baseline_run, str(settings.resolve_path(settings.history)))
            note_lines.insert(0, line)
            status = outcomes.exit_status(int(session.exitstatus), settings)
        run = {**_run_block(config, collected), **outcomes.run_fields(status), **notes}
        try:
            collected["summary"] = write_outputs(settings, collected, run) + note_lines
        except Exception as exc:  # e.g. the disk filled up: say so in one line, never green
            collected["summary"] = [f"invariance: outputs not written ({type(exc).__name__}: {exc})"]
            outcomes.output_error = True
            status = outcomes.exit_status(int(session.exitstatus), settings)
    session.exitstatus = status


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    outcomes = config.stash.get(OUTCOMES_KEY, None)
    lines = [] if outcomes is None else outcomes.summary_lines(config.stash[SETTINGS_KEY])
    collected = config.stash.get(COLLECTED_KEY, {})
    lines += collected.get("summary") or []
    if collected.get("checks"):
        from .studies.factors import gate_summary

        lines += [line for line in [gate_summary(collected["checks"])] if line]
    if lines:
        terminalreporter.write_sep("-", "invariance")
        for line in lines:
            terminalreporter.write_line(line)


def _run_block(config: pytest.Config, collected: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    s = config.stash[SETTINGS_KEY]
    # Every audited model as its record says (ModelRef.info(), whatever fields it has);
    # run-level model fields only describe the run when one --model was audited.
    models = {name: _model_record(info, collected.get("checks", []))
              for name, info in sorted(collected.get("models", {}).items())}
    only = next(iter(models.values()), {}) if (s.model or s.embeddings) and len(models) == 1 else {}
    return {
        "plugin_version": __version__,
        "model_path": _model_spec(s) if s.model else only.get("model_path") or "(suite defaults)",
        "model_sha256": only.get("model_sha256"),
        "model_version": _version_tag(s, config.stash.get(AUDIT_KEY, None)),
        "layer": only.get("layer") or (", ".join(only["layers"]) if only.get("layers") else "(per model)"),
        "backend": only.get("backend"), "device": only.get("device"), "provider": only.get("provider"),
        "preprocessing": only.get("preprocessing"), "models": models,
        "embeddings_source": _embeddings_source(config),
        "seed": s.seed, "started": collected["started"], "finished": _now(),
        "git_commit": _git_commit(config.rootpath), "versions": _versions(),
        "command": " ".join(["pytest", *config.invocation_params.args]),
    }


def _model_record(info: dict[str, Any], checks: list[dict[str, Any]]) -> dict[str, Any]:
    """``run.models[NAME]``: the model's record with ``layers`` (forward order); ``layer`` only
    when one was read; the random projection of each projected layer under ``projections``."""
    out = {k: v for k, v in info.items() if k not in ("model", "projection")}
    layers = out.get("layers") or [out.get("layer")]
    if len(layers) > 1:
        out.pop("layer", None)
    projections = {c.get("layer"): (c.get("details") or {}).get("projection") for c in checks
                   if (c.get("details") or {}).get("model") == info.get("model")
                   and (c.get("details") or {}).get("projection")}
    if projections:
        out["projections"] = projections
    return out


def _embeddings_source(config: pytest.Config) -> dict[str, Any]:
    from ._audit import Audit

    audit = config.stash.get(AUDIT_KEY, None) or Audit(config.stash[SETTINGS_KEY])
    try:
        return audit.embeddings_source()
    except Exception as exc:  # unreadable shards were refused at start-up; say so, do not crash the write
        return {"kind": "parquet", "path": config.stash[SETTINGS_KEY].embeddings, "error": str(exc)}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("torch", "onnxruntime", "numpy", "scikit-learn", "pytest"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out

