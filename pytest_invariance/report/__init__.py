"""HTML reports and the figures in them.

``write_report`` renders a results document (plus plots and history trends) into one
self-contained HTML file; ``plots`` holds the figure helpers the studies call on
workers. matplotlib and jinja2 are imported only when a function needs them.
"""
from __future__ import annotations

from . import plots
from ._html import (
    atomic_write_text,
    compare_rows,
    render_compare_report,
    render_report,
    template_dirs,
    write_compare_report,
    write_report,
)

__all__ = ["write_report", "render_report", "write_compare_report", "render_compare_report",
           "compare_rows", "atomic_write_text", "template_dirs", "plots"]
