"""The pytest-invariance command: history listing and compare."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("jinja2")

from pytest_invariance.cli import main
from pytest_invariance.history import HistoryStore


def _doc(leak, yaw, commit):
    return {"run": {"model_sha256": "cd" * 32, "git_commit": commit, "model_path": "m.onnx"},
            "checks": [
                {"nodeid": "audits/test_attr.py::test_leak[Smiling]", "metric": "balanced_accuracy", "value": leak,
                 "ci_low": leak - 0.01, "ci_high": leak + 0.01, "threshold": 0.65, "comparator": "<=",
                 "passed": leak <= 0.65, "verdict": "PASS" if leak <= 0.65 else "FAIL"},
                {"nodeid": "audits/test_pose.py::test_yaw", "metric": "yaw_mae", "value": yaw,
                 "ci_low": yaw - 0.2, "ci_high": yaw + 0.2, "threshold": 15.0, "comparator": ">=",
                 "passed": yaw >= 15, "verdict": "PASS" if yaw >= 15 else "FAIL"}]}


@pytest.fixture()
def history(tmp_path):
    store = HistoryStore(tmp_path / "h.sqlite")
    store.record(_doc(0.60, 16.0, "aaa111"), "v1")
    store.record(_doc(0.70, 16.1, "bbb222"), "v2")  # Smiling leaks more, yaw within noise
    return store


def test_history_lists_versions(history, capsys):
    assert main(["history", "--history", str(history.path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["version", "recorded", "checks", "failed"]
    assert [line.split()[0] for line in out[1:]] == ["v1", "v2"]
    assert out[2].split()[2:] == ["2", "1", "0", "0", "bbb222", "yes"]


def test_compare_writes_report_and_flags_worse(history, tmp_path, capsys):
    out_html = tmp_path / "out" / "compare.html"
    assert main(["compare", "v1", "v2", "--history", str(history.path), "--out", str(out_html)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["worse", "audits/test_attr.py::test_leak[Smiling]"]
    assert lines[1].split()[-1] == "+0.1"
    assert lines[2].split()[0] == "same"
    assert lines[-1].startswith("1 worse, 0 better of 2 checks; report: ")
    html = out_html.read_text()
    assert 'id="count-worse">1<' in html and "aaa111" in html and "bbb222" in html
    assert "http://" not in html and "https://" not in html


def test_compare_improvement_exits_zero(history, tmp_path, capsys):
    assert main(["compare", "v2", "v1", "--history", str(history.path), "--out", str(tmp_path / "c.html")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "better"


def test_compare_latest_means_version_before(history, tmp_path, capsys):
    assert main(["compare", "latest", "v2", "--history", str(history.path), "--out", str(tmp_path / "c.html")]) == 1
    out = capsys.readouterr().out
    assert "v1" in out.splitlines()[0]


@pytest.mark.parametrize(("argv", "message"), [
    (["compare", "v1", "v9"], "pytest-invariance: error: version 'v9' is not in {db}; stored versions: v1, v2\n"),
    (["compare", "latest", "v1"], "pytest-invariance: error: no version stored before 'v1' in {db} to compare against\n"),
])
def test_compare_errors_are_one_line(history, tmp_path, capsys, argv, message):
    out_html = tmp_path / "c.html"
    assert main([*argv, "--history", str(history.path), "--out", str(out_html)]) == 2
    assert capsys.readouterr().err == message.format(db=history.path)
    assert not out_html.exists()


def test_missing_database(tmp_path, capsys):
    db = tmp_path / "none.sqlite"
    assert main(["history", "--history", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no history database at {db}" in err
    assert not db.exists()


def test_console_entry_runs_as_module(history):
    proc = subprocess.run([sys.executable, "-m", "pytest_invariance.cli", "history", "--history", str(history.path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "v2" in proc.stdout
