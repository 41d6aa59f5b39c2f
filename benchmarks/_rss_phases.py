"""pytest plugin used by ``benchmarks/audit_memory.py``: where the resident memory peaks.

A thread samples the process's resident set (``/proc/self/status`` VmRSS) every 0.2 s and
remembers, for the highest sample, the test being run and the study step (the name last
passed to ``_progress.Steps.next``) or extraction label at that moment. Writes one JSON line
to ``$RSS_PHASES_OUT`` at the end of the session. Linux only.
"""
from __future__ import annotations

import json
import os
import resource
import threading
import time

_state = {"test": "collection", "step": ""}
_peak = {"rss_mb": 0.0, "test": "", "step": ""}
_per_test: dict[str, float] = {}
_stop = threading.Event()


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _sample() -> None:
    timeline = os.environ.get("RSS_TIMELINE")  # optional: one line per sample, to see the rise
    out = open(timeline, "w") if timeline else None
    start = time.perf_counter()
    while not _stop.is_set():
        rss = _rss_mb()
        t = _state["test"]
        if out is not None:
            out.write(f"{time.perf_counter() - start:7.1f} {rss:7.0f} {t} [{_state['step']}]\n")
            out.flush()
        _per_test[t] = max(_per_test.get(t, 0.0), rss)
        if rss > _peak["rss_mb"]:
            _peak.update(rss_mb=rss, test=t, step=_state["step"])
        time.sleep(0.2)


def pytest_configure(config):  # type: ignore[no-untyped-def]
    from pytest_invariance import _progress
    from pytest_invariance.embeddings import _extract

    orig_next = _progress.Steps.next
    orig_bar = _progress.bar

    def next_(self, name):  # type: ignore[no-untyped-def]
        _state["step"] = name
        return orig_next(self, name)

    def bar_(total, desc, enabled, *a, **kw):  # type: ignore[no-untyped-def]
        _state["step"] = desc
        return orig_bar(total, desc, enabled, *a, **kw)

    _progress.Steps.next = next_
    _progress.bar = _extract.bar = bar_
    threading.Thread(target=_sample, daemon=True).start()


def pytest_runtest_logstart(nodeid, location):  # type: ignore[no-untyped-def]
    _state["test"], _state["step"] = nodeid.split("::", 1)[-1], ""


def pytest_unconfigure(config):  # type: ignore[no-untyped-def]
    _stop.set()
    out = os.environ.get("RSS_PHASES_OUT")
    if out:
        top = sorted(_per_test.items(), key=lambda kv: -kv[1])[:5]
        with open(out, "a") as f:
            f.write(json.dumps({"peak": _peak, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                "top_tests": top}) + "\n")
