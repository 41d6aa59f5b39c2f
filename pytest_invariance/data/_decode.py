"""Decoding image files as a photo viewer shows them, and checking them up front.

Every file-backed loader decodes through :func:`open_rgb`:

- the EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``), so a phone photo
  stored sideways with "rotate 90" metadata is seen upright;
- any other mode becomes 8-bit RGB: grayscale (``L``, ``I;16``, ``I``, ``F``, ``1``) is
  repeated into three channels (16-bit scaled by its bit depth, :func:`white_level`), CMYK is converted by PIL's naive formula (no ICC
  profile), palette images are expanded, and images with transparency (``RGBA``, ``LA``,
  ``PA``, palette with a transparent colour) are composited on WHITE, the background a
  viewer draws, so a transparent margin does not turn into black pixels.

:func:`scan_images` reads only each header (mode, size, EXIF) to count the conversions
that decoding will make and to find unreadable files; with ``decode=True`` it also
decodes every pixel, which is the only way to find a truncated JPEG before extraction.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from PIL import Image

#: EXIF tag 0x0112; values 2-8 flip or rotate the stored pixels.
_ORIENTATION = 0x0112
_GRAY = {"L", "I;16", "I;16B", "I;16L", "I", "F", "1"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def conversion_kind(im: "Image.Image") -> str | None:
    """Which conversion :func:`to_rgb` applies to ``im``: None for plain RGB, else one of
    ``grayscale``, ``cmyk``, ``palette``, ``alpha`` or ``other`` (e.g. YCbCr, LAB)."""
    mode = im.mode
    if mode == "RGB":
        return None
    if mode in _ALPHA or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return "alpha"
    if mode in _GRAY:
        return "grayscale"
    if mode == "CMYK":
        return "cmyk"
    if mode == "P":
        return "palette"
    return "other"


def to_rgb(im: "Image.Image") -> "Image.Image":
    """8-bit RGB; transparency is composited on white (see the module docstring)."""
    from PIL import Image

    kind = conversion_kind(im)
    if kind is None:
        return im
    if kind == "alpha":
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode.startswith("I") or im.mode == "F":
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.rint(a / white_level(im, a) * 255), 0, 255).astype(np.uint8))
    return im.convert("RGB")


def white_level(im: "Image.Image", pixels: "object") -> float:
    """The value of white in a high-bit-depth gray image, from its format, never from its
    pixels: a dark 16-bit photo (max 201) is dark, not 8-bit (a data-dependent rule made
    it 256x brighter than its full-range twin).

    ``I;16*`` (16-bit PNG, TIFF): 65535; ``I`` from a PNG (16-bit stored in 32): 65535;
    ``F`` with values in [0, 1]: 1. Raises ValueError for 32-bit integer images of other
    formats and float images outside [0, 1], whose white level the file does not say.
    """
    import numpy as np

    a = np.asarray(pixels)
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        return 65535.0
    if im.mode == "F" and a.size and 0.0 <= float(a.min()) and float(a.max()) <= 1.0:
        return 1.0
    kind = "32-bit integer" if im.mode == "I" else "floating-point"
    raise ValueError(f"{kind} gray image (mode {im.mode}, values {float(a.min()):g} to {float(a.max()):g}): the file "
                     "does not say which value is white; save it as 8- or 16-bit (or float in [0, 1])")


def open_rgb(path: Path) -> "Image.Image":
    """Decode every pixel of ``path``, upright and in RGB.

    Raises
    ------
    OSError, ValueError
        From PIL when the file is unreadable or its pixel data is truncated or corrupt.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.load()  # decode now: a truncated file raises here, inside the caller's try
        upright = ImageOps.exif_transpose(im)
        return to_rgb(upright if upright is not None else im)


def _orientation(im: "Image.Image") -> int:
    try:
        value = int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block: exif_transpose ignores it too
        return 1
    return value if 1 <= value <= 8 else 1


def _inspect(path: Path, decode: bool) -> "tuple[str | None, int, tuple[int, int], int] | str":
    """(conversion kind, EXIF orientation, stored size, frames), or the reason the file is bad."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            return conversion_kind(im), _orientation(im), im.size, int(getattr(im, "n_frames", 1) or 1)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises SyntaxError for some bad headers
        what = "undecodable image data" if decode else "unreadable image"
        return f"{what} ({type(exc).__name__}: {str(exc)[:80]})"


@dataclass
class ImageScan:
    """What :func:`scan_images` found: bad files, conversions to make, upright sizes."""

    problems: dict[str, str] = field(default_factory=dict)
    conversions: Counter[str] = field(default_factory=Counter)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)


def scan_images(files: Mapping[str, Path], *, decode: bool = False) -> ImageScan:
    """Check images up front.

    Parameters
    ----------
    files : mapping name -> path
    decode : bool
        Decode every pixel (finds truncated data; costs a full decode, ~2 ms per CelebA
        JPEG) instead of reading headers only (~0.25 ms).

    Returns
    -------
    ImageScan
        ``problems``: name -> reason for files PIL cannot read (header) or, with
        ``decode``, cannot decode. ``conversions``: images per conversion :func:`open_rgb`
        makes (``exif_orientation``, ``grayscale``, ``cmyk``, ``palette``, ``alpha``,
        ``other``; ``first_frame``: a multi-frame file of which only frame 0 is read).
        ``sizes``: name -> (width, height) after the EXIF orientation.
    """
    out = ImageScan()
    items = list(files.items())
    if decode and len(items) > 64:  # PIL decodes without the GIL: threads scale over cores
        import os
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(lambda kv: _inspect(kv[1], decode), items))
    else:
        results = [_inspect(p, decode) for _, p in items]
    for (name, _), result in zip(items, results):
        if isinstance(result, str):
            out.problems[name] = result
            continue
        kind, turn, (w, h), frames = result
        if kind:
            out.conversions[kind] += 1
        if frames > 1:  # an animated GIF/WebP or multi-page TIFF: only its first frame is embedded
            out.conversions["first_frame"] += 1
        if turn != 1:
            out.conversions["exif_orientation"] += 1
        out.sizes[name] = (h, w) if turn in (5, 6, 7, 8) else (w, h)  # 5-8 swap the axes
    return out
