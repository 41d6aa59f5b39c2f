"""Plot helpers: shape of the returned dicts, size limits, and downsampling."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from pytest_invariance.report import plots


def _png_size(plot):
    from PIL import Image

    raw = base64.b64decode(plot["png"], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return Image.open(io.BytesIO(raw)).size


def test_downsample_columns_averages_within_groups():
    x = np.array([[0.0, 2.0, 10.0, 12.0, 14.0, 16.0]])
    out, starts = plots.downsample_columns(x, max_cols=3, groups=[0, 0, 1, 1, 1, 1])
    assert starts == [0, 1] and out.tolist() == [[1.0, 11.0, 15.0]]  # no bin mixes groups
    same, _ = plots.downsample_columns(x, max_cols=100)
    assert same.tolist() == x.tolist()


def test_heatmap_of_full_mnist_size_stays_small():
    rng = np.random.default_rng(0)
    m = rng.random((500, 70000), dtype=np.float32)  # worst case for compression: noise
    p = plots.heatmap(m, "ip1 feature", "sample", "Raw LeNet", col_groups=np.repeat(np.arange(10), 7000))
    assert set(p) == {"title", "kind", "png"} and p["kind"] == "heatmap"
    assert len(p["png"]) < plots.MAX_BYTES
    w, h = _png_size(p)
    assert 300 < w < 1000 and 150 < h < 600


def test_heatmap_sorts_columns_by_group():
    # class 1 columns are bright; interleaved input must come out as two clean blocks
    m = np.tile([0.0, 1.0], 50)[None, :].repeat(4, axis=0)
    groups = np.tile([0, 1], 50)
    p = plots.heatmap(m, "f", "s", "t", col_groups=groups)
    assert _png_size(p)[0] > 0


@pytest.mark.parametrize("factory", [
    lambda: plots.scree_plot(np.linspace(10, 0.1, 500), k=10),
    lambda: plots.fn_fp_bars([{"attribute": "Smiling", "group": "identity-independent", "fn_rate": 0.1,
                               "fn_ci": (0.08, 0.12), "fp_rate": 0.05, "fp_ci": None},
                              {"attribute": "Male", "group": "identity-dependent", "fn_rate": 0.02,
                               "fn_ci": (0.01, 0.03), "fp_rate": 0.03, "fp_ci": (0.02, 0.04)}], "errors"),
    lambda: plots.angle_error_bars([{"model": "lenet", "class": c, "mean": 14.0, "std": 3.0} for c in range(10)]),
    lambda: plots.curve([0, 1, 2], {"lenet": ([0.9, 0.8, 0.5], [0.85, 0.75, 0.45], [0.95, 0.85, 0.55]),
                                    "pair": ([0.95, 0.9, 0.7], None, None)}, "sigma (px)", "accuracy", "blur"),
])
def test_vector_plots_are_svg_with_labels(factory):
    p = factory()
    assert set(p) == {"title", "kind", "svg"}
    assert p["svg"].lstrip().startswith("<?xml") and "</svg>" in p["svg"]
    assert len(p["svg"].encode()) < plots.MAX_BYTES


def test_svg_is_deterministic():
    a = plots.scree_plot([3.0, 2.0, 1.0], k=1)["svg"]
    assert a == plots.scree_plot([3.0, 2.0, 1.0], k=1)["svg"]


def test_block_diagonal_plot():
    rng = np.random.default_rng(1)
    p = plots.block_diagonal_plot(rng.random((500, 3000)), [50, 120, 400], "blocks", col_boundaries=[1000, 2000])
    assert p["kind"] == "block_diagonal" and len(p["png"]) < plots.MAX_BYTES and _png_size(p)[0] > 0


def test_bin_table_formats_missing_values():
    t = plots.bin_table([{"bin": "45-90", "mae": None, "ci": None, "count": 3}])
    assert t["kind"] == "table" and t["rows"] == [["45-90", "–", "[–, –]", "3"]]
    assert t["columns"][1] == "MAE (°)"
