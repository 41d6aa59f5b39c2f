"""The per-process audit session behind the fixtures: models, embeddings, memo.

Kept out of plugin.py so that the entry module stays cheap; nothing here imports
torch or onnxruntime until a model is actually loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .checks import Suite
from .settings import Settings

if TYPE_CHECKING:
    import numpy as np

    from ._figures import FigureCache
    from .data._source import ImageSet
    from .embeddings import EmbeddingCache, Preprocess
    from .embeddings._parquet import ParquetEmbeddings
    from ._scope import Scope
    from .models import Embedder


@dataclass
class ModelRef:
    """A model under audit with the layer and preprocessing to read it with."""

    name: str
    embedder: "Embedder"
    layer: str
    preprocess: "Preprocess"
    user: bool  # given with --model (else the suite's bundled default)
    outputs: dict[str, str] = field(default_factory=dict)  # role -> layer, e.g. {"logits": "logits"}
    pool: str = "auto"
    layers: tuple[str, ...] = ()  # every layer of the run for this model, forward order (a sweep)
    projections: dict[str, Any] = field(default_factory=dict)  # layer -> random projection record
    # The layer the suite (or the model's default output) names: known leaks are documented there.
    declared_layer: str | None = None
    # Suite.key of the suite this reference was made for (set by Audit.model): part of .key
    scope: Any = None

    def __post_init__(self) -> None:
        if not self.layers:
            self.layers = (self.layer,)
        if self.declared_layer is None:
            self.declared_layer = self.layer

    def at(self, layer: str) -> "ModelRef":
        """The same model read at another layer of the sweep."""
        from dataclasses import replace

        return replace(self, layer=layer)

    @property
    def key(self) -> "Scope":
        """What a study of this model depends on besides its own inputs, for in-process memo
        keys (:meth:`Audit.memo`): the model's name and digest, layer, preprocessing, pooling,
        random projection, and the suite's :attr:`~pytest_invariance.checks.Suite.key`."""
        from ._scope import Scope, digest

        e = self.embedder
        return Scope(("model", self.name, getattr(e, "sha256", None), self.layer, self.preprocess.key(), self.pool,
                      digest(self.projections.get(self.layer)), self.scope))

    def info(self) -> dict[str, Any]:
        e = self.embedder
        return {"model": self.name, "model_path": e.path, "model_sha256": e.sha256, "layer": self.layer,
                "layers": list(self.layers), "projection": self.projections.get(self.layer),
                "backend": e.backend, "device": e.device, "provider": e.provider, "pool": self.pool,
                **e.contract.to_dict(), "preprocessing": self.preprocess.to_dict()}


# Keys of a suite's [preprocess] that describe what the protocol feeds; the others
# (scale, mean, std, channel_order, prewhiten) belong to the suite's bundled models and
# never reach a --model, which takes its own from --invariance-preprocess.
PROTOCOL_KEYS = ("size", "channels", "adapt_size")


def model_spec(settings: Settings) -> str | None:
    """``--model`` as given for ``package.module:factory``, else the path resolved from the rootdir."""
    from .models import is_factory_spec

    if not settings.model:
        return None
    return settings.model if is_factory_spec(settings.model) else str(settings.resolve_path(settings.model))


def trace_shape(emb: "Embedder", suite: Suite, pre: "Preprocess") -> tuple[int | None, int | None, int | None]:
    """``(C, H, W)`` of the one image a layer trace runs: what the suite feeds, else what the model declares."""
    c, h, w = emb.input_shape
    want = suite.input_shape or (None, None, None)
    size = pre.size or ((h, w) if h and w else want[1:])
    return (pre.channels or c or want[0] or 3, size[0], size[1])


def model_names(settings: Settings, suite: Suite) -> list[str]:
    """The names a suite's tests are parametrized over: the --model's (or the precomputed
    embeddings' model without --model), or the suite's own."""
    if settings.embeddings and not settings.model:
        return [embeddings_source(settings).model_name]
    if settings.model:
        from .models import is_factory_spec

        spec = settings.model
        return [spec.split(":")[-1] if is_factory_spec(spec) else Path(spec).stem]
    return list(suite.section("models"))


def embeddings_source(settings: Settings) -> "ParquetEmbeddings":
    """The ``--invariance-embeddings`` reader (opened once per process)."""
    from .embeddings._parquet import open_embeddings

    return open_embeddings(str(settings.resolve_path(settings.embeddings)))


class Audit:
    """Session state of one pytest process (controller or xdist worker)."""

    def __init__(self, settings: Settings):
        from ._memory import no_hugepage_advice

        no_hugepage_advice()  # the audit process's large arrays: docs/performance.md
        self.settings = settings
        self._models: dict[tuple[str, str], "Embedder"] = {}
        self._memo: dict[Any, Any] = {}
        self._projections: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: dict[Any, Any] = {}  # other layers of a keep=False pass, without a disk cache
        self._pending_swept: set[Any] = set()  # image sets whose keep=False pass read every layer
        self._cache: "EmbeddingCache | None" = None
        self._figures: "FigureCache | None" = None
        self.baseline_checks: dict[tuple[str, str], dict[str, Any]] | None = None
        self.baseline_tag: str | None = None
        self.baseline_run: dict[str, Any] | None = None  # the stored run block of that version
        # The data_digest of every image set the current test read (see data_read); None outside
        # a test. A study memoized by an earlier test hands its reads on (_memo_reads).
        self._reading: set[str] | None = None
        self._memo_reads: dict[Any, set[str]] = {}

    def start_reading(self) -> None:
        """A test begins: what it reads from now on is its data (:meth:`data_read`)."""
        self._reading = set()

    def stop_reading(self) -> None:
        """The test ended: nothing read outside a test is any test's data."""
        self._reading = None

    def note_data(self, images: "ImageSet") -> None:
        """Record that the current test (or the study it memoizes) reads ``images``."""
        if self._reading is not None:
            self._reading.add(images.data_digest)

    def data_read(self) -> str | None:
        """One digest of every image set the current test embedded, through the studies it
        shares with other tests (:meth:`memo`): the data its checks measured, whatever the seed
        (:attr:`~pytest_invariance.data._source.ImageSet.data_digest`). None when it embedded none."""
        if not self._reading:
            return None
        from .data._source import digest_of

        return digest_of(*sorted(self._reading))

    @property
    def seed(self) -> int:
        return self.settings.seed

    def load(self, spec: str) -> "Embedder":
        from .models import load_model

        key = (spec, self.settings.device)
        if key not in self._models:
            # A model that fails to load fails every test that needs it once, like a study.
            self._models[key] = self._remember(
                ("model",) + key, f"model {spec} could not be loaded",
                lambda: load_model(spec, device=self.settings.device, weights=self.settings.weights,
                                   trust_pickle=self.settings.trust_pickle,
                                   input_layout=self.settings.input_layout,
                                   input_batch=self.settings.input_batch,
                                   layer_layout=self.settings.layer_layout))
        return self._models[key]

    def release(self, models: bool = True) -> None:
        """After a test: return freed heap to the system; with ``models`` (a suite's last
        test) first close the models' runtime sessions (a model asked for again opens them
        on its next forward), so that one suite's model and one study's freed temporaries
        do not sit under the next one's peak."""
        from ._memory import trim_heap

        if models:
            import gc

            for emb in self._models.values():
                close = getattr(emb, "close", None)
                if callable(close):
                    close()
            gc.collect()
        trim_heap()

    def model(self, suite: Suite, name: str, layer: str | None = None) -> ModelRef:
        """The user's --model when given, else the suite's ``[models.NAME]`` entry, read at
        ``layer`` (default: the first of the run's layers, see :meth:`layers`)."""
        ref = self._model(suite, name)
        layers = self.layers(suite, name)
        if layer is not None and layer not in layers:
            raise KeyError(f"layer {layer!r} is not among the selected layers of {name}: {', '.join(layers)}")
        return replace(ref, layer=layer or layers[0], layers=layers,
                       projections=self._projections.setdefault((ref.embedder.sha256, ref.pool), {}), scope=suite.key)

    def layers(self, suite: Suite, name: str) -> tuple[str, ...]:
        """The layers this run reads from the model, in forward order (resolved once per model).

        ``--layer`` (repeatable) and ``--invariance-layers`` resolved against the model's
        layers (:func:`~pytest_invariance.models._layers.select_layers`); with neither, the
        one default: the suite's declared layer or the model's output.

        Raises
        ------
        StudyError
            Wrapping the LayerNotFoundError of a name or glob that matches no layer.
        """
        ref = self._model(suite, name)
        patterns = self.settings.layer_patterns
        if not patterns:
            return (ref.layer,)
        emb = ref.embedder
        key = ("layers", emb.sha256, tuple(patterns))
        return self._remember(key, f"layers of {name} could not be selected",  # type: ignore[no-any-return]
                              lambda: tuple(self._select(suite, ref, patterns)))

    def _select(self, suite: Suite, ref: ModelRef, patterns: list[str]) -> list[str]:
        from .models._layers import OPT_LAYERS, is_glob, per_image, select_layers, trace_names

        emb = ref.embedder
        option = OPT_LAYERS if self.settings.layers else "--layer"
        known, where = emb.layers(), emb.path
        if self.settings.embeddings and self.settings.model:
            # The run reads the shards: a selection expands to the layers they hold.
            src = embeddings_source(self.settings)
            known = [la for la in known if la in src.meta.layers]
            where = f"the shards of --invariance-embeddings {src.path} (layers of {emb.path} they hold)"
        if emb.backend != "torch" and len(patterns) == 1 and not is_glob(patterns[0]):
            return select_layers([], known, patterns, option, where)
        calls_known = getattr(emb, "calls_traced", True)
        if not calls_known and not any(map(is_glob, patterns)):
            # TorchScript: no hooks, so its shapes cost a partial forward per module; named
            # layers need none (definition order, and each is checked when first read).
            order = [n for n, _ in emb.trace_layers(None)]
            return select_layers(order, known, patterns, option, where, calls_known=False)
        # ONNX graph order is forward order; torch needs one forward to know it (and which
        # modules run more than once: a bare name of those is refused here, at start-up).
        trace, _ = trace_names(emb, trace_shape(emb, suite, ref.preprocess), self.seed)
        order = [n for n, _ in trace if n in known or n.rpartition("#")[0] in known]
        # A glob passes over layers that give no row per image, and on TorchScript over those
        # its cut graphs cannot read (no shape: called several times, or not at all).
        skip = [n for n, shape in trace if not per_image(shape) or (not calls_known and not shape)]
        return select_layers(order, known, patterns, option, where, calls_known=calls_known, not_per_image=skip)

    def _model(self, suite: Suite, name: str) -> ModelRef:
        from .embeddings import Preprocess

        pre = suite.section("preprocess")
        if self.settings.embeddings and not self.settings.model:
            return self._precomputed_model()
        if self.settings.model:
            emb = self.load(model_spec(self.settings))  # type: ignore[arg-type]
            if self.settings.layer_patterns:
                layer = emb.default_layer  # replaced by the selected layers (see model())
            else:
                from .models._common import default_layer

                # A suite's user_layer the model lacks skips that suite (start-up probe,
                # _model_check.suite_layer_reason); the user asked for no layer.
                layer = suite.section("suite").get("user_layer") or default_layer(emb)
            pre = {k: v for k, v in pre.items() if k in PROTOCOL_KEYS}
            c, h, w = emb.input_shape
            adapt = pre.pop("adapt_size", None)
            if adapt and h and w:
                pre["size"] = (h, w)
            elif isinstance(adapt, list):  # a dynamic-size model: the size the suite's data is fed at
                pre["size"] = tuple(adapt)
            pre.update(dict(self.settings.preprocess))
            return ModelRef(emb.name, emb, layer, Preprocess(**pre), user=True, pool=self.settings.pool,
                            declared_layer=suite.section("suite").get("user_layer") or emb.default_layer)
        entry = suite.section("models").get(name)
        if entry is None:
            raise KeyError(f"suite {suite.name} has no model {name!r}")
        emb = self.load(str((suite.root / entry["path"]).resolve()))
        pre.pop("adapt_size", None)
        pre.update(entry.get("preprocess", {}))
        outputs = {k: v for k, v in entry.items() if k not in ("path", "layer", "preprocess", "pool")}
        return ModelRef(name, emb, entry.get("layer", emb.default_layer), Preprocess(**pre), False, outputs,
                        pool=entry.get("pool", "auto"))

    def _precomputed_model(self) -> ModelRef:
        """The shards as the model: their recorded name, sha256, layer, pool and preprocessing."""
        from .embeddings import Preprocess
        from .embeddings._parquet import ParquetModel

        src = embeddings_source(self.settings)
        # With --layer/--invariance-layers, model() replaces this by the selected layers.
        layer = src.meta.layers[0] if self.settings.layer_patterns else src.default_layer()
        src.check_run(sha256=None, layer=layer, pool=self.settings.pool, preprocessing=None)
        pre = {k: tuple(v) if isinstance(v, list) else v for k, v in (src.meta.preprocessing or {}).items()}
        return ModelRef(src.model_name, ParquetModel(src), layer, Preprocess(**pre), user=True,  # type: ignore[arg-type]
                        pool=src.meta.pool or "auto")

    def embeddings_source(self) -> dict[str, Any]:
        """``run.embeddings_source``: the Parquet shards read, or extraction by the model."""
        if self.settings.embeddings:
            return embeddings_source(self.settings).describe(self.settings.embeddings_unverified)
        return {"kind": "model", "cache": None if self.settings.no_cache else str(self.settings.resolve_path(
            self.settings.cache_dir))}

    def _lookup(self, ref: ModelRef, images: "ImageSet", layer: str, label: str) -> "np.ndarray":
        from .embeddings._parquet import image_ids

        src = embeddings_source(self.settings)
        if self.settings.model:  # the shards must come from this model, read this way
            src.check_run(sha256=ref.embedder.sha256, layer=layer, pool=ref.pool,
                          preprocessing=ref.preprocess.to_dict())
        ids = image_ids(images)
        if ids is None:
            from .errors import InvalidParameterError

            raise InvalidParameterError(
                f"--invariance-embeddings: {label or 'this suite'} embeds images the plugin makes itself "
                "(perturbation levels or array datasets), which have no id to join on; run it without "
                "--invariance-embeddings")
        from .embeddings._project import LayerProjection

        src.check_images(images, label, unverified=self.settings.embeddings_unverified)
        X = src.lookup(ids, layer, label)
        # The shards hold raw widths: the cap projects them as extraction would (same seed, same matrix).
        proj = LayerProjection(X.shape[1], max_dim=self.settings.max_dim, seed=self.settings.seed)
        ref.projections[layer] = proj.record()
        return proj(X)

    @property
    def cache(self) -> "EmbeddingCache | None":
        from .embeddings import EmbeddingCache

        if self.settings.no_cache:
            return None
        if self._cache is None:
            self._cache = EmbeddingCache(self.settings.resolve_path(self.settings.cache_dir))  # type: ignore[arg-type]
        return self._cache

    @property
    def progress(self) -> bool:
        """Whether to draw progress bars (on a terminal and not in CI, unless told)."""
        from .embeddings import progress_wanted

        return progress_wanted(self.settings.progress)

    def embed(self, ref: ModelRef, images: "ImageSet", *, layer: str | None = None, label: str = "",
              keep: bool = True, dtype: str = "float32", also: "tuple[str, ...]" = ()) -> "np.ndarray":
        """Embeddings of ``images`` at ``layer`` (default: the ref's layer), cached on disk and,
        with ``keep``, in memory (a study's large training set passes ``keep=False``).
        ``dtype="float16"`` rounds them to half precision (see :func:`extract`).

        ``also``: other layers a later call will ask of the same images (a classifier's
        logits beside its features), read in the same forward passes and handed out as the
        sweep's layers are, so the images are not decoded, perturbed and run twice.

        The first call for an image set extracts every layer of the sweep (``ref.layers``)
        in the same pass and keeps them for the tests of the other layers (with ``keep``;
        else they are read back from the disk cache, or, with ``--invariance-no-cache``,
        held until each layer's first call takes them).

        With ``--invariance-embeddings`` the rows are read from the Parquet shards by image
        id instead (:mod:`pytest_invariance.embeddings._parquet`), so every suite takes
        either source without code of its own.
        """
        layer = layer or ref.layer
        self.note_data(images)
        dead = ("constant layer", ref.embedder.sha256, layer)
        if dead in self._memo:  # one error per layer, not one per image set or study
            raise self._memo[dead].again()
        X = self._embed(ref, images, layer, label, keep, dtype, also)
        if len(X) > 1 and constant_rows(X):
            from ._outcomes import study_error
            from .errors import EmbeddingError

            zero = " (all zero)" if not X.any() else ""
            err = study_error(f"layer {layer} of {ref.name} cannot be audited", EmbeddingError(
                f"{ref.embedder.path} layer {layer!r} gives the same embedding{zero} for all {len(X)} images of "
                f"{label or 'this suite'}: every one of its {X.shape[1]} features is constant, so every figure "
                f"would be chance whatever the model encodes; {self._other_layer_fix(ref, layer)}"))
            self._memo[dead] = err
            raise err
        return X

    def _other_layer_fix(self, ref: ModelRef, layer: str) -> str:
        """How to audit another layer: --layer with --model; for a suite's bundled model
        --invariance-layers (--layer needs --model); with --invariance-embeddings (no --model)
        the shards' other columns or a re-extraction, since --invariance-list-layers needs a model."""
        if self.settings.model:
            return "audit another layer with --layer NAME (--invariance-list-layers lists them)"
        if not self.settings.embeddings:
            return "audit another layer of the bundled model with --invariance-layers NAME (--invariance-list-layers lists them)"
        others = [name for name in ref.embedder.layers() if name != layer]
        stored = f"read another stored layer with --layer NAME (the shards hold {', '.join(others)}) or " if others else ""
        return (f"{stored}re-extract another layer of the model: pytest-invariance extract --layer NAME ... "
                f"--out DIR, then --invariance-embeddings DIR")

    def _embed(self, ref: ModelRef, images: "ImageSet", layer: str, label: str, keep: bool, dtype: str,
               also: "tuple[str, ...]") -> "np.ndarray":
        from .embeddings import extract_layers

        s = self.settings
        if s.embeddings:  # precomputed: joined by image id, never extracted
            lookup = ("lookup", layer, images.fingerprint, dtype)
            kept = lookup in self._memo
            got = self._remember(lookup, f"embedding {label or ref.name} at layer {layer} could not be read",
                                 lambda: _as_dtype(self._lookup(ref, images, layer, label), dtype))
            if not keep and not kept:
                del self._memo[lookup]
            return got  # type: ignore[no-any-return]

        def key(la: str) -> tuple[Any, ...]:
            return ("embed", ref.embedder.sha256, la, images.fingerprint, ref.preprocess.key(), ref.pool, dtype,
                    s.max_dim)

        if key(layer) in self._pending:  # read in an earlier pass over these images
            got = self._pending.pop(key(layer))
            if keep:
                self._memo[key(layer)] = got
            return got  # type: ignore[no-any-return]
        was_kept = key(layer) in self._memo
        # Without keep or a disk cache, the other layers are read along only on the first
        # pass (held for their tests); a later call reads its own layer alone.
        swept = key("") in self._pending_swept
        group = [layer] + ([la for la in ref.layers if la != layer and key(la) not in self._memo
                            and key(la) not in self._pending]
                           if layer in ref.layers and not was_kept and (keep or self.cache is not None or not swept) else [])
        group += [la for la in dict.fromkeys(also) if la not in group and key(la) not in self._memo
                  and key(la) not in self._pending and not was_kept]
        if not keep and self.cache is None:
            self._pending_swept.add(key(""))

        def run() -> "np.ndarray":
            out = extract_layers(
                ref.embedder, images, group, preprocess=ref.preprocess, pool=ref.pool, batch_size=s.batch_size,
                cache=self.cache, workers=s.workers, progress=self.progress,
                label=label or f"{ref.name}:{layer if len(group) == 1 else f'{len(group)} layers'}", dtype=dtype,
                max_dim=s.max_dim, seed=s.seed, projections=ref.projections)
            for la in group[1:]:
                if keep:
                    self._memo[key(la)] = out[la]
                elif self.cache is None:
                    # Not kept and no disk cache to read them back from: held until its
                    # layer's test asks once, so the large set is still read in one pass.
                    self._pending[key(la)] = out[la]
            return out[layer]

        out = self._remember(key(layer), f"embedding {label or ref.name} at layer {layer} could not run", run)
        if not keep and not was_kept:
            del self._memo[key(layer)]  # a failure raised above and stays remembered
        return out  # type: ignore[no-any-return]

    @property
    def figures(self) -> "FigureCache | None":
        """The on-disk figure cache, ``<cache dir>/figures`` (None with --invariance-no-cache)."""
        from ._figures import FigureCache

        if self.cache is None:
            return None
        if self._figures is None:
            self._figures = FigureCache(self.cache.dir / "figures")
        return self._figures

    def memo(self, key: Any, compute: Callable[[], Any], *, disk: "dict[str, Any] | None" = None,
             shared: bool = False) -> Any:
        """Compute a study's results once per process and share them between tests.

        The key must say everything the value depends on, or two suites of one session
        (copies with another ``[protocol]``, ``[probes]``, data) would share one value: it
        must hold a :class:`~pytest_invariance._scope.Scope`, ``ref.key`` (model, layer,
        preprocessing and the suite's whole config) or ``suite.key``, plus the study's own
        inputs; with ``disk``, the disk key's content is added to it, so the two keys cannot
        disagree. ``shared=True`` waives the rule for a value that depends on nothing but
        its key's parts (a dataset split, a per-session note); a key with neither raises
        TypeError.

        A failure is remembered like a result: the first test gets one
        :class:`~pytest_invariance.errors.StudyError` naming the command-line fix, every
        later test of the same key a short one that refers back to it; the study is not
        run again.

        With ``disk`` (what determines the results: input digests, protocol, ...), they are
        also kept on disk under that key plus the seed, plugin version and source digest
        (:func:`pytest_invariance._figures.figure_key`), so a rerun reads them back.
        """
        from ._scope import digest, holds_scope

        if disk is not None:  # the in-process key is the disk key's content (seed included)
            return self._remember((key, digest({**disk, "seed": self.seed})), study_name(key),
                                  lambda: self._on_disk(disk, compute))
        if not shared and not holds_scope(key):
            raise TypeError(f"Audit.memo key {key!r} holds no ref.key or suite.key: it must name everything its value "
                            "depends on (suite config, model, layer, data), or pass shared=True")
        return self._remember(key, study_name(key), compute)

    def _on_disk(self, disk: dict[str, Any], compute: Callable[[], Any]) -> Any:
        store = self.figures
        if store is None:
            return compute()
        from ._figures import figure_key

        full = figure_key({**disk, "seed": self.seed})
        value = store.load(full)
        if value is None:
            value = compute()
            store.store(full, value)
        return value

    def forget(self, key: Any) -> None:
        """Drop what :meth:`memo` holds for ``key`` (a failure met by optional work, such as an
        overview of every factor, is then raised whole by the test that owns it)."""
        self._memo.pop(key, None)

    def _remember(self, key: Any, what: str, compute: Callable[[], Any]) -> Any:
        from .errors import StudyError

        if key in self._memo:
            hit = self._memo[key]
            if isinstance(hit, StudyError):
                raise hit.again()
            if self._reading is not None:  # a later test reads what the study read for the first
                self._reading.update(self._memo_reads.get(key, ()))
            return hit
        outer, self._reading = self._reading, (set() if self._reading is not None else None)
        try:
            value = compute()
        except StudyError as exc:  # an inner study or embedding failed: this one fails with it
            self._memo[key] = exc
            raise
        except Exception as exc:
            from ._outcomes import study_error

            err = study_error(what, exc)
            self._memo[key] = err
            raise err from exc
        finally:
            inner, self._reading = self._reading, outer
            if outer is not None and inner is not None:
                outer.update(inner)
                self._memo_reads[key] = inner
        self._memo[key] = value
        return value


def constant_rows(X: "np.ndarray") -> bool:
    """Whether every row of ``X`` [N, D] is the same vector, to float rounding (1e-6 of its
    largest magnitude): a dead or saturated layer, or a constant output."""
    import numpy as np

    if not X.size:
        return False
    # Decided on the first rows when they already differ (every real embedding): a whole-array
    # ptp of rotated MNIST's 350,000 float16 training rows took ~1 s of each study. Exact:
    # if all rows were constant, max|X| <= m0 / (1 - 1e-6) (m0 = max|X[0]|), so a spread
    # among the first rows above 1e-6 of that bound already rules it out.
    head = np.asarray(X[:256], dtype=np.float64)
    m0 = float(np.abs(head[0]).max())
    spread = float(np.ptp(head, axis=0).max())
    if not np.isfinite(spread) or spread > 1e-6 * m0 / (1 - 1e-6):
        return False
    spread = float(np.ptp(X, axis=0).max())
    return spread <= 1e-6 * float(np.abs(X).max()) if np.isfinite(spread) else False


def _as_dtype(X: "np.ndarray", dtype: str) -> "np.ndarray":
    """The rounding :func:`~pytest_invariance.embeddings.extract` applies (one rule for both)."""
    from .embeddings._extract import as_dtype

    return as_dtype(X, dtype)


def study_name(key: Any) -> str:
    """A readable name of a memo key: its short text parts, e.g. ``face_attributes/facenet``."""
    parts = key if isinstance(key, tuple) else (key,)
    short = [str(p) for p in parts if isinstance(p, str) and 0 < len(p) < 40]
    return "study " + ("/".join(short) or repr(key)[:60]) + " could not run"
