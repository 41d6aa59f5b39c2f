"""Image sets: what the extraction stage consumes.

An :class:`ImageSet` is a map-style torch ``Dataset`` whose item ``i`` is one image
as ``float32[C, H, W]`` in [0, 1], plus a ``labels`` table aligned with it (one row per
item: class, factor levels, attributes) and a ``fingerprint`` string that changes
whenever the images or their order change. The fingerprint is part of the embedding
cache key, so it must be cheap to compute and stable across processes.

``data_digest`` names the data itself, whatever the seed: the images' content, their labels
and a split the data fixes (not one the seed draws, not the size the model reads them at).
Each check records the digests of the image sets its test embedded (``details.data_digest``),
and ``--invariance-baseline`` compares only checks measured on the same data
(:func:`pytest_invariance.history.judge_change`).
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from .perturbations import PerturbationSpec

if TYPE_CHECKING:
    import pandas as pd
    import torch


def table_digest(labels: "pd.DataFrame") -> str:
    """sha256 over a label table's column names, dtypes and values, row order included."""
    h = hashlib.sha256()
    for col in labels.columns:
        values = labels[col].to_numpy()
        h.update(f"\0{col}\0{values.dtype}\0".encode())
        if values.dtype.kind in "biufcM":
            h.update(np.ascontiguousarray(values).tobytes())
        else:
            h.update("\0".join(map(str, values)).encode())
    return h.hexdigest()[:32]


def digest_of(*parts: Any) -> str:
    """sha256 of the parts' text, 32 hex: a data digest derived from others."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def fingerprint_array(arr: np.ndarray, *extra: Any) -> str:
    """sha256 over an array's bytes, shape and dtype, plus any extra identifying values."""
    h = hashlib.sha256()
    h.update(str((arr.shape, str(arr.dtype), extra)).encode())
    h.update(np.ascontiguousarray(arr).data)
    return h.hexdigest()[:32]


class ImageSet:
    """Base class: subclasses set ``fingerprint``, ``labels`` and implement ``__getitem__``."""

    fingerprint: str
    labels: "pd.DataFrame"
    _data_digest: str | None = None

    @property
    def data_digest(self) -> str:
        """The data, not the seed (see the module docstring); by default the fingerprint
        (a set that draws nothing from the seed)."""
        return self._data_digest or self.fingerprint

    @data_digest.setter
    def data_digest(self, value: str | None) -> None:
        self._data_digest = value

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> "torch.Tensor":  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self[0].shape)  # type: ignore[return-value]

    def ids(self) -> list[str] | None:
        """Each item's id for joining precomputed embeddings (``--invariance-embeddings``),
        or None: images the plugin makes itself (arrays, perturbations) have none."""
        return None


class ArrayImageSet(ImageSet):
    """Images held as a compact uint8 (or float) array ``[N, H, W]`` or ``[N, C, H, W]``.

    uint8 keeps MNIST at 47 MB; items are converted to float32 in [0, 1] one at a time,
    so the float copy of the whole set never exists.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> s = ArrayImageSet(np.zeros((2, 4, 4), np.uint8), pd.DataFrame({"y": [0, 1]}), name="toy")
    >>> tuple(s[0].shape)
    (1, 4, 4)
    """

    def __init__(self, images: np.ndarray, labels: "pd.DataFrame", *, name: str, scale: float | None = None,
                 data_digest: str | None = None):
        if images.ndim == 3:
            images = images[:, None]
        if images.ndim != 4:
            raise DataError(f"{name}: images must be [N, H, W] or [N, C, H, W]; got shape {images.shape}")
        if len(images) != len(labels):
            raise DataError(
                f"{name}: {len(images)} images but {len(labels)} label rows; "
                "labels must have exactly one row per image, in the same order"
            )
        self.images = images
        self.labels = labels.reset_index(drop=True)
        self.name = name
        self.scale = scale if scale is not None else (1 / 255 if images.dtype == np.uint8 else 1.0)
        self.fingerprint = fingerprint_array(images, name, self.scale)
        self._data_digest = data_digest

    @property
    def data_digest(self) -> str:
        """The pixels and the label table (not the name, which may hold a seed); hashed on
        first use, since only a check's test asks for it."""
        if self._data_digest is None:
            self._data_digest = digest_of(fingerprint_array(self.images, self.scale), table_digest(self.labels))
        return self._data_digest

    @data_digest.setter
    def data_digest(self, value: str | None) -> None:
        self._data_digest = value

    def __getitem__(self, index: int) -> "torch.Tensor":
        import torch

        return torch.from_numpy(np.asarray(self.images[index], dtype=np.float32) * np.float32(self.scale))

    def __getitems__(self, indices: list[int]) -> "torch.Tensor":
        # DataLoader fetches a whole batch through this when present: one fancy-index
        # and one conversion instead of a Python call and a stack per image.
        import torch

        idx = np.asarray(indices)
        return torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32) * np.float32(self.scale))

    def subset(self, index: np.ndarray, name: str, data_digest: str | None = None) -> "ArrayImageSet":
        """The rows ``index``; ``data_digest`` for a subset the seed draws (default: its own content)."""
        return ArrayImageSet(self.images[index], self.labels.iloc[index], name=name, scale=self.scale,
                             data_digest=data_digest)


class PerturbedImageSet(ImageSet):
    """Every image of ``base`` at every level of ``spec``, level-major.

    Item ``i`` is base image ``i % len(base)`` at level ``levels[i // len(base)]``. The
    labels gain the column ``spec.name`` (the exact level) and ``source_index``.
    """

    def __init__(self, base: ImageSet, spec: PerturbationSpec):
        import pandas as pd

        self.base, self.spec = base, spec
        n = len(base)
        tables = []
        for level in spec.levels:
            t = base.labels.copy()
            t[spec.name] = level
            t["source_index"] = np.arange(n)
            tables.append(t)
        self.labels = pd.concat(tables, ignore_index=True)
        self.fingerprint = hashlib.sha256(f"{base.fingerprint}|{spec.key()}".encode()).hexdigest()[:32]

    @property
    def data_digest(self) -> str:
        return digest_of(self.base.data_digest, self.spec.key())

    def __getitem__(self, index: int) -> "torch.Tensor":
        n = len(self.base)
        level = self.spec.levels[index // n]
        return self.spec.apply(self.base[index % n][None], level)[0]

    def __getitems__(self, indices: list[int]) -> "torch.Tensor":
        # Perturb per level in one batched call (a batch is mostly one level, level-major).
        import torch

        idx = np.asarray(indices)
        n = len(self.base)
        level_of, src = idx // n, idx % n
        out = None
        for li in np.unique(level_of):
            sel = np.nonzero(level_of == li)[0]
            imgs = fetch_batch(self.base, src[sel].tolist())
            pert = self.spec.apply(imgs, self.spec.levels[int(li)])
            if out is None:
                out = torch.empty((len(idx), *pert.shape[1:]), dtype=pert.dtype)
            out[torch.from_numpy(sel)] = pert
        assert out is not None
        return out


class SourceImageSet(ImageSet):
    """The images of ``base`` as a :class:`PerturbedImageSet` feeds them to its perturbation:
    at their own size (never decoded at the model's through ``at_size``), unperturbed.

    The rows of a perturbation's neutral level, when that level leaves every image
    unchanged, are these: embedded once and shared by every factor of a suite.
    """

    def __init__(self, base: ImageSet):
        self.base, self.labels = base, base.labels
        self.fingerprint = hashlib.sha256(f"{base.fingerprint}|source".encode()).hexdigest()[:32]

    @property
    def data_digest(self) -> str:
        return digest_of(self.base.data_digest, "source")

    def __getitem__(self, index: int) -> "torch.Tensor":
        return self.base[index]

    def __getitems__(self, indices: list[int]) -> "torch.Tensor":
        return fetch_batch(self.base, indices)

    def unchanged_by(self, spec: PerturbationSpec, level: float, batch: int = 1024) -> bool:
        """Whether ``spec`` at ``level`` returns every image bit for bit (a perturbation pass
        over the images, without the model)."""
        import torch

        for start in range(0, len(self), batch):
            x = fetch_batch(self.base, list(range(start, min(start + batch, len(self)))))
            if not torch.equal(spec.apply(x, level), x):
                return False
        return True


def fetch_batch(images: ImageSet, indices: list[int]) -> "torch.Tensor":
    """A stacked batch from any ImageSet, batched when it supports ``__getitems__``."""
    import torch

    getitems = getattr(images, "__getitems__", None)
    if getitems is not None:
        return getitems(indices)
    return torch.stack([images[i] for i in indices])


def collate(batch: "torch.Tensor | list[torch.Tensor]") -> "torch.Tensor":
    """DataLoader collate: a batch already stacked by ``__getitems__`` passes through."""
    import torch

    return batch if isinstance(batch, torch.Tensor) else torch.stack(list(batch))
