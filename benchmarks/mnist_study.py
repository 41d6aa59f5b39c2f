"""Benchmark: the rotated-MNIST study per bundled model, cold vs warm, side by side.

For each model, in a fresh ``Audit`` each time (as a new pytest process would be):

* cold: empty cache folder; extraction + study;
* study: embeddings cached, figure cache emptied; the study's own time from cached
  embeddings (the issue's "one model's study" figure), with its CPU time;
* rerun: embeddings and figures cached; what a warm ``pytest audits/`` pays per model.

Prints one line per model and the ratios rerun / cold and study / cold. Use a private
cache folder; the cold pass deletes it. Peak memory: run under ``/usr/bin/time -v``.

With ``--fp16-effect`` it instead compares, per model, every figure computed from float32
training embeddings with the same from the float16 ones the study stores, and prints the
largest absolute difference of each (value, CI bounds, chance, p-value, float details).

Usage: python benchmarks/mnist_study.py [--models lenet,mu_lenet,pair_lenet]
       [--cache-dir .cache/bench-mnist] [--device cpu] [--workers 0] [--fp16-effect]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn):  # type: ignore[no-untyped-def]
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    from pytest_invariance._audit import Audit
    from pytest_invariance.checks import Suite
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.mnist_rotation import Protocol, run_study

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet,mu_lenet,pair_lenet")
    ap.add_argument("--cache-dir", default=".cache/bench-mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for decoding and rotating images")
    ap.add_argument("--fp16-effect", action="store_true", help="compare figures from float32 vs float16 training features")
    args = ap.parse_args()
    cache = (ROOT / args.cache_dir).resolve()
    suite = Suite.find(ROOT / "audits" / "mnist_rotation")
    protocol = Protocol.from_config(suite.section("protocol"))

    def run(model: str) -> dict:
        audit = Audit(Settings(rootdir=str(ROOT), cache_dir=str(cache), device=args.device, progress="off",
                               workers=args.workers))
        return run_study(audit, audit.model(suite, model), protocol)

    if args.fp16_effect:
        for model in args.models.split(","):
            fp16_effect(model, suite, protocol, cache, args.device)
        return
    totals = {"cold": 0.0, "study": 0.0, "rerun": 0.0}
    for model in args.models.split(","):
        shutil.rmtree(cache, ignore_errors=True)
        cold, t_cold, _ = timed(lambda: run(model))
        shutil.rmtree(cache / "figures")
        study, t_study, c_study = timed(lambda: run(model))
        rerun, t_rerun, _ = timed(lambda: run(model))
        same = all(rerun[k] == cold[k] == study[k] for k in cold if k != "plots")
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
        totals["cold"] += t_cold
        totals["study"] += t_study
        totals["rerun"] += t_rerun
        print(f"{model}: cold {t_cold:.1f}s | study from cached embeddings {t_study:.1f}s (CPU {c_study:.1f}s) | "
              f"rerun with cached figures {t_rerun:.2f}s | cache {size:.0f} MB | figures identical: {same}")
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"RESULT rerun/cold={totals['rerun'] / totals['cold']:.3f} study/cold={totals['study'] / totals['cold']:.3f} "
          f"cold={totals['cold']:.0f}s study={totals['study']:.1f}s rerun={totals['rerun']:.1f}s")


def fp16_effect(model: str, suite, protocol, cache: Path, device: str) -> None:  # type: ignore[no-untyped-def]
    from pytest_invariance._audit import Audit
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.mnist_rotation import compute_study, rotated, study_inputs

    audit = Audit(Settings(rootdir=str(ROOT), cache_dir=str(cache), device=device, progress="off"))
    ref = audit.model(suite, model)
    half = study_inputs(audit, ref, protocol)
    full = dict(half, train=[dict(half["train"][0], Xtr=audit.embed(ref, rotated(audit, "train", protocol),
                                                                    keep=False))])
    a, b = (compute_study(model, x, protocol, audit.seed) for x in (full, half))
    worst = 0.0
    for name, ea in a.items():
        if name == "plots":
            print(f"{model} plots identical: {a['plots'] == b['plots']}")
            continue
        eb = b[name]
        fields = {f: (getattr(ea, f), getattr(eb, f)) for f in ("value", "ci_low", "ci_high", "chance", "p_value")}
        fields.update({f"details.{k}": (v, eb.details[k]) for k, v in ea.details.items() if isinstance(v, float)})
        diffs = {f: abs(x - y) for f, (x, y) in fields.items() if x is not None}
        worst = max(worst, *diffs.values())
        print(f"{model}.{name}: max |float32 - float16| = {max(diffs.values()):.2g} "
              f"({', '.join(f'{f} {d:.2g}' for f, d in diffs.items() if d)})")
    print(f"RESULT model={model} worst_abs_diff={worst:.3g}")


if __name__ == "__main__":
    main()
