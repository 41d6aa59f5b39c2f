"""HistoryStore: schema, ordering, 'latest', trend, and concurrent writers."""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from pytest_invariance.history import (
    SCHEMA_VERSION,
    HistoryError,
    HistoryStore,
    UnknownVersionError,
    default_tag,
)


def make_doc(acc, sha="ab" * 32, extra=()):
    checks = [{"nodeid": "audits/test_pose.py::test_yaw", "metric": "yaw_mae", "value": acc * 10,
               "ci_low": acc * 10 - 1, "ci_high": acc * 10 + 1, "comparator": ">=", "passed": True},
              {"nodeid": "audits/test_attr.py::test_smile", "metric": "accuracy", "value": acc,
               "ci_low": None, "ci_high": float("nan"), "comparator": "<=", "passed": False}]
    checks += list(extra)
    return {"run": {"model_sha256": sha, "git_commit": "deadbeef"}, "checks": checks}


def test_schema_version_and_meta(tmp_path):
    store = HistoryStore(tmp_path / "sub" / "h.sqlite")
    store.record(make_doc(0.5), "v1")
    con = sqlite3.connect(store.path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "h.sqlite"
    HistoryStore(path).record(make_doc(0.5), "v1")
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(HistoryError, match="newer than this plugin's"):
        HistoryStore(path).versions()


def test_foreign_sqlite_file_is_refused(tmp_path):
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE x (y)").connection.close()
    with pytest.raises(HistoryError, match="not a pytest-invariance history"):
        HistoryStore(path).versions()


def test_missing_database_reads_fail_clearly(tmp_path):
    store = HistoryStore(tmp_path / "none.sqlite")
    with pytest.raises(HistoryError, match="no history database at .*none.sqlite"):
        store.versions()
    assert store.resolve("latest", current="v1") is None
    assert not store.path.exists()  # reading never creates it


def test_record_values_run_and_rerecord(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record(make_doc(0.5), "v1")
    store.record(make_doc(0.6), "v2")
    store.record(make_doc(0.7), "v1")  # re-audit of v1 replaces figures, keeps position
    assert store.versions() == ["v1", "v2"]
    vals = store.values("v1")
    assert vals[("audits/test_attr.py::test_smile", "accuracy")] == 0.7
    assert vals[("audits/test_pose.py::test_yaw", "yaw_mae")] == pytest.approx(7.0)
    doc = store.run("v2")
    assert doc["run"]["version_tag"] == "v2" and doc["checks"][1]["value"] == 0.6
    with pytest.raises(UnknownVersionError, match="'v9' is not in .*stored versions: v1, v2"):
        store.values("v9")


def test_default_tag():
    assert default_tag(make_doc(0.5, sha="0123456789abcdef" * 4)) == "0123456789ab"
    assert default_tag({"run": {"started": "2024-05-01T10:20:30+00:00"}}) == "run-20240501T102030"


def test_resolve_latest(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    for tag in ("v1", "v2", "v3"):
        store.record(make_doc(0.5), tag)
    assert store.resolve("latest", current="v4") == "v3"  # new version: newest stored
    assert store.resolve("latest", current="v3") == "v2"  # already recorded: the one before
    assert store.resolve("latest", current="v2") == "v1"  # re-run of an old version
    assert store.resolve("latest", current="v1") is None  # nothing older
    assert store.resolve("latest") == "v3"
    assert store.resolve("v1") == "v1"
    with pytest.raises(UnknownVersionError, match="stored versions: v1, v2, v3"):
        store.resolve("v7")


def test_trend(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record(make_doc(0.5), "v1")
    store.record({"run": {}, "checks": []}, "v2")  # a version without this check
    store.record(make_doc(0.8), "v3")
    trend = store.trend("audits/test_attr.py::test_smile", "accuracy")
    assert [(p.tag, p.value) for p in trend] == [("v1", 0.5), ("v3", 0.8)]
    assert trend[0].ci_high is None  # NaN stored as NULL
    yaw = store.trend("audits/test_pose.py::test_yaw", "yaw_mae")
    assert yaw[1][:4] == ("v3", 8.0, 7.0, 9.0)
    rows = store.trend_rows()
    assert len(rows) == 4 and rows[0]["tag"] == "v1" and set(rows[0]) >= {"nodeid", "metric", "value"}


_WRITER = textwrap.dedent("""
    import sys
    from pytest_invariance.history import HistoryStore
    path, prefix = sys.argv[1], sys.argv[2]
    store = HistoryStore(path)
    for i in range(25):
        checks = [{"nodeid": f"t::{prefix}{j}", "metric": "m", "value": float(i)} for j in range(20)]
        store.record({"run": {}, "checks": checks}, f"{prefix}-{i}")
""")


def test_concurrent_writers(tmp_path):
    path = tmp_path / "h.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), p], stderr=subprocess.PIPE)
             for p in ("a", "b")]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    store = HistoryStore(path)
    tags = store.versions()
    assert sorted(tags) == sorted([f"{p}-{i}" for p in "ab" for i in range(25)])
    # each writer's own versions stay in its order; every run has all its checks
    assert [t for t in tags if t.startswith("a-")] == [f"a-{i}" for i in range(25)]
    assert all(len(store.values(t)) == 20 for t in ("a-24", "b-0", "b-13"))
