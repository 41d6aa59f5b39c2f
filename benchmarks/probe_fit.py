"""Benchmark: the §3.1 protocol (40 attributes x 5 C values) with our batched solver vs sklearn.

Synthetic features with planted linear signal: a correlated, non-negative (ReLU-like)
embedding; attribute t is the sign of a noisy random projection, thresholded to a
CelebA-like positive rate (one attribute at 2 %, like Bald). sklearn fits
``LinearSVC(class_weight="balanced")`` once per attribute per C on the same rows in the probe's units
(standardised feature by feature, test rows clipped to the training range: ``Standardiser``), on a subset of the
attributes (``--sklearn-targets``) and optionally of the training rows
(``--sklearn-n-train``); its time is extrapolated linearly to all attributes (fits are
independent, so this part is exact) and, if rows were subsampled, linearly in rows
(liblinear's primal solver costs ~linear time per pass; stated as an assumption).

Usage: python benchmarks/probe_fit.py [--n-train 162770 --n-val 19867 --n-test 19962
       --dim 832 --targets 40 --grid 5 --device cpu --sklearn-targets 2]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def make_data(n: int, dim: int, targets: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((dim, dim), dtype=np.float32) / np.sqrt(dim)
    X = np.empty((n, dim), dtype=np.float32)
    for a in range(0, n, 20000):  # blocks keep the float32 temporaries small
        z = rng.standard_normal((min(20000, n - a), dim), dtype=np.float32)
        X[a:a + len(z)] = np.maximum(z @ mix + 0.3, 0.0)
    U = rng.standard_normal((dim, targets)).astype(np.float32)
    score = X @ U
    score = (score - score.mean(0)) / score.std(0)
    noise = np.linspace(0.3, 2.0, targets)  # from easy (identity-like) to hard (expression-like)
    score += rng.standard_normal(score.shape).astype(np.float32) * noise
    rates = np.r_[0.02, np.linspace(0.05, 0.5, targets - 1)] if targets > 1 else np.array([0.02])
    Y = (score > np.quantile(score, 1 - rates, axis=0).diagonal()).astype(np.int8)
    return X, Y, rates


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    pos, neg = y > 0, y <= 0
    return float(((pred[pos] > 0).mean() + (pred[neg] <= 0).mean()) / 2)


def run_ours(args, Xtr, Ytr, Xv, Yv, Xte, Yte, grid):
    import torch  # noqa: F401  (imported before the clock starts, as sklearn's LinearSVC is)

    from pytest_invariance.probes import AttributeSVMProbe

    probe = AttributeSVMProbe(C_grid=grid, device=args.device, n_permutations=0, n_bootstrap=args.bootstrap)
    t0, c0 = time.perf_counter(), time.process_time()
    probe.fit(Xtr, Ytr, Xv, Yv)
    t_fit, c_fit = time.perf_counter() - t0, time.process_time() - c0
    res = probe.evaluate(Xte, Yte)
    t_all = time.perf_counter() - t0
    bal = np.array([1 - res[name]["balanced_error"].value for name in probe.names_])
    return t_fit, t_all, bal, probe, c_fit


def run_sklearn(args, Xtr, Ytr, Xv, Yv, Xte, Yte, grid, targets):
    from sklearn.svm import LinearSVC

    from pytest_invariance.probes._standardise import Standardiser

    # the probe's units: training rows standardised per feature, others clipped to their range
    st = Standardiser.fit(Xtr)
    Xtr = st.transform(Xtr)
    Xv, Xte = st.transform(Xv), st.transform(Xte)
    bal, t0, c0 = [], time.perf_counter(), time.process_time()
    for t in targets:
        best, best_model = -1.0, None
        for C in grid:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning at large C is part of the reference
                m = LinearSVC(C=C, class_weight="balanced").fit(Xtr, Ytr[:, t])
            b = balanced_accuracy(Yv[:, t], m.decision_function(Xv))
            if b > best:
                best, best_model = b, m
        bal.append(balanced_accuracy(Yte[:, t], best_model.decision_function(Xte)))
    return time.perf_counter() - t0, np.array(bal), time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=162770)
    ap.add_argument("--n-val", type=int, default=19867)
    ap.add_argument("--n-test", type=int, default=19962)
    ap.add_argument("--dim", type=int, default=832)
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--grid", type=int, default=5, help="C values: 10**(-3 .. grid-4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--sklearn-targets", type=int, default=2, help="attributes fitted by sklearn (0 skips it)")
    ap.add_argument("--sklearn-n-train", type=int, default=None, help="training rows for sklearn (default all)")
    args = ap.parse_args()

    grid = [10.0 ** e for e in range(-3, args.grid - 3)]
    n = args.n_train + args.n_val + args.n_test
    t0 = time.perf_counter()
    X, Y, rates = make_data(n, args.dim, args.targets)
    a, b = args.n_train, args.n_train + args.n_val
    Xtr, Ytr, Xv, Yv, Xte, Yte = X[:a], Y[:a], X[a:b], Y[a:b], X[b:], Y[b:]
    print(f"data: train {Xtr.shape} val {Xv.shape} test {Xte.shape}, {args.targets} targets, "
          f"positive rates {rates.min():.2f}..{rates.max():.2f}, C grid {grid} ({time.perf_counter() - t0:.1f}s)")

    t_fit, t_all, bal_ours, probe, c_fit = run_ours(args, Xtr, Ytr, Xv, Yv, Xte, Yte, grid)
    print(f"ours: fit {args.targets}x{len(grid)} SVMs + C selection {t_fit:.1f}s; with test evaluation "
          f"({args.bootstrap} bootstrap) {t_all:.1f}s; fit CPU time {c_fit:.1f}s (all threads); converged {probe.converged_.mean():.0%} of chosen columns; "
          f"mean balanced accuracy {bal_ours.mean():.4f}")

    k = min(args.sklearn_targets, args.targets)
    if k == 0:
        print(f"RESULT speedup=nan bal_acc_ours={bal_ours.mean():.4f} bal_acc_sklearn=nan")
        return
    targets = np.unique(np.linspace(0, args.targets - 1, k).round().astype(int))  # includes the 2 % target
    rows = args.sklearn_n_train or args.n_train
    t_sk, bal_sk, c_sk = run_sklearn(args, Xtr[:rows], Ytr[:rows], Xv, Yv, Xte, Yte, grid, targets)
    scale = args.targets / len(targets) * (args.n_train / rows)
    t_sk_full = t_sk * scale
    print(f"sklearn LinearSVC(class_weight='balanced'): {len(targets)} targets {targets.tolist()} x {len(grid)} C "
          f"on {rows} rows took {t_sk:.1f}s (CPU {c_sk:.1f}s); extrapolated to {args.targets} targets"
          + (f" and {args.n_train} rows (linear in rows, an assumption)" if rows != args.n_train else "")
          + f": x{scale:.1f} = {t_sk_full:.0f}s")
    sub = bal_ours[targets]
    for t, bo, bs in zip(targets, sub, bal_sk):
        print(f"  target {t} (positive rate {rates[t]:.2f}): bal_acc ours {bo:.4f} sklearn {bs:.4f}")
    print(f"speedup (wall) = sklearn extrapolated {t_sk_full:.0f}s / ours fit+select {t_fit:.1f}s; "
          f"speedup (CPU time) = {c_sk * scale:.0f}s / {c_fit:.1f}s = {c_sk * scale / c_fit:.1f}")
    import os
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"RESULT speedup={t_sk_full / t_fit:.1f} speedup_cpu={c_sk * scale / c_fit:.1f} bal_acc_ours={sub.mean():.4f} bal_acc_sklearn={bal_sk.mean():.4f}")


if __name__ == "__main__":
    main()
