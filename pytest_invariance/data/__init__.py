"""Datasets and perturbations -> ImageSets with exact factor labels."""
from __future__ import annotations

from ._source import ArrayImageSet, ImageSet, PerturbedImageSet, fingerprint_array
from .perturbations import PERTURBATIONS, PerturbationSpec

__all__ = ["ArrayImageSet", "ImageSet", "PERTURBATIONS", "PerturbationSpec", "PerturbedImageSet", "fingerprint_array"]
