"""Real face images that ship with installed packages, for offline smoke tests and examples.

- :func:`load_lfw_faces`: the 100 face crops of scikit-image's ``lfw_subset.npy`` (Labeled
  Faces in the Wild, 25x25 grayscale; the file's other 100 images are non-faces and are not
  used). The file carries no identity labels, so ``identity`` is simply the index: treat
  every image as its own person.
- :func:`load_sample_faces`: two single-face colour portraits, scikit-image's ``astronaut``
  (Eileen Collins) and matplotlib's ``grace_hopper.jpg``, cropped to the face with a
  FaceNet-like margin (square, whole head).

Both return an :class:`ArrayImageSet` of uint8 pixels, so items are float32 in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DatasetNotFoundError, InvalidParameterError
from ._source import ArrayImageSet

if TYPE_CHECKING:
    from numpy.typing import NDArray

N_LFW_FACES = 100
LFW_SIZE = (25, 25)
# (top, left, side) of a square face crop, chosen by eye with a margin like FaceNet's
# MTCNN box + 44 px at 182 -> 160; the crops include hair and chin.
_ASTRONAUT_BOX = (30, 145, 170)
_HOPPER_BOX = (110, 125, 270)


def _resize(images: NDArray[np.uint8], size: tuple[int, int] | None) -> NDArray[np.uint8]:
    """Bilinear resize of ``[N, H, W]`` or ``[N, H, W, 3]`` uint8 to ``size`` = (H, W)."""
    if size is None or images.shape[1:3] == tuple(size):
        return images
    from PIL import Image

    h, w = size
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images])


def _to_nchw(images: NDArray[np.uint8], channels: int) -> NDArray[np.uint8]:
    if channels not in (1, 3):
        raise InvalidParameterError(f"The 'channels' parameter must be 1 or 3. Got {channels} instead.")
    if images.ndim == 3:  # gray [N, H, W]
        images = images[:, None]
        return np.repeat(images, 3, axis=1) if channels == 3 else images
    images = images.transpose(0, 3, 1, 2)
    if channels == 1:  # ITU-R 601 luma, as PIL's "L" conversion
        luma = images.astype(np.float32).transpose(0, 2, 3, 1) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, None]
    return np.ascontiguousarray(images)


def load_lfw_faces(*, size: tuple[int, int] | None = None, channels: int = 1) -> ArrayImageSet:
    """The 100 LFW face crops shipped with scikit-image.

    Parameters
    ----------
    size : (int, int), optional
        Output (H, W); default keeps the native 25x25. FaceNet wants (160, 160).
    channels : {1, 3}
        1 keeps the gray images; 3 repeats gray into RGB for colour models.

    Returns
    -------
    ArrayImageSet
        ``[100, channels, H, W]`` uint8; labels: ``identity`` (= index; the file has no
        identity labels, so each image counts as a different person) and ``source``.

    Examples
    --------
    >>> faces = load_lfw_faces()
    >>> len(faces), tuple(faces[0].shape)
    (100, (1, 25, 25))
    """
    import pandas as pd

    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise DatasetNotFoundError("the LFW sample needs scikit-image: pip install scikit-image") from exc
    gray = data.lfw_subset()[:N_LFW_FACES]  # float64 in [0, 1]
    images = _to_nchw(_resize(np.rint(gray * 255).astype(np.uint8), size), channels)
    labels = pd.DataFrame({"identity": np.arange(N_LFW_FACES), "source": "skimage.lfw_subset"})
    return ArrayImageSet(images, labels, name=f"lfw_subset/{size}/{channels}")


def _hopper_path() -> Path:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} is missing; reinstall matplotlib (it ships the sample data)")
    return path


def _crop(image: NDArray[np.uint8], box: tuple[int, int, int]) -> NDArray[np.uint8]:
    top, left, side = box
    return image[top:top + side, left:left + side]


def load_sample_faces(*, size: tuple[int, int] = (160, 160), channels: int = 3) -> ArrayImageSet:
    """Two colour face portraits: skimage's astronaut and matplotlib's Grace Hopper.

    Parameters
    ----------
    size : (int, int)
        Output (H, W) of the square face crops (native crops are 170 and 270 px).
    channels : {1, 3}
        3 keeps RGB; 1 converts to luma.

    Returns
    -------
    ArrayImageSet
        ``[2, channels, H, W]`` uint8; labels: ``name`` (``astronaut``, ``grace_hopper``)
        and ``identity`` (0, 1).

    Examples
    --------
    >>> faces = load_sample_faces()
    >>> list(faces.labels["name"]), tuple(faces[0].shape)
    (['astronaut', 'grace_hopper'], (3, 160, 160))
    """
    import pandas as pd
    from PIL import Image
    from skimage import data

    hopper = np.asarray(Image.open(_hopper_path()).convert("RGB"))
    crops = [_crop(data.astronaut(), _ASTRONAUT_BOX), _crop(hopper, _HOPPER_BOX)]
    images = _to_nchw(np.concatenate([_resize(c[None], size) for c in crops]), channels)
    labels = pd.DataFrame({"name": ["astronaut", "grace_hopper"], "identity": [0, 1]})
    return ArrayImageSet(images, labels, name=f"sample_faces/{size}/{channels}")
