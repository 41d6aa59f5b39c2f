"""Time of a sweep over N layers in one pass, over the time of one layer (issue 13, goal <= 1.3x).

Both run in one process, interleaved over several rounds, on the same images, through
the plugin's extraction path (ImageSet -> DataLoader -> Preprocess -> embed_many ->
pool -> NaN check, cache off); the median of each is compared, since this machine is
shared and noisy. For reference it also prints what N separate one-layer passes cost
(what a loop around single-layer runs would pay).

    python benchmarks/layer_sweep.py lenet     # conv1, conv2, ip1 of the bundled LeNet
    python benchmarks/layer_sweep.py facenet   # the output tensor of each of FaceNet's 23 blocks + embedding

Last line: ``RESULT model=<name> layers=<N> ratio=<sweep_over_one>``.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np
import pandas as pd

from pytest_invariance.data import ArrayImageSet
from pytest_invariance.embeddings import Preprocess, extract_layers
from pytest_invariance.models import load_model

MODELS = {
    "lenet": ("audits/mnist_rotation/models/lenet.onnx", (1, 28, 28), "ip1", Preprocess()),
    "facenet": ("models/facenet.onnx", (3, 160, 160), "embedding", Preprocess(prewhiten=True)),
}


def sweep_layers(name: str, model) -> list[str]:
    if name == "lenet":
        return ["/conv1/Conv_output_0", "/conv2/Conv_output_0", "ip1"]
    last: dict[int, str] = {}  # the last tensor each block computes: its output
    for layer in model.layers():
        m = re.match(r"/blocks/blocks\.(\d+)/", layer)
        if m:
            last[int(m.group(1))] = layer
    return [last[k] for k in sorted(last)] + ["embedding"]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("--n", type=int, default=None, help="images per round (default: lenet 4096, facenet 128)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--separate", action="store_true", help="also time N separate one-layer passes")
    args = ap.parse_args()
    path, (c, h, w), one, pre = MODELS[args.model]
    n = args.n or (4096 if args.model == "lenet" else 128)
    model = load_model(path, device="cpu")
    layers = sweep_layers(args.model, model)
    rng = np.random.default_rng(0)
    images = ArrayImageSet(rng.integers(0, 256, (n, c, h, w), dtype=np.uint8),
                           pd.DataFrame({"label": np.zeros(n, int)}), name=f"bench-{args.model}")

    def run(which: list[str]) -> None:
        extract_layers(model, images, which, preprocess=pre, batch_size=args.batch_size, cache=None)

    run([one])
    run(layers)  # warm both sessions
    t_one, t_all, t_sep = [], [], []
    for _ in range(args.rounds):
        t_one.append(timed(lambda: run([one])))
        t_all.append(timed(lambda: run(layers)))
        if args.separate:
            t_sep.append(sum(timed(lambda la=la: run([la])) for la in layers))
    one_s, all_s = statistics.median(t_one), statistics.median(t_all)
    print(f"model={path} n={n} batch={args.batch_size} rounds={args.rounds} device={model.device}")
    print(f"one layer ({one}): {one_s:.3f} s   {len(layers)} layers in one pass: {all_s:.3f} s")
    if t_sep:
        print(f"{len(layers)} separate one-layer passes: {statistics.median(t_sep):.3f} s "
              f"({statistics.median(t_sep) / one_s:.2f}x one layer)")
    print(f"RESULT model={args.model} layers={len(layers)} ratio={all_s / one_s:.3f}")


if __name__ == "__main__":
    main()
