"""How many threads numpy's BLAS/LAPACK may use for small dense problems."""
from __future__ import annotations

from typing import Any


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
