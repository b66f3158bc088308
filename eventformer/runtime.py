"""Process-wide runtime settings the engine depends on for speed.

OpenBLAS's own threads make the engine's many small per-step GEMMs up to ten times slower on
2-core machines (measured: a 256x1152x256 sgemm took 1.6 ms on one thread and 38 ms on two,
because its worker threads spin against the engine's Numba kernels). The engine therefore runs
BLAS on one thread; set EVENTFORMER_BLAS_THREADS to override.
"""

from __future__ import annotations

import os

_done = False


def limit_blas_threads() -> None:
    """Pin BLAS to EVENTFORMER_BLAS_THREADS (default 1) threads, once per process."""
    global _done
    if _done:
        return
    _done = True
    want = int(os.environ.get("EVENTFORMER_BLAS_THREADS", "1"))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    threadpool_limits(limits=want, user_api="blas")
