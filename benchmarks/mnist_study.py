"""Benchmark: the rotated-MNIST study per bundled model, cold vs warm, side by side.

For each model, in a fresh ``Audit`` each time (as a new pytest process would be):

* cold: empty cache folder; extraction + study;
* study: embeddings cached, figure cache emptied; the study's own time from cached
  embeddings (the issue's "one model's study" figure), with its CPU time;
* rerun: embeddings and figures cached; what a warm ``pytest audits/`` pays per model.

Prints one line per model and the ratios rerun / cold and study / cold. Use a private
cache folder; the cold pass deletes it. Peak memory: run under ``/usr/bin/time -v``.

With ``--compare-ref DIR`` it times only the study from cached embeddings (figure cache
bypassed, imports paid before the clock starts, as in a pytest process), per model, in fresh
processes that alternate between the package in ``DIR`` (e.g. ``git archive main | tar -x -C
DIR``) and this checkout, ``--repeats`` times each, and compares every figure of the two
(value, CI, chance, p-value, every float in the details, every array, the plots' bytes). It
prints wall and CPU time of each side, their ratios and the largest difference per model.
The embeddings must be in ``--cache-dir`` already (a cold run of either side puts them there).
With ``--hugepage-advice`` instead, both sides are this checkout, the "ref" side with numpy's
transparent-huge-page advice (``NUMPY_MADVISE_HUGEPAGE=1``) and the "new" side without, which
is what the plugin does by default (``pytest_invariance/_memory.py``).

With ``--fp16-effect`` it instead compares, per model, every figure computed from float32
training embeddings with the same from the float16 ones the study stores, and prints the
largest absolute difference of each (value, CI bounds, chance, p-value, float details).

Usage: python benchmarks/mnist_study.py [--models lenet,mu_lenet,pair_lenet]
       [--cache-dir .cache/bench-mnist] [--device cpu] [--workers 0] [--fp16-effect]
       [--compare-ref DIR | --hugepage-advice] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
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
    ap.add_argument("--compare-ref", metavar="DIR", help="time and compare the study against the package in DIR")
    ap.add_argument("--hugepage-advice", action="store_true",
                    help="time and compare this checkout's study with numpy's huge-page advice (ref) and without (new)")
    ap.add_argument("--repeats", type=int, default=2, help="with --compare-ref: fresh processes per side and model")
    ap.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)  # one timed study (--compare-ref)
    ap.add_argument("--dump", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, (ROOT / args.cache_dir).resolve(), args.device, args.dump)
    if args.compare_ref or args.hugepage_advice:
        return compare_ref(args)
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


def child(model: str, cache: Path, device: str, dump: str) -> None:
    """One study from cached embeddings in this process; prints a JSON line of its times."""
    import matplotlib.figure  # noqa: F401  (what a pytest process has imported before a study)
    import PIL.Image  # noqa: F401
    import scipy.stats  # noqa: F401
    import threadpoolctl  # noqa: F401
    import torch  # noqa: F401

    from pytest_invariance import _figures
    from pytest_invariance._audit import Audit
    from pytest_invariance.checks import Suite
    from pytest_invariance.settings import Settings
    from pytest_invariance.studies.mnist_rotation import Protocol, run_study

    suite = Suite.find(ROOT / "audits" / "mnist_rotation")
    protocol = Protocol.from_config(suite.section("protocol"))
    audit = Audit(Settings(rootdir=str(ROOT), cache_dir=str(cache), device=device, progress="off"))
    ref = audit.model(suite, model)
    with tempfile.TemporaryDirectory() as tmp:
        audit._figures = _figures.FigureCache(tmp)  # an empty figure cache: computed, then stored
        misses = audit.cache.misses
        out, wall, cpu = timed(lambda: run_study(audit, ref, protocol))
    if audit.cache.misses != misses:
        raise SystemExit(f"{model}: embeddings not cached in {cache}; run the benchmark without --compare-ref first")
    Path(dump).write_text(json.dumps(_figures._encode(out)))
    print(json.dumps({"wall": wall, "cpu": cpu, "package": str(Path(_figures.__file__).parents[1])}))


def _diffs(a, b, path: str = ""):  # type: ignore[no-untyped-def]
    """(path, |a - b|) for every number in two decoded figure trees; inf where they differ in kind."""
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            yield f"{path} keys {sorted(set(a) ^ set(b))}", math.inf
        for k in set(a) & set(b):
            yield from _diffs(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            yield f"{path} length", math.inf
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _diffs(x, y, f"{path}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        same = a == b or (a != a and b != b)  # NaN == NaN here
        yield path, 0.0 if same else abs(a - b)
    else:
        yield path, 0.0 if a == b else math.inf


def compare_ref(args: argparse.Namespace) -> None:
    if args.hugepage_advice:  # this checkout both sides; numpy's huge-page advice on (ref) and off (new)
        sides = {"ref": (str(ROOT), {"NUMPY_MADVISE_HUGEPAGE": "1"}), "new": (str(ROOT), {"NUMPY_MADVISE_HUGEPAGE": "0"})}
    else:
        ref_dir = Path(args.compare_ref).resolve()
        if not (ref_dir / "pytest_invariance").is_dir():
            raise SystemExit(f"--compare-ref {ref_dir}: no pytest_invariance package there")
        sides = {"ref": (str(ref_dir), {}), "new": (str(ROOT), {})}
    times = {side: {"wall": 0.0, "cpu": 0.0} for side in sides}
    worst_all = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            dumps = {}
            per = {side: [] for side in sides}
            for r in range(args.repeats):
                for side, (path, extra) in sides.items():
                    dumps[side] = Path(tmp) / f"{model}-{side}.json"
                    env = {**os.environ, "PYTHONPATH": path, **extra}
                    cmd = [sys.executable, __file__, "--child", model, "--dump", str(dumps[side]),
                           "--cache-dir", args.cache_dir, "--device", args.device]
                    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                    if done.returncode:
                        raise SystemExit(f"{side} {model} failed:\n{done.stderr[-3000:]}")
                    t = json.loads(done.stdout.strip().splitlines()[-1])
                    if Path(t["package"]).resolve() != Path(path).resolve():
                        raise SystemExit(f"{side} imported {t['package']}, not {path}")
                    per[side].append(t)
            for side in sides:  # the best of the repeats: the least disturbed by other jobs
                best = min(per[side], key=lambda t: t["wall"])
                times[side]["wall"] += best["wall"]
                times[side]["cpu"] += best["cpu"]
                runs = ", ".join(f"{t['wall']:.1f}/{t['cpu']:.1f}" for t in per[side])
                print(f"{model} {side}: study {best['wall']:.2f}s wall, {best['cpu']:.2f}s CPU "
                      f"(wall/CPU of each: {runs})")
            a, b = (json.loads(dumps[s].read_text()) for s in sides)
            diffs = list(_diffs(a, b))
            worst = max(d for _, d in diffs)
            worst_all = max(worst_all, worst)
            differing = sorted(((d, p) for p, d in diffs if d), reverse=True)
            print(f"{model}: {len(diffs)} numbers and plots compared, {len(differing)} differ, largest |ref - new| "
                  f"= {worst:.3g}" + "".join(f"\n  {p}: {d:.3g}" for d, p in differing[:12]))
    ratio = {k: times["new"][k] / times["ref"][k] for k in ("wall", "cpu")}
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"RESULT study_new/ref wall={ratio['wall']:.3f} cpu={ratio['cpu']:.3f} "
          f"ref={times['ref']['wall']:.1f}s/{times['ref']['cpu']:.1f}s new={times['new']['wall']:.1f}s/"
          f"{times['new']['cpu']:.1f}s worst_abs_diff={worst_all:.3g}")


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
