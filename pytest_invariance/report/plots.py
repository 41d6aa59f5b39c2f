"""Figures of the paper's studies, as small self-contained dicts for the HTML report.

Every helper returns ``{"title": str, "kind": str, "svg": str}`` or
``{"title", "kind", "png": base64-str}`` (``bin_table`` returns a table spec
``{"title", "kind": "table", "columns", "rows"}``). They run on xdist workers, so they
use matplotlib's ``Figure`` with the Agg canvas directly (no pyplot, no global
backend switch) and import matplotlib only when called. Large matrices are
averaged down and rendered as PNG to keep each figure under ``MAX_BYTES``.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike, NDArray

__all__ = ["scree_plot", "heatmap", "block_diagonal_plot", "fn_fp_bars", "bin_table",
           "angle_error_bars", "curve", "downsample_columns", "MAX_BYTES"]

MAX_BYTES = 300_000
_MAX_COLS, _MAX_ROWS = 800, 400  # more than the pixels a report figure has anyway


def _new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    from matplotlib.figure import Figure  # lazy: plots are optional at import time

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Figure, title: str, kind: str) -> dict[str, str]:
    import matplotlib

    buf = io.StringIO()
    # fixed hash salt and no date: the same data gives byte-identical reports
    with matplotlib.rc_context({"svg.hashsalt": "pytest-invariance", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    if len(svg.encode()) > MAX_BYTES:  # many markers/paths: a raster is smaller
        return _png(fig, title, kind)
    return {"title": title, "kind": kind, "svg": svg}


def _png(fig: Figure, title: str, kind: str) -> dict[str, str]:
    from PIL import Image

    data = b""
    for dpi in (100, 72, 50):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
        # a 256-colour palette is indistinguishable for colour maps and ~3x smaller
        img = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(colors=256)
        out = io.BytesIO()
        img.save(out, format="PNG", optimize=True)
        data = out.getvalue()
        if len(data) * 4 / 3 <= MAX_BYTES:  # base64 grows by a third
            break
    return {"title": title, "kind": kind, "png": base64.b64encode(data).decode("ascii")}


def downsample_columns(matrix: ArrayLike, max_cols: int = _MAX_COLS,
                       groups: ArrayLike | None = None) -> tuple[NDArray[np.float64], list[int]]:
    """Average adjacent columns so that at most ``max_cols`` remain.

    With ``groups`` (one label per column, columns already grouped), each group is
    averaged on its own, with bins proportional to its size, so no output column
    mixes two groups. Returns the matrix and the output index where each group starts.

    Examples
    --------
    >>> m, starts = downsample_columns(np.arange(8.0).reshape(1, 8), 4)
    >>> m.tolist(), starts
    ([[0.5, 2.5, 4.5, 6.5]], [0])
    """
    x = np.asarray(matrix, dtype=np.float64)
    labels = np.zeros(x.shape[1], dtype=int) if groups is None else np.asarray(groups)
    # contiguous runs of equal labels, in order
    cuts = [0, *(np.flatnonzero(labels[1:] != labels[:-1]) + 1).tolist(), x.shape[1]]
    n_cols = x.shape[1]
    blocks, starts, pos = [], [], 0
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        bins = max(1, min(hi - lo, round(max_cols * (hi - lo) / max(n_cols, 1))))
        parts = np.array_split(np.arange(lo, hi), bins)
        blocks.append(np.stack([x[:, p].mean(axis=1) for p in parts], axis=1))
        starts.append(pos)
        pos += bins
    return np.concatenate(blocks, axis=1), starts


def _downsample_rows(x: NDArray[np.float64], max_rows: int = _MAX_ROWS) -> NDArray[np.float64]:
    if x.shape[0] <= max_rows:
        return x
    return np.stack([x[p].mean(axis=0) for p in np.array_split(np.arange(x.shape[0]), max_rows)])


def scree_plot(singular_values: ArrayLike, k: int | None = None, title: str = "Scree plot",
               n_show: int = 40) -> dict[str, str]:
    """The first ``n_show`` singular values, with a red line after component ``k``
    (paper Fig. 6: the rank an ideal representation would have, e.g. the class count).

    Examples
    --------
    >>> scree_plot([5.0, 3.0, 1.0], k=2)["kind"]
    'scree'
    """
    s = np.asarray(singular_values, dtype=np.float64).ravel()[:n_show]
    fig = _new_figure(6.0, 3.2)
    ax = fig.add_subplot()
    idx = np.arange(1, s.size + 1)
    ax.bar(idx, s, color="#4a6fa5", width=0.8)
    if k is not None:
        ax.axvline(k + 0.5, color="red", linewidth=1.5, label=f"k = {k}")
        ax.legend(loc="upper right")
    ax.set_xlabel("singular vector (rank order)")
    ax.set_ylabel("singular value")
    ax.set_xlim(0.3, max(s.size, 1) + 0.7)
    ax.set_title(title)
    return _svg(fig, title, "scree")


def heatmap(matrix: ArrayLike, row_label: str, col_label: str, title: str,
            col_groups: Sequence[Any] | None = None, cbar_label: str = "activation") -> dict[str, str]:
    """Features x samples as an image (paper Fig. 7), rendered as PNG.

    Columns are grouped by ``col_groups`` (stable sort, so sort the samples by angle
    before calling to get "class, then angle" order) and averaged down to at most
    800 columns, rows to at most 400.
    """
    x = np.asarray(matrix, dtype=np.float64)
    groups = None
    if col_groups is not None:
        labels = np.asarray(col_groups)
        order = np.argsort(labels, kind="stable")
        x, groups = x[:, order], labels[order]
    small, starts = downsample_columns(x, _MAX_COLS, groups)
    small = _downsample_rows(small)
    fig = _new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    im = ax.imshow(small, aspect="auto", interpolation="nearest", cmap="viridis")
    fig.colorbar(im, ax=ax, label=cbar_label)
    if groups is not None:
        uniq = [groups[0], *groups[1:][groups[1:] != groups[:-1]]]
        for s in starts[1:]:
            ax.axvline(s - 0.5, color="white", linewidth=0.6)
        ends = [*starts[1:], small.shape[1]]
        ax.set_xticks([(a + b - 1) / 2 for a, b in zip(starts, ends)], [str(u) for u in uniq])
    ax.set_xlabel(f"{col_label} ({x.shape[1]} columns, averaged to {small.shape[1]})")
    ax.set_ylabel(f"{row_label} ({x.shape[0]})")
    ax.set_title(title)
    return _png(fig, title, "heatmap")


def block_diagonal_plot(reordered: ArrayLike, boundaries: Sequence[int], title: str,
                        col_boundaries: Sequence[int] | None = None) -> dict[str, str]:
    """A block-diagonalised data matrix (paper Fig. 8) with red lines at block edges.

    Parameters
    ----------
    reordered : array, shape (features, samples)
        Rows already reordered by the block diagonalisation.
    boundaries : sequence of int
        Row indices where a new block starts.
    col_boundaries : sequence of int, optional
        Column indices where a new block starts (before downsampling).
    """
    x = np.asarray(reordered, dtype=np.float64)
    n_rows, n_cols = x.shape
    small, _ = downsample_columns(x, _MAX_COLS)
    row_scale = 1.0
    if n_rows > _MAX_ROWS:
        small, row_scale = _downsample_rows(small), _MAX_ROWS / n_rows
    col_scale = small.shape[1] / max(n_cols, 1)
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    im = ax.imshow(np.abs(small), aspect="auto", interpolation="nearest", cmap="magma")
    fig.colorbar(im, ax=ax, label="|activation|")
    for b in boundaries:
        ax.axhline(b * row_scale - 0.5, color="red", linewidth=0.6)
    for b in col_boundaries or ():
        ax.axvline(b * col_scale - 0.5, color="red", linewidth=0.6)
    ax.set_xlabel(f"sample ({n_cols})")
    ax.set_ylabel(f"feature, reordered ({n_rows})")
    ax.set_title(title)
    return _png(fig, title, "block_diagonal")


def _err(rate: float, ci: Sequence[float] | None) -> tuple[float, float]:
    if ci is None or ci[0] is None or ci[1] is None:
        return 0.0, 0.0
    return max(rate - ci[0], 0.0), max(ci[1] - rate, 0.0)


def fn_fp_bars(rows: Sequence[Mapping[str, Any]], title: str) -> dict[str, str]:
    """False-negative bars (left) and false-positive bars (right) per attribute,
    grouped by ``group``, with CI whiskers (paper Fig. 2). Rates are fractions, shown in %.

    Examples
    --------
    >>> fn_fp_bars([{"attribute": "Smiling", "group": "independent", "fn_rate": 0.1,
    ...              "fn_ci": (0.08, 0.12), "fp_rate": 0.05, "fp_ci": (0.04, 0.06)}], "t")["kind"]
    'fn_fp_bars'
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("group", "")), []).append(r)
    # one header row per group (bold tick label, no bar), then its attributes, top to bottom
    ordered: list[Mapping[str, Any]] = []
    labels: list[str] = []
    heads: list[int] = []
    for name, members in groups.items():
        if name:
            heads.append(len(labels))
            labels.append(name)
            ordered.append({})
        labels += [str(m["attribute"]) for m in members]
        ordered += members
    y = np.arange(len(ordered))[::-1]
    fig = _new_figure(7.5, 1.2 + 0.26 * max(len(ordered), 1))
    ax_fn, ax_fp = fig.subplots(1, 2, sharey=True)
    bars = [i for i, r in enumerate(ordered) if r]
    for ax, key, colour, name in ((ax_fn, "fn", "#c0504d", "false negatives"),
                                  (ax_fp, "fp", "#4a6fa5", "false positives")):
        rates = np.array([100 * float(ordered[i][f"{key}_rate"]) for i in bars])
        errs = np.array([_err(float(ordered[i][f"{key}_rate"]), ordered[i].get(f"{key}_ci"))
                         for i in bars]).reshape(-1, 2)
        ax.barh(y[bars], rates, xerr=100 * errs.T, color=colour, height=0.7, capsize=2)
        ax.set_xlabel(f"{name} (% of {'positives' if key == 'fn' else 'negatives'})")
        ax.grid(axis="x", alpha=0.3)
        for h in heads[1:]:
            ax.axhline(y[h] + 0.5, color="grey", linewidth=0.8)
    ax_fn.invert_xaxis()  # FN bars grow to the left, as in the paper
    ax_fn.set_yticks(y, labels)
    for h in heads:
        ax_fn.get_yticklabels()[h].set_fontweight("bold")
    fig.suptitle(title)
    return _svg(fig, title, "fn_fp_bars")


def bin_table(rows: Sequence[Mapping[str, Any]], title: str = "Absolute yaw error per bin",
              unit: str = "°") -> dict[str, Any]:
    """Table 1 layout: ``bin``, ``mae`` with ``ci`` (lo, hi), ``count``, as a table spec
    the report renders as an HTML table (all cells are strings, escaped on output).

    Examples
    --------
    >>> bin_table([{"bin": "0-15", "mae": 7.13, "ci": (6.9, 7.4), "count": 14255}])["rows"]
    [['0-15', '7.13', '[6.90, 7.40]', '14255']]
    """
    def fmt(v: Any) -> str:
        return "–" if v is None else f"{float(v):.2f}"

    body = []
    for r in rows:
        ci = r.get("ci") or (None, None)
        body.append([str(r["bin"]), fmt(r.get("mae")), f"[{fmt(ci[0])}, {fmt(ci[1])}]",
                     str(r.get("count", ""))])
    return {"title": title, "kind": "table",
            "columns": [f"bin ({unit})", f"MAE ({unit})", f"95% CI ({unit})", "count"], "rows": body}


def _whisker(row: Mapping[str, Any] | None) -> tuple[float, float]:
    """(down, up) whisker lengths of a bar: ``err`` (±), else ``lo``/``hi`` bounds."""
    if row is None:
        return 0.0, 0.0
    if row.get("err") is not None:
        return float(row["err"]), float(row["err"])
    if row.get("lo") is None or row.get("hi") is None:
        return 0.0, 0.0
    v = float(row["value"])
    return max(v - float(row["lo"]), 0.0), max(float(row["hi"]) - v, 0.0)


def class_bars(rows: Sequence[Mapping[str, Any]], ylabel: str, title: str, kind: str = "class_bars",
               dark: Sequence[str] = ()) -> dict[str, str]:
    """Grouped bars: one group per ``class`` (in order of appearance), one bar per
    ``series``, with ± ``err`` whiskers, or whiskers to ``lo``/``hi``, when given. Rows are
    ``{"series", "class", "value", "err"?, "lo"?, "hi"?}``; series named in ``dark`` are
    drawn in shades of grey (the paper's black softmax bars in Fig. 4), the others in colour.

    Examples
    --------
    >>> class_bars([{"series": "lenet MAV", "class": "0", "value": 0.1}], "error", "t")["kind"]
    'class_bars'
    """
    series = list(dict.fromkeys(str(r["series"]) for r in rows))
    classes = list(dict.fromkeys(str(r["class"]) for r in rows))
    cell = {(str(r["series"]), str(r["class"])): r for r in rows}
    fig = _new_figure(max(7.0, 0.11 * len(series) * len(classes) + 2.5), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    greys = iter(("#222222", "#666666", "#999999", "#bbbbbb"))
    colours = iter(("#c0504d", "#4a6fa5", "#2e8b57", "#e69f00", "#8064a2", "#4bacc6", "#f79646", "#9bbb59"))
    for i, name in enumerate(series):
        xs = np.arange(len(classes)) + (i - (len(series) - 1) / 2) * width
        vals = [float(cell[name, c]["value"]) if (name, c) in cell else np.nan for c in classes]
        errs = np.array([_whisker(cell.get((name, c))) for c in classes]).reshape(-1, 2).T
        colour = next(greys, "#444444") if name in dark else next(colours, None)
        ax.bar(xs, vals, width, yerr=errs if errs.any() else None, capsize=2, label=name, color=colour,
               error_kw={"linewidth": 0.8})
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set_xlabel("class")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    # outside the axes: with ten groups of bars there is no empty corner
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    # a long title (a layer's tensor name) breaks before its parenthesis, never off the figure
    ax.set_title(title.replace(" (", "\n(", 1) if len(title) > 60 else title, fontsize=10)
    return _svg(fig, title, kind)


def angle_error_bars(rows: Sequence[Mapping[str, Any]], title: str = "Absolute angle error",
                     unit: str = "°") -> dict[str, str]:
    """Mean ± std absolute angle error per class, one bar colour per model (paper Fig. 3).
    Rows are ``{"model", "class", "mean", "std"}``."""
    bars = [{"series": r["model"], "class": r["class"], "value": r["mean"], "err": r.get("std")} for r in rows]
    return class_bars(bars, f"absolute error ({unit}), mean ± std", title, "angle_error_bars")


def curve(x: ArrayLike, ys: Mapping[str, tuple[ArrayLike, ArrayLike | None, ArrayLike | None]],
          xlabel: str, ylabel: str, title: str) -> dict[str, str]:
    """Lines with CI bands, e.g. identification accuracy against perturbation strength.
    ``ys`` maps a label to ``(values, lo, hi)``; ``lo``/``hi`` may be None."""
    xs = np.asarray(x, dtype=np.float64)
    fig = _new_figure(6.0, 3.4)
    ax = fig.add_subplot()
    for label, (vals, lo, hi) in ys.items():
        (line,) = ax.plot(xs, np.asarray(vals, dtype=np.float64), marker="o", markersize=3, label=label)
        if lo is not None and hi is not None:
            ax.fill_between(xs, np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64),
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _svg(fig, title, "curve")


def before_after_bars(rows: Sequence[Mapping[str, Any]], title: str) -> dict[str, str]:
    """Concept erasure at a glance: one panel per ``panel`` (leakage, task), a pair of bars
    (before, after erasure) per ``name``, CI whiskers and the chance level as a tick.

    Rows are ``{"panel", "name", "before": (value, lo, hi), "after": (value, lo, hi), "chance"}``.

    Examples
    --------
    >>> before_after_bars([{"panel": "angle MAE (°)", "name": "linear", "before": (7.2, 7.1, 7.3),
    ...                     "after": (25.7, 25.6, 25.8), "chance": 25.7}], "t")["kind"]
    'before_after_bars'
    """
    panels = list(dict.fromkeys(str(r["panel"]) for r in rows))
    fig = _new_figure(3.2 * len(panels) + 0.6, 3.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        members = [r for r in rows if str(r["panel"]) == panel]
        xs = np.arange(len(members))
        for k, (key, colour) in enumerate((("before", "#4a6fa5"), ("after", "#c0504d"))):
            vals = [float(r[key][0]) for r in members]
            errs = np.array([_err(float(r[key][0]), r[key][1:]) for r in members]).reshape(-1, 2).T
            ax.bar(xs + (k - 0.5) * 0.38, vals, 0.38, yerr=errs, capsize=2, color=colour,
                   label=f"{key} erasure")
        for x, r in zip(xs, members):
            if r.get("chance") is not None:
                ax.hlines(float(r["chance"]), x - 0.4, x + 0.4, colors="black", linestyles="dashed",
                          label="chance" if x == 0 else None)
        ax.set_xticks(xs, [str(r["name"]) for r in members])
        ax.set_ylabel(panel)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _svg(fig, title, "before_after_bars")


def factor_overview(rows: Sequence[Mapping[str, Any]], title: str) -> dict[str, str]:
    """Every factor's figure against its chance level, on one shared axis.

    Each row is ``{"factor", "label", "score", "ci": (lo, hi), "gated": bool}`` where
    ``score`` maps the factor's own figure onto 0 = chance, 1 = fully recoverable (see
    :func:`pytest_invariance.studies.factors.leakage_score`); ``label`` carries the raw
    figure and its chance, shown at the right of the dot.

    Examples
    --------
    >>> factor_overview([{"factor": "blur", "label": "MAE 0.1 (chance 0.3)", "score": 0.6,
    ...                   "ci": (0.5, 0.7), "gated": True}], "t")["kind"]
    'factor_overview'
    """
    y = np.arange(len(rows))[::-1]
    fig = _new_figure(7.5, 1.3 + 0.32 * max(len(rows), 1))
    ax = fig.add_subplot()
    for yi, r in zip(y, rows):
        score = float(r["score"])
        lo, hi = _err(score, r.get("ci"))
        colour = "#c0504d" if r.get("gated") else "#4a6fa5"
        ax.errorbar(score, yi, xerr=[[lo], [hi]], fmt="o", color=colour, capsize=3)
        ax.annotate(str(r.get("label", "")), (1.02, yi), xycoords=("axes fraction", "data"), va="center",
                    fontsize=7, annotation_clip=False)
    ax.axvline(0.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(y, [f"{r['factor']}{' (gated)' if r.get('gated') else ''}" for r in rows])
    ax.set_xlim(-0.25, 1.05)
    ax.set_xlabel("recovered from the embedding: 0 = chance, 1 = perfectly (95% CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    return _svg(fig, title, "factor_overview")


def depth_curves(panels: Sequence[Mapping[str, Any]], title: str) -> dict[str, str]:
    """Figures across a network's depth, one small panel per metric, layers in forward order.

    Each panel is ``{"title", "layers": [name, ...], "value", "ci_low", "ci_high",
    "chance", "threshold": [one per layer, None where absent], "task": bool}``. The
    figure is a line with its CI band; chance is a dashed grey line and the threshold a
    dotted red one (a step where a layer has its own). Task panels (what the network is
    for: identification rank-1, MAV accuracy) are drawn in green, so a reader sees in one
    row where a factor stops being readable and what the task has at that depth.

    Examples
    --------
    >>> depth_curves([{"title": "angle_mae", "layers": ["conv1", "ip1"], "value": [20.0, 7.0],
    ...                "ci_low": [19.0, 6.5], "ci_high": [21.0, 7.5], "chance": [25.7, 25.7],
    ...                "threshold": [10.0, 10.0]}], "t")["kind"]
    'depth_curves'
    """
    ncols = min(len(panels), 4)
    nrows = -(-len(panels) // max(ncols, 1))
    fig = _new_figure(2.6 * max(ncols, 1) + 0.4, 2.3 * max(nrows, 1) + 0.5)
    axes = fig.subplots(max(nrows, 1), max(ncols, 1), squeeze=False).ravel()

    def arr(v: Sequence[Any] | None, n: int) -> NDArray[np.float64]:
        return np.array([np.nan if x is None else float(x) for x in (v or [None] * n)], dtype=np.float64)

    for ax, p in zip(axes, panels):
        n = len(p["layers"])
        xs = np.arange(n)
        colour = "#2e8b57" if p.get("task") else "#4a6fa5"
        ax.plot(xs, arr(p["value"], n), marker="o", markersize=3, color=colour, label="figure")
        lo, hi = arr(p.get("ci_low"), n), arr(p.get("ci_high"), n)
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.2, linewidth=0, label="95% CI")
        # chance and threshold hold per layer: a level across each layer's slot
        edges = np.arange(n + 1) - 0.5
        for key, style, label in (("chance", dict(color="grey", linestyle="--", linewidth=1), "chance"),
                                  ("threshold", dict(color="red", linestyle=":", linewidth=1.4), "threshold")):
            level = arr(p.get(key), n)
            if np.isfinite(level).any():
                ax.stairs(level, edges, baseline=None, label=label, **style)
        names = [str(x) for x in p["layers"]]
        slanted = n > 4 or max(map(len, names)) * n > 24  # long ONNX tensor names would overlap
        ax.set_xticks(xs, names, rotation=35 if slanted else 0, ha="right" if slanted else "center", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(("task: " if p.get("task") else "") + str(p["title"]), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _svg(fig, title, "depth_curves")


__all__ += ["factor_overview", "class_bars", "depth_curves"]
