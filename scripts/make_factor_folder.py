"""Build a labelled image folder for the ``factors`` suite from real faces that ship offline.

The 100 LFW face crops of scikit-image (``skimage/data/lfw_subset.npy``, 25x25 grey) are
upsampled to 64x64 and each face is written ``--per-face`` times, every copy with its
own random levels of three PLANTED factors and three NOISE columns:

- ``rotation``   continuous, in-plane degrees, uniform in [-30, 30] (zero-filled corners)
- ``blur``       categorical: none / low / high = Gaussian sigma 0, 1, 2 px at 64 px
- ``occluded``   binary: yes = a grey square over 15% of the image (nose and mouth)
- ``noise_flag`` binary, ``noise_group`` categorical (a/b/c), ``noise_value`` continuous:
  drawn at random, independent of the image (the audit must find them at chance)
- ``identity``   the LFW face index (the file has no names; each crop is one person)

Usage::

    python scripts/make_factor_folder.py OUT_DIR [--per-face 8] [--seed 0]
    pytest audits/factors --model m.onnx --invariance-data-dir OUT_DIR

Writes OUT_DIR/img/*.png and OUT_DIR/labels.csv (no split column: the suite makes a
seeded identity-disjoint split).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

BLUR = {"none": 0.0, "low": 1.0, "high": 2.0}
OCCLUSION = 0.15
SIZE = 64


def make_lfw_folder(out: str | Path, *, n_faces: int = 100, per_face: int = 8, seed: int = 0,
                    rotation: tuple[float, float] = (-30.0, 30.0)) -> Path:
    """Write the folder; returns the path of its labels.csv."""
    from PIL import Image
    from torch.nn import functional as F

    from pytest_invariance.data.faces import load_lfw_faces
    from pytest_invariance.data.perturbations import PERTURBATIONS

    out = Path(out)
    (out / "img").mkdir(parents=True, exist_ok=True)
    faces = load_lfw_faces()
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_faces):
        base = F.interpolate(faces[i][None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        for k in range(per_face):
            rot = float(np.round(rng.uniform(*rotation), 1))
            blur = str(rng.choice(list(BLUR)))
            occluded = bool(rng.random() < 0.5)
            x = PERTURBATIONS["rotation"][0](base, rot)
            x = PERTURBATIONS["blur"][0](x, BLUR[blur])
            if occluded:
                x = PERTURBATIONS["occlusion"][0](x, OCCLUSION)
            pixels = (x[0, 0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            name = f"img/{i:03d}_{k:02d}.png"
            Image.fromarray(pixels, mode="L").save(out / name)
            rows.append({"image": name, "identity": f"lfw{i:03d}", "rotation": rot, "blur": blur,
                         "occluded": "yes" if occluded else "no",
                         "noise_flag": "yes" if rng.random() < 0.5 else "no",
                         "noise_group": str(rng.choice(["a", "b", "c"])),
                         "noise_value": float(np.round(rng.uniform(0, 100), 2))})
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out / "labels.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder to write (created)")
    ap.add_argument("--faces", type=int, default=100, help="LFW faces to use (at most 100)")
    ap.add_argument("--per-face", type=int, default=8, help="images per face")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(make_lfw_folder(a.out, n_faces=min(a.faces, 100), per_face=a.per_face, seed=a.seed))


if __name__ == "__main__":
    main()
