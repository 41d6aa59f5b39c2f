"""Threads for numpy's BLAS/LAPACK and torch's CPU ops: one for small problems, and
independent pieces of a large computation spread over the cores (one BLAS thread each)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def one_blas_thread() -> Any:
    """Context manager: numpy's BLAS/LAPACK on one thread (``threadpoolctl``).

    For eigendecompositions and SVDs of a few hundred rows and columns, and loops of them:
    there the threads cost more than they save. On the shared 2-core machine, waiting
    OpenBLAS threads made a 500 x 500 ``eigh`` cost 0.89 s of CPU time instead of 0.04 s,
    and a 392 x 512 SVD 1 s instead of 55 ms (docs/performance.md). The same LAPACK
    routine runs, so results agree to rounding. Large matrix products are left threaded.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def map_threads(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(item) for item in items]``, on as many threads as the process may use cores (at
    most 4), numpy's BLAS on one thread each.

    For independent pieces of a large computation (one class's scatter matrix, one block of
    rows): each piece is computed exactly as on one thread, so the results do not depend on
    the thread count or on scheduling. numpy releases the GIL in its array loops and BLAS
    calls, so a quiet 2-core machine runs two pieces at once; on a loaded one the threads wait
    for a core instead of spinning as BLAS's own threads do (docs/performance.md).
    """
    work = list(items)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    workers = min(4, cores, len(work))
    with one_blas_thread():
        if workers <= 1:
            return [fn(item) for item in work]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, work))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch's CPU ops on one thread inside the block (the previous count is restored after).

    For loops of many small operations: decoding and perturbing a batch (a 28 x 28 rotation
    grid, a few hundred images' grid sample) and the MLP probe's optimiser steps (a 256-row
    batch through a 128-unit layer). There waking torch's second OpenMP thread costs more
    than it saves: beside onnxruntime's own threads a rotated-MNIST pass took 2-3x the CPU
    time with two (``benchmarks/cold_extract.py``), and on the loaded 2-core machine an MLP
    fit of 20,000 rows took 19.8 s instead of 3.5 s. Each output element is computed by one
    thread either way, so the numbers are the same (checked bit for bit for the MLP probe).
    """
    import torch

    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
