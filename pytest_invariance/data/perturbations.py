"""Perturbations with exact, known parameters: the exogenous factors an audit measures.

Each perturbation maps a float32 batch ``[N, C, H, W]`` (values in [0, 1]) and one
level (degrees, sigma, factor, ...) to a perturbed batch of the same shape. The
level is the factor label, so a probe's target is exact by construction. A
:class:`PerturbationSpec` is plain data (name + levels) so that it can be declared in
a suite config and hashed into the embedding cache key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..errors import InvalidParameterError

if TYPE_CHECKING:
    import torch


def _rotate(x: "torch.Tensor", degrees: float) -> "torch.Tensor":
    from torchvision.transforms.v2 import functional as F
    from torchvision.transforms import InterpolationMode

    # Counter-clockwise for positive angles, bilinear, zero fill (MNIST background).
    return F.rotate(x, float(degrees), interpolation=InterpolationMode.BILINEAR)


def _blur(x: "torch.Tensor", sigma: float) -> "torch.Tensor":
    from torchvision.transforms.v2 import functional as F

    if sigma <= 0:
        return x
    k = 2 * int(round(3 * sigma)) + 1  # covers +-3 sigma
    return F.gaussian_blur(x, kernel_size=[k, k], sigma=[float(sigma)] * 2)


def _brightness(x: "torch.Tensor", factor: float) -> "torch.Tensor":
    return (x * float(factor)).clamp_(0.0, 1.0)


def _scale(x: "torch.Tensor", factor: float) -> "torch.Tensor":
    from torchvision.transforms.v2 import functional as F

    # Zoom about the centre, keeping the image size: >1 crops in, <1 pads out with zeros.
    return F.affine(x, angle=0.0, translate=[0, 0], scale=float(factor), shear=[0.0, 0.0])


def _occlusion(x: "torch.Tensor", fraction: float) -> "torch.Tensor":
    # A grey square covering `fraction` of the image area, centred a little below the
    # middle (over nose and mouth on an aligned face).
    if fraction <= 0:
        return x
    h, w = x.shape[-2:]
    side_h, side_w = int(round(h * fraction**0.5)), int(round(w * fraction**0.5))
    top = min(h - side_h, max(0, (h - side_h) // 2 + h // 8))
    left = (w - side_w) // 2
    out = x.clone()
    out[..., top : top + side_h, left : left + side_w] = 0.5
    return out


PERTURBATIONS: dict[str, tuple[Callable[["torch.Tensor", float], "torch.Tensor"], str]] = {
    "rotation": (_rotate, "degrees"),
    "blur": (_blur, "sigma (px)"),
    "brightness": (_brightness, "factor"),
    "scale": (_scale, "factor"),
    "occlusion": (_occlusion, "area fraction"),
}


@dataclass(frozen=True)
class PerturbationSpec:
    """A named perturbation and the levels it is applied at.

    Examples
    --------
    >>> spec = PerturbationSpec("rotation", (-45.0, 0.0, 45.0))
    >>> spec.unit
    'degrees'
    """

    name: str
    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.name not in PERTURBATIONS:
            raise InvalidParameterError(
                f"unknown perturbation {self.name!r}; choose one of {sorted(PERTURBATIONS)}"
            )
        if not self.levels:
            raise InvalidParameterError(f"perturbation {self.name!r} needs at least one level")
        object.__setattr__(self, "levels", tuple(float(v) for v in self.levels))

    @property
    def unit(self) -> str:
        return PERTURBATIONS[self.name][1]

    def apply(self, images: "torch.Tensor", level: float) -> "torch.Tensor":
        """Return ``images`` perturbed at ``level`` (a new tensor; input untouched)."""
        return PERTURBATIONS[self.name][0](images, level)

    def key(self) -> str:
        return f"{self.name}:{','.join(repr(v) for v in self.levels)}"
