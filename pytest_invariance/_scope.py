"""What an in-process memo key must hold: everything a study's value depends on.

:meth:`pytest_invariance._audit.Audit.memo` shares a study's results between the tests of
one process. Its key once named only the study, model and layer, so two copies of a suite
with different ``[protocol]`` (or ``[probes]``, ``[preprocess]``, data) in one session got
the first copy's figures. A :class:`Scope` is built from the content itself, by
:attr:`pytest_invariance.checks.Suite.key` (the suite's folder and its whole config, any
overlay included) and :attr:`pytest_invariance._audit.ModelRef.key` (the model's digest,
layer, preprocessing, pooling, projection and that suite key); ``memo`` refuses a key that
holds neither (and has no ``disk`` content to derive one from), so a new study cannot
forget what its figures depend on.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


class Scope(tuple):  # type: ignore[type-arg]
    """A hashable record of what a memoised value depends on (see the module docstring)."""

    __slots__ = ()


def digest(content: Any) -> str:
    """sha256 of ``content`` as canonical JSON (sorted keys; anything else by ``str``)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def holds_scope(key: Any) -> bool:
    """Whether ``key`` is a :class:`Scope` or a tuple holding one (at any depth)."""
    if isinstance(key, Scope):
        return True
    return isinstance(key, tuple) and any(holds_scope(k) for k in key)
