"""The process's memory habits (Linux): freed memory handed back between suites, no huge-page advice."""
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


def no_hugepage_advice() -> None:
    """Stop numpy advising transparent huge pages for its large arrays (Linux), unless the
    ``NUMPY_MADVISE_HUGEPAGE`` environment variable chose either way.

    numpy calls ``madvise(MADV_HUGEPAGE)`` on every array of 4 MB or more; where the kernel
    then has to assemble huge pages (compaction) on first touch, filling a fresh array costs
    far more than the arithmetic. On the project's 2-core CI machine, the LeNet study from
    cached embeddings took 22.8 s with the advice and 12.1 s without (reading and unpacking
    its 350,000 x 500 training embeddings: 8.1 s against 1.7 s), with the same figures to the
    bit (``benchmarks/mnist_study.py --hugepage-advice`` measures it side by side). A no-op
    where numpy has no such switch.
    """
    import os

    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # numpy < 2
        try:
            from numpy.core.multiarray import _set_madvise_hugepage  # type: ignore[no-redef]
        except ImportError:
            return
    _set_madvise_hugepage(False)
