"""Embedding throughput of the plugin's extraction path next to a bare onnxruntime loop.

Both run in one process, interleaved over several rounds, on the same model, layer,
batch size and images (this machine is shared and noisy, so only the ratio measured
side by side means anything). The plugin path is the one the audits use — ImageSet ->
DataLoader -> Preprocess -> Embedder.embed -> NaN check — with the cache off.

    python benchmarks/extract_throughput.py --model audits/mnist_rotation/models/lenet.onnx --layer ip1

Last line: ``RESULT ratio=<plugin_over_bare>``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pytest_invariance.data import ArrayImageSet
from pytest_invariance.embeddings import Preprocess, extract
from pytest_invariance.models import load_model


def bare_session(model_path: str, layer: str, device: str):
    import onnx
    import onnxruntime as ort

    model = onnx.load(model_path)
    if layer not in {o.name for o in model.graph.output}:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(layer))
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device != "cpu" else ["CPUExecutionProvider"]
    providers = [p for p in providers if p in ort.get_available_providers()]
    return ort.InferenceSession(model.SerializeToString(), providers=providers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="audits/mnist_rotation/models/lenet.onnx")
    ap.add_argument("--layer", default=None, help="default: the model's first output")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n", type=int, default=4096, help="images per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    model_path = args.model
    if not Path(model_path).is_file():  # no trained model yet: a seeded tiny CNN
        from pytest_invariance.testing import export_onnx, tiny_cnn

        model_path = str(export_onnx(tiny_cnn(), Path(tempfile.mkdtemp()) / "tiny.onnx"))
        print(f"{args.model} not found; using a tiny CNN at {model_path}")
    embedder = load_model(model_path, device=args.device)
    layer = args.layer or embedder.default_layer
    c, h, w = (s or d for s, d in zip(embedder.input_shape, (1, 28, 28)))
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (args.n, c, h, w), dtype=np.uint8)
    images = ArrayImageSet(raw, pd.DataFrame({"i": np.arange(args.n)}), name="bench")
    # The bare loop gets its float batches for free (prepared outside the timing).
    batches = [raw[i: i + args.batch_size].astype(np.float32) / 255 for i in range(0, args.n, args.batch_size)]
    sess = bare_session(model_path, layer, args.device)
    input_name = sess.get_inputs()[0].name

    def run_plugin() -> float:
        t = time.perf_counter()
        extract(embedder, images, layer=layer, preprocess=Preprocess(), batch_size=args.batch_size, cache=None)
        return args.n / (time.perf_counter() - t)

    def run_bare() -> float:
        t = time.perf_counter()
        for b in batches:
            sess.run([layer], {input_name: b})
        return args.n / (time.perf_counter() - t)

    run_plugin(), run_bare()  # warm-up: session creation, allocator, first DataLoader
    plugin, bare = [], []
    for r in range(args.rounds):
        for name, fn, out in (("plugin", run_plugin, plugin), ("bare", run_bare, bare)):
            out.append(fn())
            print(f"round {r + 1}: {name:6s} {out[-1]:10,.0f} img/s")
    p, b = statistics.median(plugin), statistics.median(bare)
    print(f"model={model_path} layer={layer} batch={args.batch_size} n={args.n} device={embedder.device}")
    print(f"plugin {p:,.0f} img/s   bare onnxruntime {b:,.0f} img/s   (medians of {args.rounds} rounds)")
    print(f"RESULT ratio={p / b:.3f}")


if __name__ == "__main__":
    main()
