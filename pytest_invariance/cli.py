"""``pytest-invariance`` command: inspect and compare stored audit runs.

    pytest-invariance history [--history reports/history.sqlite]
    pytest-invariance compare TAG_A TAG_B [--history ...] [--out reports/compare.html]

``compare`` judges B against A (A is the baseline): "worse" means B moved toward
violating the check's threshold by more than the two runs' combined CI half-width.
Errors are one line on stderr with exit status 2; nothing is written on error.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from .errors import InvarianceError

DEFAULT_HISTORY = "reports/history.sqlite"
DEFAULT_COMPARE_OUT = "reports/compare.html"
_MAX_ROWS = 20  # the terminal table is a teaser; the HTML has everything


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytest-invariance", description="Inspect and compare stored invariance audit runs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{history,compare}")
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
    return parser


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def cmd_history(path: str, out: TextIO) -> int:
    """Print one line per stored version: tag, number of checks, failures, git commit."""
    from .history import HistoryStore

    store = HistoryStore(path)
    tags = store.versions()
    if not tags:
        print(f"no versions stored in {path}", file=out)
        return 0
    print(f"{'version':<16} {'recorded':<25} {'checks':>6} {'failed':>6}  git commit", file=out)
    for tag in tags:
        doc = store.run(tag)
        checks = doc.get("checks") or []
        failed = sum(c.get("verdict") in ("FAIL", "ERROR") for c in checks)
        commit = str(doc["run"].get("git_commit") or "")[:12]
        print(f"{tag:<16} {doc['run'].get('recorded_at', ''):<25} {len(checks):>6} {failed:>6}  {commit}",
              file=out)
    return 0


def cmd_compare(tag_a: str, tag_b: str, path: str, out_path: str, out: TextIO) -> int:
    """Write the comparison report and print the largest changes. Returns 1 when B is
    worse than A on any check (so it can gate a script), else 0."""
    from .history import HistoryStore
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
        print(f"{r['change']:<8} {_cut(r['nodeid'], 52):<52} {_cut(r['metric'], 20):<20} "
              f"{r['a']:>12} {r['b']:>12} {r['delta']:>10}", file=out)
    if len(rows) > _MAX_ROWS:
        print(f"... {len(rows) - _MAX_ROWS} more rows in the report", file=out)
    worse = sum(r["change"] == "worse" for r in rows)
    print(f"{worse} worse, {sum(r['change'] == 'better' for r in rows)} better of {len(rows)} checks; "
          f"report: {written}", file=out)
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
        return cmd_compare(args.tag_a, args.tag_b, args.history, args.out, sys.stdout)
    except (InvarianceError, OSError) as exc:
        print(f"pytest-invariance: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
