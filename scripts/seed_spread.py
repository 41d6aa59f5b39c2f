"""How much a figure moves with --invariance-seed, and whether its CI covers that.

Runs the face_perturbation protocol (100 LFW faces, the suite's rotation levels) with
FaceNet (models/facenet.onnx, see scripts/build_facenet.py) for several seeds, once with a
single identity split (the old protocol) and once with the suite's repeated splits, and
prints each seed's rotation MAE with its 95% CI and whether it covers the mean over seeds.

    python scripts/seed_spread.py [--seeds 6] [--splits 20] [--model models/facenet.onnx]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--model", default="models/facenet.onnx")
    ap.add_argument("--cache-dir", default=".cache/seed_spread")
    args = ap.parse_args()

    from pytest_invariance._audit import Audit, ModelRef
    from pytest_invariance.data.faces import load_lfw_faces
    from pytest_invariance.embeddings import Preprocess
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.faces import perturbation_specs, perturbation_study

    faces = load_lfw_faces()
    specs = perturbation_specs({"rotation": [-45, -30, -15, 0, 15, 30, 45]})
    pre = Preprocess(size=(160, 160), channels=3, prewhiten=True)
    for n_splits in (1, args.splits):
        rows = []
        for seed in range(args.seeds):
            audit = Audit(Settings(seed=seed, cache_dir=str(Path(args.cache_dir).resolve()), device="cpu"))
            emb = audit.load(str(Path(args.model).resolve()))
            ref = ModelRef("facenet", emb, "embedding", pre, user=False)
            rows.append(perturbation_study(audit, ref, faces, specs, n_splits=n_splits)["rotation"]["mae"])
        centre = float(np.mean([e.value for e in rows]))
        print(f"n_splits={n_splits}: rotation MAE over seeds 0-{args.seeds - 1}: "
              f"{min(e.value for e in rows):.2f} .. {max(e.value for e in rows):.2f} deg, mean {centre:.2f}")
        for seed, e in enumerate(rows):
            print(f"  seed {seed}: {e.value:6.2f} [{e.ci_low:6.2f}, {e.ci_high:6.2f}] "
                  f"covers mean: {e.ci_low <= centre <= e.ci_high}")


if __name__ == "__main__":
    main()
