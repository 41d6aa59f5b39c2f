"""Handing freed memory back to the system between suites (Linux, glibc)."""
from __future__ import annotations


def trim_heap() -> None:
    """``malloc_trim(0)``: return the free pages of the C heap to the system.

    glibc keeps freed memory mapped for reuse; after a suite's onnxruntime sessions are
    closed, ~400 MB (FaceNet) stay resident without this (docs/performance.md). A no-op
    where glibc is not the allocator.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
