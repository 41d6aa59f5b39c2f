"""pytest-invariance: audit what an image model's embeddings still know.

The data flow follows the sub-packages: ``models`` (files to an Embedder) ->
``embeddings`` (batched extraction + cache) -> ``probes`` (estimators and statistics)
-> ``checks`` (figures to verdicts) -> ``plugin`` (pytest) -> ``report``/``history``.
Nothing heavy is imported here so the pytest entry point stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"
