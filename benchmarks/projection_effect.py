"""What the random projection above ``--invariance-max-dim`` does to the figures (issue 13, item 3).

LeNet (the bundled ``lenet.onnx``) on rotated MNIST, at layers read with ``--invariance-pool
flatten`` so that they are wider than the cap: ``pool1`` (20x12x12 = 2,880) and ``conv2``
(50x8x8 = 3,200), plus ``pool2`` (800, below the cap: must not change). For each, the
rotation-angle MAE of a ridge probe (one over all digits) and the MAV digit accuracy,
computed on the full layer and on its projection to ``--max-dim`` (seeded), side by side.

    python benchmarks/projection_effect.py --max-dim 2048 --seeds 0 1 2

One line per (layer, figure): full, projected per seed, and the largest change in CI half-widths.
"""
from __future__ import annotations

import argparse

import numpy as np

from pytest_invariance.data import PerturbationSpec, PerturbedImageSet
from pytest_invariance.data.mnist import load_mnist
from pytest_invariance.embeddings import LayerProjection, extract_layers
from pytest_invariance.models import load_model
from pytest_invariance.probes import LinearRegressionProbe, MAVProbe

LAYERS = ["/conv2/Conv_output_0", "/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0"]
ANGLES = [-45, -30, -15, 0, 15, 30, 45]


def subset(base, per_class: int, seed: int):
    y = base.labels["label"].to_numpy()
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.nonzero(y == c)[0])[:per_class] for c in range(10)]))
    return base.subset(keep, name=f"{base.name}-{per_class}pc-{seed}")


def figures(Xtr, tr, Xte, te) -> dict[str, tuple[float, float]]:
    # One ridge regressor over all digits (the suite fits one per digit: 10x the solves).
    reg = LinearRegressionProbe(alpha=1.0, n_permutations=0, n_bootstrap=200)
    reg.fit(Xtr, tr["rotation"].to_numpy(float))
    mae = reg.evaluate(Xte, te["rotation"].to_numpy(float))["mae"]
    mav = MAVProbe(n_bootstrap=200).fit(Xtr, tr["label"].to_numpy()).evaluate(Xte, te["label"].to_numpy())["accuracy"]
    return {"angle_mae (deg)": (mae.value, (mae.ci_high - mae.ci_low) / 2),
            "mav_accuracy": (mav.value, (mav.ci_high - mav.ci_low) / 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-dim", type=int, default=2048)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    model = load_model("audits/mnist_rotation/models/lenet.onnx", device="cpu")
    spec = PerturbationSpec("rotation", ANGLES)
    train = PerturbedImageSet(subset(load_mnist("train"), args.train_per_class, 0), spec)
    test = PerturbedImageSet(subset(load_mnist("test"), args.test_per_class, 1), spec)
    full_tr = extract_layers(model, train, args.layers, pool="flatten")
    full_te = extract_layers(model, test, args.layers, pool="flatten")
    print(f"lenet.onnx, rotated MNIST: train {len(train)}, test {len(test)} images; cap {args.max_dim}; "
          f"seeds {args.seeds}")
    for layer in args.layers:
        d = full_tr[layer].shape[1]
        base = figures(full_tr[layer], train.labels, full_te[layer], test.labels)
        runs = []
        for seed in args.seeds:
            p = LayerProjection(d, max_dim=args.max_dim, seed=seed)
            runs.append(figures(p(full_tr[layer]), train.labels, p(full_te[layer]), test.labels))
        for name, (value, half) in base.items():
            got = [r[name][0] for r in runs]
            worst = max(abs(g - value) for g in got) / half if half else float("nan")
            print(f"{layer:<26} D={d:<5} {name:<16} full {value:.4f} +- {half:.4f}   projected "
                  + " ".join(f"{g:.4f}" for g in got) + f"   max change {worst:.2f} CI half-widths")


if __name__ == "__main__":
    main()
