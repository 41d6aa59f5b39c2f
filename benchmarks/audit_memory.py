"""Benchmark: peak resident memory and time of ``pytest audits/<suite>``, one suite at a time.

Each suite runs in its own pytest process with an empty cache folder (cold: extraction and
studies) and then again with that cache (warm: figures read back), as ``/usr/bin/time -v``
would measure it: the peak is the process's ``ru_maxrss`` from ``wait4``. The plugin
``benchmarks/_rss_phases.py`` samples the resident set and names the test and study step
that was running at the peak. Prints one line per suite and pass, side by side, and a
RESULT line with the largest peak against the 2.5 GB target (GB: 10^9 bytes).

With ``--embeddings DIR`` the cache folder starts with DIR's embeddings (not its figures):
the studies then run from cached embeddings, without the extraction.

``--suites all`` runs the whole of ``audits/`` in one pytest session, as ``pytest audits/``
does: what one suite leaves in memory is then under the next one's peak.

Usage: python benchmarks/audit_memory.py [--suites all | mnist_rotation,face_pose,...]
       [--cache-root .cache/bench-memory] [--embeddings DIR] [--warm] [-- extra pytest args]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("mnist_rotation", "face_pose", "face_attributes", "face_perturbation", "factors")
TARGET_GB = 2.5


def run_suite(suite: str, cache: Path, extra: list[str]) -> dict:
    phases = cache.parent / f"{suite}.phases.jsonl"
    phases.unlink(missing_ok=True)
    env = dict(os.environ, RSS_PHASES_OUT=str(phases), CI="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    target = "audits" if suite == "all" else f"audits/{suite}"  # all: one session, as `pytest audits/`
    cmd = [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider", "-p", "_rss_phases",
           "--invariance-cache-dir", str(cache), *extra]
    w, t0 = time.perf_counter(), os.times()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - w
    summary = [line for line in out.splitlines() if line.strip()][-1:] or [""]
    info = json.loads(phases.read_text().splitlines()[-1]) if phases.exists() else {"peak": {}}
    # ru_maxrss is in KiB (as /usr/bin/time -v's "kbytes"); GB here are 10^9 bytes
    return {"suite": suite, "wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_gb": usage.ru_maxrss * 1024 / 1e9,
            "status": os.waitstatus_to_exitcode(status), "summary": summary[0], "at": info["peak"],
            "top": info.get("top_tests", [])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", default=",".join(SUITES))
    ap.add_argument("--cache-root", default=".cache/bench-memory")
    ap.add_argument("--warm", action="store_true", help="also rerun each suite with its cache warm")
    ap.add_argument("--embeddings", help="start each cache folder with this folder's embeddings (no figures)")
    args, extra = ap.parse_known_args()
    extra = [a for a in extra if a != "--"]
    root = (ROOT / args.cache_root).resolve()
    rows = []
    for suite in args.suites.split(","):
        cache = root / suite
        shutil.rmtree(cache, ignore_errors=True)
        if args.embeddings:
            shutil.copytree(ROOT / args.embeddings, cache, ignore=shutil.ignore_patterns("figures", "*.lock"))
        passes = [("cold", run_suite(suite, cache, extra))]
        if args.warm:
            passes.append(("warm", run_suite(suite, cache, extra)))
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
        for name, r in passes:
            at = r["at"]
            print(f"{suite:18s} {name}: peak RSS {r['peak_gb']:.2f} GB | wall {r['wall']:.0f}s CPU {r['cpu']:.0f}s | "
                  f"peak in {at.get('test', '?')} [{at.get('step', '')}] | cache {size:.0f} MB | "
                  f"exit {r['status']}: {r['summary']}", flush=True)
            print("    highest per test: " + ", ".join(f"{t} {mb * 2**20 / 1e9:.2f} GB" for t, mb in r["top"]), flush=True)
            rows.append(r)
    worst = max(rows, key=lambda r: r["peak_gb"])
    print(f"load average at end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"RESULT peak_gb={worst['peak_gb']:.2f} ({worst['suite']}) target_gb={TARGET_GB} "
          f"ratio={worst['peak_gb'] / TARGET_GB:.2f} cold_wall={sum(r['wall'] for r in rows):.0f}s")


if __name__ == "__main__":
    main()
