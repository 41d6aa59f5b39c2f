"""Benchmark: the cold run's extraction, as it was and as it is, side by side in one process.

Rotated MNIST (LeNet: ``--n`` test images x 7 angles, features ``ip1`` and the logits) and,
with ``--facenet``, the face-perturbation suite's FaceNet on the LFW faces at the rotation
levels. Each round runs both variants, interleaved (the machine is shared: only ratios
measured side by side mean anything):

* ``before``: onnxruntime's idle threads spin (its default), torch decodes and rotates
  on all its threads, and the logits are a second pass over the test images;
* ``after``: what the plugin does now: idle threads sleep, the batch is decoded and
  perturbed with torch on one thread, features and logits come from one pass.

Checks that both give identical arrays, prints wall and CPU time (``time.process_time``:
all threads) per variant and the ratios, the load average, and a RESULT line.

    python benchmarks/cold_extract.py [--n 2000] [--rounds 2] [--facenet]
"""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import numpy as np

from mnist_study import timed  # benchmarks/ is on sys.path when a script here runs

ROOT = Path(__file__).resolve().parents[1]
ANGLES = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)


def variant(before: bool):  # type: ignore[no-untyped-def]
    """Context: the plugin as it was (``before``) or as it is."""
    from pytest_invariance.embeddings import _extract
    from pytest_invariance.models import _onnx

    @contextlib.contextmanager
    def ctx():  # type: ignore[no-untyped-def]
        saved = _onnx._ALLOW_SPINNING, _extract.one_torch_thread
        if before:
            _onnx._ALLOW_SPINNING, _extract.one_torch_thread = "1", contextlib.nullcontext
        try:
            yield
        finally:
            _onnx._ALLOW_SPINNING, _extract.one_torch_thread = saved
    return ctx()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="MNIST test images (x 7 angles)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--facenet", action="store_true", help="also FaceNet on the LFW faces (models/facenet.onnx)")
    args = ap.parse_args()

    from pytest_invariance.data import PerturbationSpec, PerturbedImageSet
    from pytest_invariance.data.mnist import load_mnist
    from pytest_invariance.embeddings import Preprocess, extract_layers
    from pytest_invariance.models import load_model

    base = load_mnist("test", cache_dir=ROOT / ".cache" / "mnist").subset(np.arange(args.n), f"test{args.n}")
    mnist = PerturbedImageSet(base, PerturbationSpec("rotation", ANGLES))
    jobs = {"lenet": (ROOT / "audits/mnist_rotation/models/lenet.onnx", mnist, Preprocess(), ["ip1", "logits"])}
    if args.facenet:
        from pytest_invariance.data.faces import load_lfw_faces

        faces = PerturbedImageSet(load_lfw_faces(), PerturbationSpec("rotation", ANGLES))
        pre = Preprocess(size=(160, 160), channels=3, prewhiten=True)
        jobs["facenet"] = (ROOT / "models/facenet.onnx", faces, pre, ["embedding"])

    # Warm-up (imports, MNIST and torchvision kernels) outside the timings.
    extract_layers(load_model(str(jobs["lenet"][0]), device="cpu"), PerturbedImageSet(
        base.subset(np.arange(min(64, args.n)), "warm"), PerturbationSpec("rotation", ANGLES)), ["ip1"])
    totals: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for name, (path, images, pre, layers) in jobs.items():
            got = {}
            for which in ("before", "after"):
                model = load_model(str(path), device="cpu")  # fresh sessions: the option is read at creation

                def run(before: bool = which == "before") -> dict[str, np.ndarray]:
                    with variant(before):
                        if before:  # one pass per layer, as the study asked for the logits after the features
                            return {la: extract_layers(model, images, [la], preprocess=pre)[la] for la in layers}
                        return extract_layers(model, images, layers, preprocess=pre)

                got[which], wall, cpu = timed(run)
                t = totals.setdefault((name, which), [0.0, 0.0])
                t[0] += wall
                t[1] += cpu
                print(f"round {r} {name:8s} {which:6s} {len(images) * (len(layers) if which == 'before' and name == 'lenet' else 1):6d} "
                      f"images through the model: wall {wall:6.1f}s CPU {cpu:6.1f}s (load {os.getloadavg()[0]:.1f})",
                      flush=True)
            same = all(np.array_equal(got["before"][la], got["after"][la]) for la in got["before"])
            print(f"round {r} {name}: arrays identical: {same}", flush=True)
            if not same:
                raise SystemExit(f"{name}: before and after differ")
    parts = []
    for name in jobs:
        (bw, bc), (aw, ac) = totals[(name, "before")], totals[(name, "after")]
        print(f"{name}: before wall {bw:.1f}s CPU {bc:.1f}s | after wall {aw:.1f}s CPU {ac:.1f}s | "
              f"after/before wall {aw / bw:.2f} CPU {ac / bc:.2f}")
        parts.append(f"{name}_wall={aw / bw:.2f} {name}_cpu={ac / bc:.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("RESULT after/before " + " ".join(parts))


if __name__ == "__main__":
    main()
