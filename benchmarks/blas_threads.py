"""Benchmark: small LAPACK calls with numpy's BLAS threaded vs on one thread, side by side.

The studies run eigendecompositions and SVDs of a few hundred rows in loops (per class,
per split); ``probes._blas.one_blas_thread`` runs them on one thread. This prints, for
each call, CPU and wall time per call both ways and their ratio, so that a loaded machine
shows in the figure (threads waiting for a core cost CPU time).

Usage: python benchmarks/blas_threads.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def timed(fn, repeats: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()
    c, w = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.process_time() - c) / repeats, (time.perf_counter() - w) / repeats


def main() -> None:
    from pytest_invariance.probes.functional import one_blas_thread

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    A = rng.normal(size=(2000, 500))
    S = A.T @ A
    X = rng.normal(size=(392, 512))
    calls = {"eigh 500x500 (per-class ridge)": lambda: np.linalg.eigh(S),
             "svd 392x512 (face ridge split)": lambda: np.linalg.svd(X, full_matrices=False)}
    worst = 0.0
    for name, fn in calls.items():
        c_mt, w_mt = timed(fn, args.repeats)
        with one_blas_thread():
            c_1, w_1 = timed(fn, args.repeats)
        worst = max(worst, c_mt / c_1)
        print(f"{name}: threaded {c_mt * 1e3:.0f} ms CPU {w_mt * 1e3:.0f} ms wall | one thread "
              f"{c_1 * 1e3:.0f} ms CPU {w_1 * 1e3:.0f} ms wall | CPU ratio {c_mt / c_1:.1f} wall ratio {w_mt / w_1:.1f}")
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"RESULT threaded/one_thread_cpu_max={worst:.1f}")


if __name__ == "__main__":
    main()
