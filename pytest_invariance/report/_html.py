"""Render the self-contained HTML report and the side-by-side comparison.

Templates live in the top-level ``templates/`` folder of a source checkout and are
installed to ``<prefix>/share/pytest-invariance/templates``; both are searched.
Autoescaping is on for every template: attribute names, paths and messages come
from user files.
"""
from __future__ import annotations

import math
import site
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..history._baseline import judge_change
from ..history._store import default_tag
from .._io import atomic_write_text
from ._context import _plot_view, build_context, fnum
from ._views import depth_figures, digit_plots

if TYPE_CHECKING:
    import jinja2

__all__ = ["write_report", "render_report", "write_compare_report", "render_compare_report",
           "compare_rows", "template_dirs", "atomic_write_text"]

_SHARE = Path("share", "pytest-invariance", "templates")


def template_dirs() -> list[Path]:
    """Folders that may hold the templates, most specific first: the checkout's
    ``templates/`` next to the package, then the data-files install locations."""
    import pytest_invariance

    candidates = [Path(pytest_invariance.__file__).resolve().parents[1] / "templates",
                  Path(sys.prefix) / _SHARE, Path(sysconfig.get_path("data")) / _SHARE]
    if site.USER_BASE:  # pip install --user
        candidates.append(Path(site.USER_BASE) / _SHARE)
    return [d for d in dict.fromkeys(candidates) if (d / "report.html").is_file()]


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    import jinja2

    dirs = template_dirs()
    if not dirs:
        raise FileNotFoundError(
            "pytest-invariance report templates not found (looked for templates/report.html next to "
            f"the package and under {Path(sys.prefix) / _SHARE}); reinstall pytest-invariance")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(d) for d in dirs]),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=True,
                                            default_for_string=True),
        undefined=jinja2.StrictUndefined,  # a typo in a template fails the tests, not silently
        trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fnum
    return env


def _header(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    versions = run.get("versions") or {}
    pre = run.get("preprocessing") or {}
    rows = [
        ("model", run.get("model_path")), ("sha256", run.get("model_sha256")),
        ("model version", run.get("version_tag") or run.get("model_version")),
        ("layer", run.get("layer")), ("backend / device", f"{run.get('backend') or '–'} / {run.get('device') or '–'}"),
        ("seed", run.get("seed")), ("started", run.get("started")), ("finished", run.get("finished")),
        ("git commit", run.get("git_commit")),
        ("versions", ", ".join(f"{k} {v}" for k, v in [("pytest-invariance", run.get("plugin_version")),
                                                        *versions.items()] if v)),
        ("preprocessing", ", ".join(f"{k}={v}" for k, v in pre.items()) if isinstance(pre, Mapping) else pre),
        ("images skipped", run.get("n_skipped")),
        ("image conversions", ", ".join(f"{k} {v}" for k, v in (run.get("conversions") or {}).items())),
        ("crop", "; ".join(run.get("crop") or [])),
        ("not measurable", "; ".join(f"{k} ({v})" for k, v in (run.get("not_measurable") or {}).items())),
        ("unconverged probe fits", len(run.get("unconverged") or []) or None),
        ("options not applied", "; ".join(f"{k} by {', '.join(v)}" for k, v in
                                         (run.get("options_not_applied") or {}).items())),
    ]
    per_model = "per model, see Audited models" if run.get("models") else "–"
    return [(k, (per_model if k in ("sha256", "preprocessing", "backend / device") else "–")
             if v in (None, "", "– / –") else str(v)) for k, v in rows]


def _models(run: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Every audited model's record as table rows; columns are whatever fields the records
    have (file, sha256, layer, pooling, preprocessing, ...), so new fields show up as-is."""
    models = run.get("models") or {}
    if not isinstance(models, Mapping):
        return [], []
    columns = list(dict.fromkeys(k for info in models.values() if isinstance(info, Mapping) for k in info))

    def cell(v: Any) -> str:
        if isinstance(v, Mapping):
            return ", ".join(f"{k}={x}" for k, x in v.items()) or "–"
        return "–" if v in (None, "") else str(v)

    return columns, [(str(name), [cell((info or {}).get(c)) for c in columns]) for name, info in models.items()]


def render_report(doc: Mapping[str, Any], *, plots: Mapping[Any, Sequence[Mapping[str, Any]]] | None = None,
                  history: Sequence[Mapping[str, Any]] | None = None, title: str | None = None) -> str:
    """The report as an HTML string; see :func:`write_report`."""
    run = doc.get("run") or {}
    current = run.get("version_tag") or run.get("model_version") or default_tag(dict(doc))
    model = Path(str(run.get("model_path"))).name if run.get("model_path") else "default models"
    ctx = build_context(doc, plots, history, current)
    model_columns, models = _models(run)
    try:
        depth, depth_error = [dict(f, plot=_plot_view(f["plot"])) for f in depth_figures(doc)], None
    except ValueError as exc:  # two checks with one identity: no curve can be trusted
        depth, depth_error = [], str(exc)
    digits = [p for p in map(_plot_view, digit_plots(doc)) if p is not None]
    return _environment().get_template("report.html").render(
        model_columns=model_columns, models=models, depth=depth, depth_error=depth_error, digits=digits,
        title=title or f"Invariance audit: {model}", header=_header(run), run=run,
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        generator=f"pytest-invariance {__version__}", has_history=history is not None, **ctx)


def write_report(doc: Mapping[str, Any], path: str | PathLike[str], *,
                 plots: Mapping[Any, Sequence[Mapping[str, Any]]] | None = None,
                 history: Sequence[Mapping[str, Any]] | None = None, title: str | None = None) -> Path:
    """Write one self-contained HTML report of a results document.

    Parameters
    ----------
    doc : dict
        The results document ``{"run": {...}, "checks": [...]}`` (as written to
        ``--invariance-json``). A check's ``details.baseline``/``delta``/``regressed``
        (see :func:`pytest_invariance.history.annotate_regressions`) mark regressions,
        shown apart from threshold failures.
    path : str or PathLike
        Output file; written atomically, folders created.
    plots : dict, optional
        ``nodeid -> [plot dict, ...]`` from :mod:`pytest_invariance.report.plots`
        (a ``(nodeid, metric)`` key attaches plots to one check of a test).
    history : list of dict, optional
        Trend rows ``{"tag", "nodeid", "metric", "value", "ci_low", "ci_high"}``, oldest
        first, as from :meth:`HistoryStore.trend_rows`. None hides the trend column.
    title : str, optional
        Page title; defaults to "Invariance audit: <model file name>".

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import tempfile, os
    >>> out = write_report({"run": {}, "checks": []}, os.path.join(tempfile.mkdtemp(), "r.html"))
    >>> out.read_text().startswith("<!DOCTYPE html>")
    True
    """
    return atomic_write_text(path, render_report(doc, plots=plots, history=history, title=title))


def compare_rows(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Checks of two runs matched on ``(test, layer, metric)`` as the baseline matches them
    (:func:`~pytest_invariance.history.check_identity`: a sweep's layer4 meets a one-layer
    run of layer4), regressions of B against A first (default CI tolerance), then by size
    of the change. ``change`` is :func:`~pytest_invariance.history.judge_change`'s, the
    comparison the pytest baseline gate makes (worse = more leakage beyond the two CIs)."""
    from ..history import check_identity

    a = {check_identity(c): c for c in doc_a.get("checks") or []}
    b = {check_identity(c): c for c in doc_b.get("checks") or []}
    rows = []
    for key in dict.fromkeys([*a, *b]):
        ca, cb = a.get(key, {}), b.get(key, {})
        nodeid = cb.get("nodeid") or ca.get("nodeid") or key[0]
        comp = cb.get("comparator") or ca.get("comparator")
        judged = judge_change(cb, ca) if ca and cb else {"change": "new" if cb else "removed", "delta": math.nan}
        delta = judged["delta"]
        rows.append({
            "nodeid": str(nodeid), "layer": key[1], "metric": str(key[2]),
            "threshold": f"{comp} {fnum(cb.get('threshold', ca.get('threshold')))}" if comp else "–",
            "a": fnum(ca.get("value")), "b": fnum(cb.get("value")),
            "a_ci": f"[{fnum(ca.get('ci_low'))}, {fnum(ca.get('ci_high'))}]" if ca else "",
            "b_ci": f"[{fnum(cb.get('ci_low'))}, {fnum(cb.get('ci_high'))}]" if cb else "",
            "a_verdict": ca.get("verdict") or "–", "b_verdict": cb.get("verdict") or "–",
            "delta": "–" if math.isnan(delta) else f"{delta:+.4g}", "_abs": 0.0 if math.isnan(delta) else abs(delta),
            "change": judged["change"],
        })
    order = {"worse": 0, "better": 1, "new": 2, "removed": 3, "same": 4}
    rows.sort(key=lambda r: (order.get(r["change"], 5), -r["_abs"], r["nodeid"], r["metric"]))
    return rows


def render_compare_report(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], tag_a: str, tag_b: str) -> str:
    """The side-by-side comparison as an HTML string."""
    rows = compare_rows(doc_a, doc_b)
    counts = {k: sum(r["change"] == k for r in rows) for k in ("worse", "better", "same", "new", "removed")}
    counts["undirected"] = sum(r["change"].startswith("not compared") for r in rows)
    return _environment().get_template("compare.html").render(
        title=f"Invariance audit: {tag_a} vs {tag_b}", tag_a=tag_a, tag_b=tag_b,
        header=[(k, a, b) for (k, a), (_, b) in zip(_header(doc_a.get("run") or {}),
                                                     _header(doc_b.get("run") or {}))],
        rows=rows, counts=counts, generator=f"pytest-invariance {__version__}",
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def write_compare_report(doc_a: Mapping[str, Any], doc_b: Mapping[str, Any], path: str | PathLike[str],
                         tag_a: str, tag_b: str) -> Path:
    """Write the side-by-side comparison of two stored runs (B judged against A)."""
    return atomic_write_text(path, render_compare_report(doc_a, doc_b, tag_a, tag_b))
