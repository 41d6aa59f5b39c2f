"""Progress lines: drawn on a terminal, quiet in CI and when not a terminal."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from pytest_invariance import _progress
from pytest_invariance._progress import Steps, bar, progress_wanted


@pytest.fixture(autouse=True)
def _no_kept_terminal(monkeypatch):
    # a run started on a terminal keeps its fd 2 (keep_terminal): these tests draw on sys.__stderr__
    monkeypatch.setattr(_progress, "_TERMINAL", None, raising=False)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, ci, mode, wanted", [
    (True, None, "auto", True), (True, "true", "auto", False), (False, None, "auto", False),
    (False, "true", "on", True), (True, None, "off", False)])
def test_progress_wanted(monkeypatch, tty, ci, mode, wanted):
    monkeypatch.setattr(_progress, "_TERMINAL", None)  # as in a process started without a terminal
    monkeypatch.setattr(sys, "__stderr__", Tty() if tty else io.StringIO())
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    assert progress_wanted(mode) is wanted


def test_steps_name_each_step_on_the_real_stderr(monkeypatch):
    err = Tty()
    monkeypatch.setattr(sys, "__stderr__", err)
    with Steps(2, "lenet study", True) as s:
        s.next("MAV")
        s.next("spectrum bootstrap")
    text = err.getvalue()
    assert "lenet study" in text and "MAV" in text and "spectrum bootstrap" in text and "1/2" in text


def test_disabled_bars_write_nothing(monkeypatch):
    err = Tty()
    monkeypatch.setattr(sys, "__stderr__", err)
    with Steps(2, "quiet", False) as s:
        s.next("a")
    b = bar(10, "x", False)
    b.update(10)
    b.close()
    assert err.getvalue() == ""


def test_extraction_draws_a_bar(monkeypatch, tmp_path):
    pytest.importorskip("torch")
    import pandas as pd

    from pytest_invariance.data import ArrayImageSet
    from pytest_invariance.embeddings import extract
    from pytest_invariance.models import load_model
    from pytest_invariance.testing import export_onnx, tiny_cnn

    model = load_model(str(export_onnx(tiny_cnn(), tmp_path / "m.onnx")), device="cpu")
    images = ArrayImageSet(np.zeros((20, 28, 28), np.uint8), pd.DataFrame({"y": np.arange(20) % 2}), name="z")
    err = Tty()
    monkeypatch.setattr(sys, "__stderr__", err)
    extract(model, images, batch_size=8, progress=True, label="tiny test")
    assert "tiny test" in err.getvalue() and "/20 " in err.getvalue()  # redrawn at most every 0.1 s


@pytest.mark.parametrize("shown", [True, False])
def test_probe_extras_and_perturbation_splits_show_their_steps(monkeypatch, shown):
    # The MLP/control extras and the 20-split face regression run for minutes on real
    # suites: each names its steps on a terminal, and writes nothing when not wanted.
    from pytest_invariance.studies.erasure import ProbeExtras, factor_extras
    from pytest_invariance.studies.faces import repeated_regression

    err = Tty()
    monkeypatch.setattr(sys, "__stderr__", err)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 6))
    y = X @ np.arange(6.0) + rng.normal(size=300)

    def linear(Xa, Ya, Xt):  # least squares with an intercept, by numpy
        A = np.column_stack([Xa, np.ones(len(Xa))])
        coef = np.linalg.lstsq(A, Ya, rcond=None)[0]
        return np.column_stack([Xt, np.ones(len(Xt))]) @ coef

    factor_extras(X[:200], y[:200], X[200:], y[200:], metric="yaw_mae", linear_rows=linear,
                  chance=lambda a, b: float(np.abs(a.mean() - b).mean()),
                  cfg=ProbeExtras(mlp_hidden=8, mlp_max_train=200, control_clusters=4, n_bootstrap=20),
                  device="cpu", seed=0, progress=shown, name="tiny")
    with bar(3, "tiny yaw splits", shown, unit="fit") as b:
        repeated_regression(X, y, np.repeat(np.arange(30), 10), 0.7, 0, 3, on_split=b.update)
    text = err.getvalue()
    if shown:
        for step in ("tiny yaw_mae extras", "control clusters", "MLP probe", "linear probe", "bootstrap",
                     "tiny yaw splits"):
            assert step in text
    else:
        assert text == ""


def test_a_bar_drawn_inside_a_test_reaches_the_terminal(tmp_path):
    # pytest's default capture redirects fd 2 while a test runs: bars on sys.__stderr__ went into
    # the capture file and no progress line showed during the tests (verify14 F3)
    import os
    import pty
    import subprocess

    (tmp_path / "test_bar.py").write_text(
        "import time\n"
        "from pytest_invariance._progress import Steps, progress_wanted\n"
        "def test_long_step():\n"
        "    with Steps(2, 'study under capture', progress_wanted()) as s:\n"
        "        s.next('first fit'); time.sleep(0.2)\n"
        "        s.next('second fit'); time.sleep(0.2)\n")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    # a new pseudo-terminal is 0 columns wide, where tqdm draws nothing: size it as a terminal is
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")}
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_bar.py"],
                            cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0
    text = out.decode(errors="replace")
    assert "1 passed" in text
    assert "study under capture" in text and "first fit" in text and "second fit" in text
