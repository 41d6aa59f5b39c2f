"""SQLite history of audit runs, one row per model version.

Concurrency: CI shards and xdist controllers of parallel jobs may write the same file.
Every operation opens its own connection with a busy timeout, the database runs in
WAL mode (readers never block the writer), and writes happen inside ``BEGIN
IMMEDIATE`` transactions so two writers serialise instead of failing mid-way.

Version order: a tag's position is the time it was *first* recorded. Re-recording a
tag (re-running the audits of the same model) replaces its figures but keeps its
place, so "the version before v3" does not change when v3 is audited twice.
"""
from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import InvarianceError

__all__ = ["HistoryStore", "HistoryError", "UnknownVersionError", "TrendPoint", "default_tag",
           "SCHEMA_VERSION", "LATEST", "not_a_baseline", "run_counts", "figure_keys", "measures_fewer"]

SCHEMA_VERSION = 1
LATEST = "latest"
_BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tag TEXT NOT NULL UNIQUE,
    git_commit TEXT,
    model_sha256 TEXT,
    first_recorded_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS checks (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    nodeid TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL, ci_low REAL, ci_high REAL, threshold REAL,
    comparator TEXT, passed INTEGER, verdict TEXT,
    PRIMARY KEY (run_id, nodeid, metric)
);
CREATE INDEX IF NOT EXISTS checks_by_key ON checks (nodeid, metric);
"""


class HistoryError(InvarianceError, ValueError):
    """The history database is missing, unreadable or from a newer plugin."""


class UnknownVersionError(HistoryError, KeyError):
    """A version tag is not in the history; the message lists the stored tags."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class TrendPoint(NamedTuple):
    """One stored figure of a check, as returned by :meth:`HistoryStore.trend`."""

    tag: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    recorded_at: str


def default_tag(doc: dict[str, Any]) -> str:
    """The version tag used when none is given: the first 12 hex of the model's sha256.

    Runs without a model hash (each suite on its own default model) fall back to
    ``run-<started timestamp>`` so that every run is its own version.

    Examples
    --------
    >>> default_tag({"run": {"model_sha256": "ab" * 32}})
    'abababababab'
    """
    run = doc.get("run") or {}
    sha = run.get("model_sha256")
    if sha:
        return str(sha)[:12]
    started = str(run.get("started") or datetime.now(timezone.utc).isoformat())
    return "run-" + "".join(ch for ch in started if ch.isalnum())[:15]


def run_counts(doc: dict[str, Any]) -> dict[str, int]:
    """How a stored run's tests and checks ended, counted one way for every reader.

    ``checks``: figures measured (ERROR entries measured nothing); ``failed``: FAIL checks;
    ``inconclusive``: INCONCLUSIVE checks (a gate its CI could not decide: a figure, not a
    fault); ``errors``: tests that could not run (tool errors). Runs written before
    ``run.tests.inconclusive`` existed counted their undecided tests among the errors; those
    are taken back out (a test whose every non-passing check is INCONCLUSIVE).

    Examples
    --------
    >>> run_counts({"run": {"tests": {"audited": 1, "errors": 1}}, "checks": [
    ...     {"nodeid": "t", "metric": "m", "value": 0.4, "verdict": "INCONCLUSIVE"},
    ...     {"nodeid": "u", "metric": "m", "value": 0.1, "verdict": "PASS"}]})
    {'checks': 2, 'failed': 0, 'inconclusive': 1, 'errors': 0}
    """
    entries = doc.get("checks") or []
    tests = (doc.get("run") or {}).get("tests") or {}
    error_entries = sum(c.get("verdict") == "ERROR" for c in entries)
    undecided = [c for c in entries if c.get("verdict") == "INCONCLUSIVE"]
    errors = int(tests.get("errors", error_entries) or 0)
    if "inconclusive" not in tests:
        failed_tests = {c.get("nodeid") for c in entries if c.get("verdict") == "FAIL"}
        errors = max(errors - len({c.get("nodeid") for c in undecided} - failed_tests), error_entries)
    return {"checks": len(entries) - error_entries, "failed": sum(c.get("verdict") == "FAIL" for c in entries),
            "inconclusive": len(undecided), "errors": errors}


def not_a_baseline(doc: dict[str, Any]) -> str | None:
    """Why a stored run may not be the ``latest`` baseline, or None when it may.

    A run that was interrupted or did not complete (``run.incomplete``: a collection or usage
    error), audited nothing, or had a tool error (a pytest ERROR) lacks
    figures a later run would be compared with; as ``latest`` it would turn those comparisons
    into silent passes. An INCONCLUSIVE check (its CI could not decide the gate) is a figure,
    not a fault: such a run is a baseline, and only those checks are not compared with.
    Documents without ``run.tests`` (written by hand or by older plugins) are taken as complete.

    Examples
    --------
    >>> not_a_baseline({"run": {"interrupted": True}})
    'interrupted'
    >>> not_a_baseline({"run": {"tests": {"audited": 3, "errors": 2}}})
    '2 tool error(s)'
    >>> not_a_baseline({"run": {"tests": {"audited": 3, "errors": 0, "inconclusive": 2}}}) is None
    True
    """
    run = doc.get("run") or {}
    tests = run.get("tests") or {}
    if run.get("interrupted"):
        return "interrupted"
    if run.get("incomplete"):  # e.g. "stopped at 1 collection error (first: ...)"
        return str(run["incomplete"])
    if tests.get("audited") == 0:
        return "audited nothing"
    if tests.get("inconclusive") and tests.get("inconclusive") == tests.get("audited"):
        return f"decided nothing (all {tests['audited']} audited test(s) inconclusive)"
    errors = run_counts(doc)["errors"] if tests else 0
    if errors:
        return f"{errors} tool error(s)"
    return None


def figure_keys(checks: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """``(nodeid, metric)`` of every check in ``checks`` that measured a figure: ERROR and
    SKIPPED entries (a test that could not run or was skipped, ``metric`` None) measured nothing."""
    return {(str(c.get("nodeid")), str(c.get("metric"))) for c in checks
            if c.get("metric") is not None and c.get("status") not in ("error", "skipped")
            and c.get("verdict") not in ("ERROR", "SKIPPED")}


def measures_fewer(keys: set[tuple[str, str]], than: set[tuple[str, str]]) -> bool:
    """Whether a run whose figures are ``keys`` measured a strict subset of ``than`` (both from
    :func:`figure_keys` or :meth:`HistoryStore.check_keys`): a ``-k``/``--lf`` part, or a re-run
    some of whose tests could not run. Such a run would compare fewer checks as a baseline:
    it never replaces a stored record (:meth:`HistoryStore.kept_record`) and is passed over as
    ``latest`` (:meth:`HistoryStore.resolve`).

    Examples
    --------
    >>> measures_fewer({("t", "a")}, {("t", "a"), ("t", "b")}), measures_fewer({("t", "c")}, {("t", "a")})
    (True, False)
    """
    return keys < than


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


class HistoryStore:
    """Versioned figures of past audit runs in one SQLite file.

    Parameters
    ----------
    path : str or PathLike
        The database file; created (with its folder) on the first :meth:`record`.
        Reading methods never create it and raise :class:`HistoryError` when it is absent.

    Examples
    --------
    >>> import tempfile, os
    >>> store = HistoryStore(os.path.join(tempfile.mkdtemp(), "h.sqlite"))
    >>> doc = {"run": {}, "checks": [{"nodeid": "t::a", "metric": "acc", "value": 0.5}]}
    >>> store.record(doc, "v1")
    >>> store.versions(), store.values("v1")
    (['v1'], {('t::a', 'acc'): 0.5})
    """

    def __init__(self, path: str | PathLike[str]) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.is_file():
            raise HistoryError(
                f"no history database at {self.path}; run the audits with "
                f"--invariance-history {self.path} first"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN ourselves so the lock mode is explicit.
        con = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
            con.execute("PRAGMA foreign_keys = ON")
            self._ensure_schema(con, create=create)
            yield con
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"cannot use history database {self.path}: {exc}") from exc
        finally:
            con.close()

    def check(self) -> None:
        """Raise :class:`HistoryError` unless the file is absent, empty, or our history
        database; reads only, so another application's database is never altered."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        try:
            # immutable: no locks, so no -wal / -shm files are left beside a WAL database by this
            # read (a read-only connection cannot remove them on close); the header and schema
            # it reads are what a committed history holds
            con = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True,
                                  timeout=_BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise HistoryError(f"cannot open {self.path}: {exc}") from None
        try:
            self._foreign_check(con)
        except sqlite3.DatabaseError as exc:
            raise HistoryError(f"{self.path} is not an SQLite database ({exc}); "
                               "pass --invariance-history a new path") from None
        finally:
            con.close()

    def _foreign_check(self, con: sqlite3.Connection) -> None:
        # one read transaction: read apart, a writer creating the schema could commit between
        # the two reads (version 0, then its tables), and a second writer took our own new
        # database for another application's (tests/test_history_store.py, concurrent writers)
        con.execute("BEGIN")
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        finally:
            con.execute("COMMIT")
        if version == SCHEMA_VERSION and {"meta", "runs", "checks"} <= set(tables):
            return
        if version == 0 and not tables:
            return  # an empty database: ours to initialise
        if version > SCHEMA_VERSION and "runs" in tables:
            return  # ours, but newer: _ensure_schema says to upgrade
        raise HistoryError(
            f"{self.path} is not a pytest-invariance history database but another application's (tables: {', '.join(tables[:5]) or 'none'}"
            f", user_version {version}); refused and left unaltered; pass --invariance-history a new path")

    def _ensure_schema(self, con: sqlite3.Connection, *, create: bool) -> None:
        self._foreign_check(con)  # before any PRAGMA that writes
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise HistoryError(
                f"{self.path} has history schema {version}, newer than this plugin's "
                f"{SCHEMA_VERSION}; upgrade pytest-invariance"
            )
        if version == SCHEMA_VERSION:
            return
        if not create:
            raise HistoryError(f"{self.path} is not a pytest-invariance history database")
        # WAL lets readers run during a write; where it is refused (some network
        # filesystems) the rollback journal plus the busy timeout still serialise writers.
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("BEGIN IMMEDIATE")
        try:
            # Re-read inside the lock: another process may have created it meanwhile.
            if con.execute("PRAGMA user_version").fetchone()[0] == 0:
                # statement by statement: executescript() would COMMIT our lock away
                for statement in filter(str.strip, _SCHEMA.split(";")):
                    con.execute(statement)
                con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                            (str(SCHEMA_VERSION),))
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def record(self, doc: dict[str, Any], version_tag: str | None = None,
               git_commit: str | None = None) -> None:
        """Store a results document under ``version_tag`` (replacing that tag's figures).

        Parameters
        ----------
        doc : dict
            The results document ``{"run": {...}, "checks": [...]}``.
        version_tag : str, optional
            Defaults to :func:`default_tag` (first 12 hex of the model sha256).
        git_commit : str, optional
            Defaults to ``doc["run"]["git_commit"]``.
        """
        tag = version_tag or default_tag(doc)
        run = doc.get("run") or {}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        rows = {}
        for c in doc.get("checks", []):
            # (nodeid, metric) is the identity of a check; a later duplicate wins.
            rows[(str(c.get("nodeid")), str(c.get("metric")))] = (
                _num(c.get("value")), _num(c.get("ci_low")), _num(c.get("ci_high")),
                _num(c.get("threshold")), c.get("comparator"),
                None if c.get("passed") is None else int(bool(c.get("passed"))), c.get("verdict"))
        with self._connect(create=True) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                con.execute(
                    "INSERT INTO runs (tag, git_commit, model_sha256, first_recorded_at, recorded_at, doc)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(tag) DO UPDATE SET git_commit=excluded.git_commit,"
                    " model_sha256=excluded.model_sha256, recorded_at=excluded.recorded_at, doc=excluded.doc",
                    (tag, git_commit or run.get("git_commit"), run.get("model_sha256"), now, now,
                     json.dumps(doc, default=str)))
                run_id = con.execute("SELECT id FROM runs WHERE tag = ?", (tag,)).fetchone()[0]
                con.execute("DELETE FROM checks WHERE run_id = ?", (run_id,))
                con.executemany(
                    "INSERT INTO checks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(run_id, *key, *vals) for key, vals in rows.items()])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    def check_keys(self, tag: str) -> set[tuple[str, str]] | None:
        """The ``(nodeid, metric)`` of every figure stored under ``tag`` (a tool error's row,
        metric None, measured nothing: left out); None when the tag is not stored (or there is
        no history file yet)."""
        if not self.path.is_file():
            return None
        with self._connect() as con:
            row = con.execute("SELECT id FROM runs WHERE tag = ?", (tag,)).fetchone()
            if row is None:
                return None
            return {(str(n), str(m)) for n, m in con.execute(
                "SELECT nodeid, metric FROM checks WHERE run_id = ? AND metric != 'None'", (row[0],))}

    def kept_record(self, tag: str, doc: dict[str, Any]) -> str | None:
        """Why recording ``doc`` under ``tag`` would lose what its stored record holds, so that
        record is kept; None when ``doc`` may replace it (or ``tag`` is not stored).

        A record is kept when ``doc`` is of another model file (sha256) than the record, when
        ``doc`` measured fewer of its checks (:func:`measures_fewer`:
        a ``-k`` part, or a re-run some of whose tests errored), or when ``doc`` is not a
        baseline (:func:`not_a_baseline`: a tool error, ...) and the record is: replaced, the
        version would hold fewer figures, or none that ``latest`` may use, and a later
        ``--invariance-baseline`` compared fewer checks or none (exit 0 over real leaks).
        The reason reads after "this run".
        """
        stored = self.check_keys(tag)
        if stored is None:
            return None
        # one tag, one model: a second file written under v1 made a baseline pinned to v1
        # compare with another model, without a word
        old, new = (self.run(tag).get("run") or {}).get("model_sha256"), (doc.get("run") or {}).get("model_sha256")
        if old and new and old != new:
            return (f"is of model sha256 {new[:12]}, but version {tag} was recorded for model sha256 {old[:12]} "
                    "(another file)")
        ran = figure_keys(doc.get("checks") or [])
        if measures_fewer(ran, stored):
            return (f"has {len(ran)} of the {len(stored)} checks version {tag} holds (a -k, --lf or path subset, "
                    "or tests that could not run)")
        why = not_a_baseline(doc)
        if why and not_a_baseline(self.run(tag)) is None:
            return f"had {why}, and version {tag}'s record is a complete run (a baseline)"
        return None

    def versions(self) -> list[str]:
        """Stored tags, oldest first (by when each tag was first recorded)."""
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT tag FROM runs ORDER BY id")]

    def _run_id(self, con: sqlite3.Connection, tag: str) -> int:
        row = con.execute("SELECT id FROM runs WHERE tag = ?", (tag,)).fetchone()
        if row is None:
            known = [r[0] for r in con.execute("SELECT tag FROM runs ORDER BY id")]
            raise UnknownVersionError(
                f"version {tag!r} is not in {self.path}; stored versions: "
                + (", ".join(known) if known else "none"))
        return int(row[0])

    def resolve(self, tag_or_latest: str, current: str | None = None) -> str | None:
        """Turn a baseline spec into a stored tag.

        ``"latest"`` means the newest stored version *before* ``current``: if
        ``current`` is already stored (a re-run, or recorded before comparing) it is
        the version just before it, otherwise the newest stored version. So the
        plugin may call this before or after :meth:`record` and gets the same answer,
        and a model is never compared with itself. Versions whose run was interrupted,
        audited nothing or had tool errors (:func:`not_a_baseline`), or measured a strict
        subset of an earlier version's checks, are passed over.
        Returns None when there is no such version (first run, or no database yet) -
        the caller says so and skips comparison.

        Raises
        ------
        UnknownVersionError
            When an explicit tag is not stored.
        """
        if tag_or_latest != LATEST:
            with self._connect() as con:
                self._run_id(con, tag_or_latest)
            return tag_or_latest
        if not self.path.is_file():
            return None
        tags = self.versions()
        if current in tags:
            tags = tags[: tags.index(current)]
        ok = [not_a_baseline(self.run(t)) is None for t in tags]
        keys = [self.check_keys(t) or set() for t in tags]
        # A run that measured a strict subset of an earlier baseline's checks (-k under its own
        # tag) is passed over: as "latest" it compared 2 of 6 checks and missed a regression.
        partial = [any(measures_fewer(keys[i], keys[j]) for j in range(i) if ok[j]) for i in range(len(tags))]
        return next((t for i, t in reversed(list(enumerate(tags))) if ok[i] and not partial[i]), None)

    def values(self, tag: str) -> dict[tuple[str, str], float | None]:
        """``{(nodeid, metric): value}`` of one stored version."""
        with self._connect() as con:
            run_id = self._run_id(con, tag)
            return {(n, m): v for n, m, v in con.execute(
                "SELECT nodeid, metric, value FROM checks WHERE run_id = ?", (run_id,))}

    def run(self, tag: str) -> dict[str, Any]:
        """The results document stored under ``tag``, with ``run.version_tag`` set."""
        with self._connect() as con:
            run_id = self._run_id(con, tag)
            text, recorded = con.execute(
                "SELECT doc, recorded_at FROM runs WHERE id = ?", (run_id,)).fetchone()
        doc: dict[str, Any] = json.loads(text)
        doc.setdefault("run", {}).update(version_tag=tag, recorded_at=recorded)
        return doc

    def trend(self, nodeid: str, metric: str) -> list[TrendPoint]:
        """One check's figures across stored versions, oldest first."""
        with self._connect() as con:
            return [TrendPoint(*r) for r in con.execute(
                "SELECT r.tag, c.value, c.ci_low, c.ci_high, r.recorded_at FROM checks c"
                " JOIN runs r ON r.id = c.run_id WHERE c.nodeid = ? AND c.metric = ? ORDER BY r.id",
                (nodeid, metric))]

    def trend_rows(self) -> list[dict[str, Any]]:
        """Every stored figure as flat dicts, oldest version first: the ``history``
        argument of :func:`pytest_invariance.report.write_report`. Each row carries the
        check's ``test`` and ``layer`` too, so a sweep's check finds the figures of the same
        (test, layer, metric) in one-layer runs (:func:`~pytest_invariance.history.check_identity`)."""
        from ._baseline import check_identity

        with self._connect() as con:
            runs = con.execute("SELECT tag, doc, recorded_at FROM runs ORDER BY id").fetchall()
        rows: list[dict[str, Any]] = []
        for tag, text, recorded in runs:
            checks = {check_identity(c): c for c in json.loads(text).get("checks") or []}  # a later duplicate wins
            for (test, layer, metric), c in sorted(checks.items(), key=lambda kv: tuple(map(str, kv[0]))):
                rows.append({"tag": tag, "nodeid": c.get("nodeid"), "test": test, "layer": layer, "metric": metric,
                             "value": _num(c.get("value")), "ci_low": _num(c.get("ci_low")),
                             "ci_high": _num(c.get("ci_high")), "recorded_at": recorded})
        return rows
