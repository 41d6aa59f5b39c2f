"""``pytest-invariance`` command: inspect and compare stored audit runs; extract embeddings.

    pytest-invariance history [--history reports/history.sqlite]
    pytest-invariance compare TAG_A TAG_B [--history ...] [--out reports/compare.html]
    pytest-invariance extract (--suite DIR | --images DIR) --out DIR [--model PATH] [--layer NAME]...
                              [--ray [--ray-address ADDR] [--actors N] [--num-gpus F]]

``compare`` judges B against A (A is the baseline) as ``--invariance-baseline`` does
(:func:`pytest_invariance.history.judge_change`): "worse" means more leakage, toward violating
the check's threshold or, ungated, in the metric's leak direction, by more than the two runs'
combined CI half-width; a metric without a leak direction is "not compared".
Errors are one line on stderr with exit status 2; nothing is written on error.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .errors import InvarianceError

DEFAULT_HISTORY = "reports/history.sqlite"
DEFAULT_COMPARE_OUT = "reports/compare.html"
_MAX_ROWS = 20  # the terminal table is a teaser; the HTML has everything


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-invariance", description="Inspect and compare stored invariance audit runs; extract embeddings to Parquet.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{history,compare,extract}")
    hist = sub.add_parser("history", help="list stored model versions, oldest first")
    hist.add_argument("--history", default=DEFAULT_HISTORY, metavar="PATH",
                      help=f"history database (default {DEFAULT_HISTORY})")
    comp = sub.add_parser("compare", help="side-by-side report of two stored versions (B against A)")
    comp.add_argument("tag_a", metavar="TAG_A", help="baseline version tag, or 'latest'")
    comp.add_argument("tag_b", metavar="TAG_B", help="version tag to judge")
    comp.add_argument("--history", default=DEFAULT_HISTORY, metavar="PATH",
                      help=f"history database (default {DEFAULT_HISTORY})")
    comp.add_argument("--out", default=DEFAULT_COMPARE_OUT, metavar="PATH",
                      help=f"HTML file to write (default {DEFAULT_COMPARE_OUT})")
    _extract_parser(sub)
    return parser


def _extract_parser(sub: Any) -> None:
    from .settings import parse_device, parse_layer, parse_layout, parse_pool, parse_positive_int, parse_preprocess

    ext = sub.add_parser("extract", help="embed a suite's images (or a folder) into Parquet shards for "
                         "--invariance-embeddings (docs/scale.md)")
    src = ext.add_mutually_exclusive_group(required=True)
    src.add_argument("--suite", metavar="DIR", help="the images a suite audits, read out as it reads them "
                     "(CelebA suites, factors); with --data-dir")
    src.add_argument("--images", metavar="DIR", help="every image below DIR; ids are paths relative to DIR")
    ext.add_argument("--out", required=True, metavar="DIR", help="folder of the shards: new or empty; written "
                     "into a hidden sibling and renamed when complete")
    ext.add_argument("--overwrite", action="store_true", help="replace an --out that holds shards (only shards) "
                     "once the new ones are complete")
    ext.add_argument("--model", metavar="PATH", help="model file or module:factory (default: the suite's own)")
    ext.add_argument("--layer", type=parse_layer, action="append", default=[], metavar="NAME",
                     help="layer to write (repeat for several, written in forward order; default: the audit's layer)")
    ext.add_argument("--data-dir", metavar="DIR", help="as --invariance-data-dir")
    ext.add_argument("--preprocess", type=parse_preprocess, action="append", default=[], metavar="K=V",
                     help="as --invariance-preprocess")
    ext.add_argument("--pool", type=parse_pool, default="auto", metavar="MODE", help="as --invariance-pool")
    ext.add_argument("--weights", metavar="PATH", help="as --invariance-weights")
    ext.add_argument("--trust-pickle", action="store_true", help="as --invariance-trust-pickle")
    ext.add_argument("--input-layout", type=parse_layout, default="auto", metavar="LAYOUT",
                     help="as --invariance-input-layout")
    ext.add_argument("--input-batch", type=parse_positive_int, default=None, metavar="N",
                     help="as --invariance-input-batch")
    ext.add_argument("--layer-layout", type=parse_layout, default="auto", metavar="LAYOUT",
                     help="as --invariance-layer-layout")
    ext.add_argument("--skip-bad", action="store_true", help="as --invariance-skip-bad")
    ext.add_argument("--device", type=parse_device, default="auto", metavar="DEV")
    ext.add_argument("--batch-size", type=parse_positive_int, default=256, metavar="N")
    ext.add_argument("--shard-rows", type=parse_positive_int, default=4096, metavar="N", help="rows per shard")
    ext.add_argument("--seed", type=int, default=0, metavar="N", help="as --invariance-seed (seeded splits)")
    ext.add_argument("--progress", choices=("auto", "on", "off"), default="auto")
    ext.add_argument("--ray", action="store_true", help="run on Ray Data (pip install 'pytest-invariance[ray]')")
    ext.add_argument("--ray-address", metavar="ADDR", help="ray.init(address=ADDR): an existing cluster, e.g. 'auto'")
    ext.add_argument("--actors", type=parse_positive_int, default=1, metavar="N", help="Ray actor pool size")
    ext.add_argument("--num-gpus", type=float, default=None, metavar="F",
                     help="GPUs per actor (default: 1 when the cluster has GPUs, else 0)")


def cmd_extract(args: argparse.Namespace, out: TextIO) -> int:
    """Write the shards; print one line: how many rows, shards, where, how fast."""
    import time
    from pathlib import Path

    from ._extract_plan import folder_job, suite_job
    from .embeddings._export import run_local, run_ray
    from .settings import Settings, absolute_path

    here = Path.cwd()
    settings = Settings(model=absolute_path(args.model, here) if args.model else None,
                        layer=tuple(args.layer), device=args.device, pool=args.pool,
                        weights=absolute_path(args.weights, here) if args.weights else None,
                        trust_pickle=args.trust_pickle, input_layout=args.input_layout, input_batch=args.input_batch,
                        layer_layout=args.layer_layout, skip_bad=args.skip_bad,
                        preprocess=tuple(args.preprocess), batch_size=args.batch_size, seed=args.seed,
                        data_dir=absolute_path(args.data_dir, here) if args.data_dir else None,
                        no_cache=True, progress=args.progress, rootdir=str(here))
    if args.suite:
        job = suite_job(settings, Path(args.suite).resolve(), args.shard_rows)
    else:
        job = folder_job(settings, Path(args.images).resolve(), args.shard_rows)
    dest = Path(args.out)
    start = time.perf_counter()
    if args.ray:
        paths = run_ray(job, dest, address=args.ray_address, actors=args.actors, num_gpus=args.num_gpus,
                        overwrite=args.overwrite)
    else:
        from ._progress import progress_wanted

        paths = run_local(job, dest, progress=progress_wanted(args.progress), overwrite=args.overwrite)
    took = time.perf_counter() - start
    print(f"extract: {job.total} images x {len(job.layers)} layers ({', '.join(job.layers)}) of {job.meta.model} "
          f"-> {len(paths)} shards in {dest} ({took:.1f} s, {job.total / max(took, 1e-9):.1f} images/s"
          f"{', Ray' if args.ray else ''})", file=out)
    for note in job.notes:
        print(note, file=out)
    return 0


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def cmd_history(path: str, out: TextIO) -> int:
    """Print one line per stored version: tag, number of checks, failures, git commit."""
    from .history import HistoryStore, not_a_baseline, run_counts

    store = HistoryStore(path)
    tags = store.versions()
    if not tags:
        print(f"no versions stored in {path}", file=out)
        return 0
    print(f"{'version':<16} {'recorded':<25} {'checks':>6} {'failed':>6} {'inconclusive':>12} {'errors':>6}  "
          f"{'git commit':<12}  baseline", file=out)
    for tag in tags:
        doc = store.run(tag)
        # one count for the columns and for the baseline verdict: an ERROR is a test that measured
        # nothing (a tool error); an INCONCLUSIVE check measured a figure its CI could not gate
        n = run_counts(doc)
        commit = str(doc["run"].get("git_commit") or "")[:12]
        why = not_a_baseline(doc)
        print(f"{tag:<16} {doc['run'].get('recorded_at', ''):<25} {n['checks']:>6} {n['failed']:>6} "
              f"{n['inconclusive']:>12} {n['errors']:>6}  {commit:<12}  {'no: ' + why if why else 'yes'}", file=out)
    return 0


def cmd_compare(tag_a: str, tag_b: str, path: str, out_path: str, out: TextIO) -> int:
    """Write the comparison report and print the largest changes. Returns 1 when B is
    worse than A on any check (so it can gate a script), else 0; raises InvarianceError (exit 2)
    when every check the two share was measured on other data (nothing compared)."""
    from .history import HistoryStore
    from .history._baseline import OTHER_DATA, OTHER_DATA_FIX, UNDECIDED_BASE
    from .report import compare_rows, write_compare_report

    store = HistoryStore(path)
    tag_b = store.resolve(tag_b)  # type: ignore[assignment]  # explicit tags resolve to themselves
    resolved_a = store.resolve(tag_a, current=tag_b)
    if resolved_a is None:
        raise InvarianceError(f"no version stored before {tag_b!r} in {path} to compare against")
    doc_a, doc_b = store.run(resolved_a), store.run(tag_b)
    rows = compare_rows(doc_a, doc_b)
    written = write_compare_report(doc_a, doc_b, out_path, resolved_a, tag_b)
    print(f"{'change':<8} {'check':<52} {'metric':<20} {resolved_a[:12]:>12} {tag_b[:12]:>12} {'B-A':>10}",
          file=out)
    for r in rows[:_MAX_ROWS]:
        undirected = r["change"].startswith("not compared")
        print(f"{'–' if undirected else r['change']:<8} {_cut(r['nodeid'], 52):<52} {_cut(r['metric'], 20):<20} "
              f"{r['a']:>12} {r['b']:>12} {r['delta']:>10}" + (f"  ({r['change']})" if undirected else ""), file=out)
    if len(rows) > _MAX_ROWS:
        print(f"... {len(rows) - _MAX_ROWS} more rows in the report", file=out)
    worse = sum(r["change"] == "worse" for r in rows)
    undirected = sum(r["change"].startswith("not compared: no leak") for r in rows)
    undecided = sum(r["change"] == UNDECIDED_BASE for r in rows)
    other = sum(r["change"] == OTHER_DATA for r in rows)
    print(f"{worse} worse, {sum(r['change'] == 'better' for r in rows)} better of {len(rows)} checks"
          + (f" ({undirected} not compared: no leak direction)" if undirected else "")
          + (f" ({undecided} not compared: inconclusive in {resolved_a})" if undecided else "")
          + (f" ({other} not compared: other data; {OTHER_DATA_FIX})" if other else "")
          + f"; report: {written}", file=out)
    if other and not any(r["change"] in ("worse", "better", "same") for r in rows):
        # as --invariance-baseline: nothing compared is no verdict, not a pass
        raise InvarianceError(f"{resolved_a} and {tag_b} share {other} check(s), all measured on other data: "
                              "nothing was compared; audit both versions on the same data, or compare TAG_B with a version that was")
    return 1 if worse else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytest-invariance`` console script.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 when ``compare`` finds a worse check, 2 on a usage or data error.

    Examples
    --------
    >>> main(["history", "--history", "/nonexistent/h.sqlite"])
    2
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "history":
            return cmd_history(args.history, sys.stdout)
        if args.command == "extract":
            return cmd_extract(args, sys.stdout)
        return cmd_compare(args.tag_a, args.tag_b, args.history, args.out, sys.stdout)
    except (InvarianceError, OSError, ImportError) as exc:
        text = extract_options(str(exc)) if args.command == "extract" else str(exc)
        print(f"pytest-invariance: error: {text}", file=sys.stderr)
        return 2


# The plugin's options and what ``extract`` calls them: its errors (raised by the code the
# plugin shares) must name the option of the command the user ran.
EXTRACT_OPTIONS = {"--invariance-pool": "--pool", "--invariance-preprocess": "--preprocess",
                   "--invariance-data-dir": "--data-dir", "--invariance-layers": "--layer",
                   "--invariance-seed": "--seed", "--invariance-weights": "--weights",
                   "--invariance-trust-pickle": "--trust-pickle", "--invariance-input-layout": "--input-layout",
                   "--invariance-input-batch": "--input-batch",
                   "--invariance-layer-layout": "--layer-layout", "--invariance-skip-bad": "--skip-bad",
                   "--invariance-batch-size": "--batch-size", "--invariance-progress": "--progress"}


def extract_options(text: str) -> str:
    """``text`` with every plugin option ``extract`` spells its own way renamed to its spelling."""
    import re

    text = re.sub(r"--invariance-[a-z-]+", lambda m: EXTRACT_OPTIONS.get(m.group(0), m.group(0)), text)
    return re.sub(r"(--[a-z-]+) / \1(?![a-z-])", r"\1", text)  # "--layer / --invariance-layers" is one option here


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
