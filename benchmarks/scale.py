"""Figures of docs/scale.md: extraction throughput, Ray's local overhead, streamed-probe
rows/s, and how much the SVM figures move with a --invariance-max-rows subsample.

    python benchmarks/scale.py extract --model models/facenet.onnx --preprocess size=160x160 \
        --preprocess prewhiten=true --n 64
    python benchmarks/scale.py extract --model audits/mnist_rotation/models/lenet.onnx --layer ip1 \
        --preprocess size=28x28 --preprocess channels=1 --n 2000 --ray
    python benchmarks/scale.py stream --rows 200000 --dim 512
    python benchmarks/scale.py subsample

Images: the 100 LFW faces shipped with scikit-image, written as PNG files (repeated up
to --n) so the path measured is the one ``pytest-invariance extract --images`` runs:
decode, resize, preprocess, model, Parquet. This machine is shared: each figure is the
best of --rounds, and the ratios measured side by side mean more than the absolute rates.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def _faces(folder: Path, n: int) -> Path:
    from PIL import Image

    from pytest_invariance.data.faces import load_lfw_faces

    faces = load_lfw_faces(channels=3)
    for i in range(n):
        arr = (faces[i % len(faces)].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    return folder


def bench_extract(args: argparse.Namespace) -> None:
    from pytest_invariance._extract_plan import folder_job
    from pytest_invariance.embeddings._export import run_local, run_ray
    from pytest_invariance.settings import Settings, parse_preprocess

    with tempfile.TemporaryDirectory() as tmp:
        images = _faces(Path(tmp), args.n)
        settings = Settings(model=str(Path(args.model).resolve()), layer=(args.layer,) if args.layer else (), no_cache=True,
                            batch_size=args.batch_size, preprocess=tuple(parse_preprocess(p) for p in args.preprocess))
        job = folder_job(settings, images, args.shard_rows)
        local = []
        for r in range(args.rounds):
            t = time.perf_counter()
            run_local(job, Path(tmp) / "local", progress=False, overwrite=True)
            local.append(time.perf_counter() - t)
        best = min(local)
        print(f"in-process: {job.total} images x {len(job.layers)} layer(s) in {best:.2f} s = "
              f"{job.total / best:.1f} images/s (best of {args.rounds})")
        if args.ray:
            import ray

            t = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            start = time.perf_counter() - t
            t = time.perf_counter()
            run_ray(job, Path(tmp) / "ray", actors=1, overwrite=True)
            took = time.perf_counter() - t
            ray.shutdown()
            print(f"Ray local (1 actor, num_cpus=2): ray.init {start:.1f} s; extraction {took:.2f} s = "
                  f"{job.total / took:.1f} images/s; overhead vs in-process {took - best:+.1f} s")


def bench_stream(args: argparse.Namespace) -> None:
    from pytest_invariance.embeddings._parquet import ParquetEmbeddings, ShardMeta, write_shard
    from pytest_invariance.probes import LinearRegressionProbe, MAVProbe

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        w = rng.normal(size=args.dim).astype(np.float32)
        labels = {}
        for k, start in enumerate(range(0, args.rows, args.shard_rows)):
            n = min(args.shard_rows, args.rows - start)
            X = rng.normal(size=(n, args.dim)).astype(np.float32)
            ids = [f"r{start + i}" for i in range(n)]
            labels.update(zip(ids, zip(X @ w + rng.normal(size=n), rng.integers(0, 10, n))))
            write_shard(Path(tmp) / f"p{k:04d}.parquet", ids, {"emb": X}, ShardMeta("00" * 32, ("emb",), "auto", None))
        import pyarrow.parquet as pq

        t = time.perf_counter()
        src = ParquetEmbeddings(tmp)  # ids, metadata, and every vector checked (null, ragged, NaN/Inf)
        opened = time.perf_counter() - t
        t = time.perf_counter()
        for f in src.files:
            pq.read_table(f, columns=["id"])
        ids_only = time.perf_counter() - t
        print(f"open with the vector check: {args.rows} rows x {args.dim} in {opened:.2f} s = {args.rows / opened:,.0f} "
              f"rows/s; reading the ids alone {ids_only:.2f} s (check/ids {opened / max(ids_only, 1e-9):.1f}x)")

        def batches(col: int):
            for ids, X in src.iter_batches("emb", max_rows=args.max_rows):
                yield X, np.array([labels[i][col] for i in ids])

        for name, fit in (("regression", lambda: LinearRegressionProbe(alpha=1.0, n_permutations=0).fit_stream(batches(0))),
                          ("class means", lambda: MAVProbe().fit_stream(batches(1), classes=np.arange(10)))):
            t = time.perf_counter()
            fit()
            took = time.perf_counter() - t
            print(f"streamed {name}: {args.rows} rows x {args.dim} in {took:.2f} s = {args.rows / took:,.0f} rows/s "
                  f"(read + statistics, at most {args.max_rows} rows in memory)")
        ids = list(labels)
        X = src.lookup(ids, "emb")
        y = np.array([labels[i][0] for i in ids])
        t = time.perf_counter()
        LinearRegressionProbe(alpha=1.0, n_permutations=0).fit(X, y)
        took = time.perf_counter() - t
        print(f"in-memory regression fit: {args.rows / took:,.0f} rows/s ({X.nbytes / 2**20:.0f} MiB held)")


def bench_subsample(args: argparse.Namespace) -> None:
    """Digits (1,797 real scans): 'digit >= 5' probed from the pixels, full training set
    against seeded subsamples; the spread over seeds is the error the CI does not hold."""
    from sklearn.datasets import load_digits

    from pytest_invariance.probes import AttributeSVMProbe

    d = load_digits()
    X, Y = (d.data / 16).astype(np.float32), (d.target >= 5)[:, None].astype(int)
    order = np.random.default_rng(0).permutation(len(X))
    tr, va, te = order[:1000], order[1000:1300], order[1300:]
    kw = dict(n_permutations=0, n_bootstrap=1000)
    full = AttributeSVMProbe(**kw).fit(X[tr], Y[tr], X[va], Y[va]).evaluate(X[te], Y[te])["attr_0"]["balanced_error"]
    print(f"full (1000 rows): balanced error {full.value:.4f}, CI half-width {(full.ci_high - full.ci_low) / 2:.4f}")
    for rows in (500, 250, 100):
        vals, widths = [], []
        for seed in range(args.seeds):
            e = AttributeSVMProbe(max_train_rows=rows, random_state=seed, **kw).fit(
                X[tr], Y[tr], X[va], Y[va]).evaluate(X[te], Y[te])["attr_0"]["balanced_error"]
            vals.append(e.value)
            widths.append((e.ci_high - e.ci_low) / 2)
        print(f"max_rows={rows}: balanced error {np.mean(vals):.4f} (shift {np.mean(vals) - full.value:+.4f}), "
              f"sd over {args.seeds} seeds {np.std(vals, ddof=1):.4f}, mean CI half-width {np.mean(widths):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    e = sub.add_parser("extract")
    e.add_argument("--model", required=True)
    e.add_argument("--layer")
    e.add_argument("--preprocess", action="append", default=[])
    e.add_argument("--n", type=int, default=200)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--shard-rows", type=int, default=4096)
    e.add_argument("--rounds", type=int, default=2)
    e.add_argument("--ray", action="store_true")
    s = sub.add_parser("stream")
    s.add_argument("--rows", type=int, default=200_000)
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--shard-rows", type=int, default=20_000)
    s.add_argument("--max-rows", type=int, default=8192)
    b = sub.add_parser("subsample")
    b.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()
    {"extract": bench_extract, "stream": bench_stream, "subsample": bench_subsample}[args.what](args)


if __name__ == "__main__":
    main()
