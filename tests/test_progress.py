"""Progress lines: drawn on a terminal, quiet in CI and when not a terminal."""
from __future__ import annotations

import io
import sys

import numpy as np
import pytest

from pytest_invariance._progress import Steps, bar, progress_wanted


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, ci, mode, wanted", [
    (True, None, "auto", True), (True, "true", "auto", False), (False, None, "auto", False),
    (False, "true", "on", True), (True, None, "off", False)])
def test_progress_wanted(monkeypatch, tty, ci, mode, wanted):
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
