"""Synthetic models and a toy suite for testing the plugin and writing new suites.

``AngleNet`` encodes the rotation angle of its input in a known direction of its
feature layer (a fixed filter bank whose responses change with orientation), and
``BlindNet`` averages the image, so rotation leaves its features untouched. Both are
tiny and deterministic (seeded weights), and export to ONNX and TorchScript.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TOY_SUITE_TOML = """\
[suite]
name = "toy"
input = [1, 28, 28]

[models.{name}]
path = "{path}"
layer = "{layer}"

[thresholds]
feature_mean = {{ max = 1000.0 }}
"""

TOY_SUITE_TEST = '''\
import numpy as np, pandas as pd
from pytest_invariance.data import ArrayImageSet
from pytest_invariance.probes._estimate import Estimate

def test_features(invariance_model, invariance_audit, invariance_check):
    rng = np.random.default_rng(0)
    images = ArrayImageSet(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8),
                           pd.DataFrame({"label": np.arange(64) % 4}), name="toy-noise")
    X = invariance_audit.embed(invariance_model, images)
    m = float(X.mean())
    invariance_check("feature_mean", Estimate(m, m - 1e-3, m + 1e-3, chance=0.0, n=len(X)),
                     details={"model": invariance_model.name})
'''


_CLASSES: dict[str, Any] = {}


def _tiny_cnn_class() -> Any:
    import torch
    from torch import nn

    class TinyCNN(nn.Module):
        """``conv`` -> ``act`` -> ``pool`` -> ``fc`` (10 outputs) on [N, 1, 28, 28]."""

        def __init__(self, nan: bool = False) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 5)
            self.act = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool2d(4)
            self.fc = nn.Linear(128, 10)
            self.nan = nan

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.pool(self.act(self.conv(x)))
            out = self.fc(h.flatten(1))
            return out / 0.0 if self.nan else out

    return TinyCNN


def _tiny_vit_class() -> Any:
    import torch
    from torch import nn

    class TinyViT(nn.Module):
        """4x4 patches of a 12x12 image -> 9 tokens + CLS, one attention block, ``norm``
        tokens [N, 10, 16]; the output is a linear head on the CLS token (``classes``
        outputs) or, with ``classes=None``, the CLS token itself [N, 16]."""

        def __init__(self, classes: int | None = 5) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, 16, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 16))
            self.pos = nn.Parameter(torch.randn(1, 10, 16))
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.norm = nn.LayerNorm(16)
            self.head = nn.Linear(16, classes) if classes else nn.Identity()

        def tokens(self, x: torch.Tensor) -> torch.Tensor:
            """The ``norm`` tokens [N, 10, 16], computed without hooks (a reference for tests)."""
            t = self.patch(x).flatten(2).transpose(1, 2)
            t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
            return self.norm(t + self.attn(t, t, t, need_weights=False)[0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.tokens(x)[:, 0])

    return TinyViT


def _resnet_blocks_class() -> Any:
    import torch
    from torch import nn
    from torchvision.models import resnet

    class ResNetBlocks(nn.Module):
        """``stem`` conv -> torchvision ``BasicBlock`` (its ``relu`` runs twice per forward)
        -> pooled linear ``head`` (4 outputs), on [N, 3, H, W]; seeded, with non-trivial
        BatchNorm running statistics (so eval and train mode differ)."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.block = resnet.BasicBlock(8, 8)
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
            for bn in (self.block.bn1, self.block.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(self.stem(x)))

    return ResNetBlocks


def _stripe_embedding_class() -> Any:
    import torch
    from torch import nn

    class StripeEmbedding(nn.Module):
        """No weights: the top-left 4 x 4 corner's pixels and the mean colour of rows 6-9, on
        [N, C, H, W] -> [N, 16 C + C]; for factor folders whose images hold noise in the corner
        and a planted factor in a stripe (the gate and erasure tests)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :, :4, :4].flatten(1), x[:, :, 6:10, :].mean((2, 3))], 1)

    return StripeEmbedding


_LAZY = {"TinyCNN": _tiny_cnn_class, "TinyViT": _tiny_vit_class, "ResNetBlocks": _resnet_blocks_class,
         "StripeEmbedding": _stripe_embedding_class}


def __getattr__(name: str) -> Any:  # lazy: importing this module must not import torch
    if name not in _LAZY:
        raise AttributeError(name)
    if name not in _CLASSES:  # defined once, and picklable by reference as this module's
        cls = _LAZY[name]()
        cls.__module__, cls.__qualname__ = __name__, name
        _CLASSES[name] = cls
    return _CLASSES[name]


def tiny_vit(seed: int = 3, *, classes: int | None = 5) -> Any:
    """A seeded one-block vision transformer on [N, 3, 12, 12] in eval mode: token layers
    (``attn``, ``norm``: [N, 10, 16]) for the pool rules, the CLS token read by ``head``."""
    import torch

    cls = __getattr__("TinyViT")
    torch.manual_seed(seed)
    return cls(classes=classes).eval()


def tiny_cnn(seed: int = 0, *, nan: bool = False) -> Any:
    """A seeded 2-layer CNN; ``nan=True`` makes every output NaN (for error tests)."""
    import torch

    cls = __getattr__("TinyCNN")
    torch.manual_seed(seed)
    return cls(nan=nan).eval()


def grid_cnn(out_channels: int, kernel: int, grid: int, *, padding: int = 0, seed: int = 0) -> Any:
    """Seeded ``conv`` (3 -> ``out_channels``, ``kernel`` x ``kernel``) -> ReLU -> average
    pool of ``grid`` x ``grid`` windows -> flatten: features that keep coarse position, so
    that probes find planted image factors. Input [N, 3, H, W]; output
    [N, out_channels * (H' // grid) * (W' // grid)]."""
    from collections import OrderedDict

    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(3, out_channels, kernel, padding=padding), act=nn.ReLU(),
                                     pool=nn.AvgPool2d(grid), flat=nn.Flatten(1))).eval()


def export_onnx(module: Any, path: str | Path, input_shape: tuple[int, ...] = (1, 28, 28),
                output_names: tuple[str, ...] = ("output",)) -> Path:
    """Export with the TorchScript-based exporter (no onnxscript needed), dynamic batch."""
    import torch

    path = Path(path)
    torch.onnx.export(module, torch.zeros(2, *input_shape), str(path), dynamo=False,
                      input_names=["input"], output_names=list(output_names),
                      dynamic_axes={"input": {0: "n"}, **{o: {0: "n"} for o in output_names}})
    return path


def write_toy_suite(folder: str | Path, model_path: str, layer: str) -> Path:
    """A one-test audit suite under ``folder/audits/toy`` auditing ``model_path`` at ``layer``."""
    suite = Path(folder) / "audits" / "toy"
    suite.mkdir(parents=True, exist_ok=True)
    (suite / "invariance.toml").write_text(TOY_SUITE_TOML.format(name=Path(model_path).stem, path=model_path, layer=layer))
    (suite / "test_toy.py").write_text(TOY_SUITE_TEST)
    return suite


def write_noise_folder(root: str | Path, n: int = 200, size: int = 16) -> Path:
    """A factors-suite folder under ``root``: ``n`` random-noise RGB images ``size`` x ``size``
    (``img/NNN.png``) and a ``labels.csv`` with a binary ``flag`` (alternating) and a continuous
    ``level`` (seeded normal draws) that no image carries. Returns ``root``."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "img" / f"{i:03d}.png")
        rows.append(f"img/{i:03d}.png,{i % 2},{rng.normal():.4f}")
    (root / "labels.csv").write_text("image,flag,level\n" + "\n".join(rows) + "\n")
    return root


def read_results(pytester: Any, name: str = "reports/results.json") -> dict[str, Any]:
    """The results.json a ``pytester`` run wrote (``name`` relative to its folder)."""
    import json

    return json.loads((Path(pytester.path) / name).read_text())  # type: ignore[no-any-return]


def copy_suite(pytester: Any, *names: str) -> Any:
    """Copy the repository's ``audits/<name>`` suites into the ``pytester`` folder; returns it."""
    import shutil

    repo = Path(__file__).resolve().parents[1]
    for name in names:
        shutil.copytree(repo / "audits" / name, Path(pytester.path) / "audits" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return pytester


def run_and_read(pytester: Any, *args: str) -> tuple[Any, dict[str, Any] | None]:
    """``pytest *args`` in a subprocess of ``pytester``, with no report, cache or shared
    history, and the results.json it wrote (None when the run stopped before writing one)."""
    out = Path(pytester.path) / "results.json"
    if out.exists():
        out.unlink()
    result = pytester.runpytest_subprocess(*args, "-p", "no:cacheprovider", "--invariance-no-report",
                                           f"--invariance-json={out}", "--invariance-history=h.sqlite",
                                           "--invariance-no-cache", "-rs")
    return result, (read_results(pytester, out.name) if out.exists() else None)
