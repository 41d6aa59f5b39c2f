"""Cost of verifying an embedding cache entry on load (sha256 + shape/dtype + finiteness),
side by side with a plain ``np.load`` of the same file.

    python benchmarks/cache_verify.py [ROWS] [DIM]

Default 100,000 x 500 float32 (200 MB), a fifth of one rotated-MNIST training entry.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_invariance.embeddings import EmbeddingCache


def best_of(fn, n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    rows, dim = (int(a) for a in (sys.argv[1:3] if len(sys.argv) > 2 else (100_000, 500)))
    arr = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    with tempfile.TemporaryDirectory() as d:
        cache = EmbeddingCache(Path(d))
        cache.dir.mkdir(exist_ok=True)
        cache.store("k", arr, {})
        plain = best_of(lambda: np.load(cache.dir / "k.npy"))
        verified = best_of(lambda: cache.load("k", rows=rows))
    mb = arr.nbytes / 2**20
    print(f"entry {rows} x {dim} float32 ({mb:.0f} MiB)")
    print(f"np.load            {plain:.3f} s  ({mb / plain:.0f} MiB/s)")
    print(f"verified load      {verified:.3f} s  ({mb / verified:.0f} MiB/s)")
    print(f"ratio verified/plain {verified / plain:.2f}")


if __name__ == "__main__":
    main()
