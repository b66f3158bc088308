"""Process-wide runtime settings the engine depends on for speed: BLAS's threads, the engine's
own, and (in a process of the engine's own) Python's garbage collector.

OpenBLAS's own threads make the engine's many small per-step GEMMs up to ten times slower on
2-core machines (measured: a 256x1152x256 sgemm took 1.6 ms on one thread and 38 ms on two,
because its worker threads spin against the engine's Numba kernels). The engine therefore runs
BLAS on one thread; set EVENTFORMER_BLAS_THREADS to override.
"""

from __future__ import annotations

import gc
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

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


def tune_collector() -> None:
    """Tune Python's cyclic garbage collector for a process of the engine's own: the CLI's
    (``eventformer_cli.main.run``; the compile helper forked from it inherits the tuning) and a
    spawned compile helper's. Not done on import: a program that imports the engine keeps its
    own collector settings.

    Everything imported by now (Numba, numpy, h5py, the engine) lives as long as the process:
    frozen, no sweep walks it again. A user's first run compiles the engine's kernels, and
    Numba's compiler allocates millions of short-lived containers: a young sweep every 10000
    new ones instead of 700 (the default) leaves far fewer of them to survive into the older
    generations, whose sweeps walk everything. In one process compiling the full-size model's
    kernels the collector took 1.0-1.26 s of 8-9.6 s (timed through ``gc.callbacks``), and
    0.27-0.44 s tuned, for 2-5% more peak memory; ``benchmarks/cold_start.py`` shows the
    whole effect on a first run.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


# --- the engine's own threads -------------------------------------------------------------------
# BLAS stays single-threaded (above); large GEMMs are instead split by rows over the engine's
# threads, which costs one hand-off per call and no spinning between calls.

_pool = None
_threads = None
PARALLEL_GEMM_MIN_MACS = 2_000_000  # below this the hand-off costs more than it saves


def engine_threads() -> int:
    """Threads the engine uses: EVENTFORMER_THREADS, else every core (at most 8)."""
    global _threads
    if _threads is None:
        env = os.environ.get("EVENTFORMER_THREADS")
        _threads = max(1, int(env)) if env else max(1, min(os.cpu_count() or 1, 8))
    return _threads


def set_engine_threads(n: int) -> None:
    global _threads, _pool
    _threads = max(1, int(n))
    if _pool is not None:
        _pool.shutdown(wait=False)
        _pool = None


def _forget_pool() -> None:
    # a forked child (the first run's compile helper) has none of the pool's threads: work
    # handed to the copied pool would wait for ever, so the child starts a pool of its own
    global _pool
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)

_in_part = threading.local()


def in_part() -> bool:
    """Whether this thread is running a part of :func:`run_parts` (then work it hands on runs
    here, serially: the engine's threads are all taken)."""
    return getattr(_in_part, "on", False)


def _as_part(part, i):
    _in_part.on = True
    try:
        part(i)
    finally:
        _in_part.on = False


def run_parts(part, parts: int) -> None:
    """Call ``part(i)`` for i in range(parts): 1..parts-1 on the pool, 0 in the caller.

    The parts must touch disjoint output (the kernels are nogil, so they really run at once).
    Called from inside a part (layers run at once, each of which would split itself), the parts
    run one after another on the calling thread: a pool thread waiting on the pool would wait
    for ever.
    """
    if parts <= 1 or in_part():
        for i in range(parts):
            part(i)
        return
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=max(1, engine_threads() - 1),
                                   thread_name_prefix="eventformer")
    futures = [_pool.submit(_as_part, part, i) for i in range(1, parts)]
    _as_part(part, 0)
    for f in futures:
        f.result()


def run_dynamic(part, parts: int) -> None:
    """Call ``part(i)`` for i in range(parts), each thread taking the next i as it finishes
    one: parts of unequal cost even out over the threads (a static split waits on the thread
    whose share turned out dearer). As :func:`run_parts`, serial inside a part."""
    threads = min(engine_threads(), parts)
    if threads <= 1 or in_part():
        for i in range(parts):
            part(i)
        return
    import itertools

    order = itertools.count()  # next() on it is atomic under the GIL

    def take(_):
        for i in order:
            if i >= parts:
                return
            part(i)

    run_parts(take, threads)


def run_pipeline(stages: list, edges: list[int], threads: int) -> None:
    """Run a chain of stages over a sample's steps on ``threads`` threads at once (a wavefront).

    ``stages[s](a, b)`` runs stage s on steps a..b-1 (``edges`` cuts the steps into chunks). It
    may start on a chunk once stage s-1 has finished that chunk and stage s its chunk before,
    so every stage still sees its steps in time order and its results are those of running the
    stages one after another: only different stages' chunks overlap. Each thread takes the ready
    chunk of the earliest stage (the one with the most work still behind it); inside a stage the
    engine's other splits run serially (:func:`in_part`), since the threads are all taken.

    Why: a layer split in bands over two threads gains little when its steps are small (a
    block's layers are tens of microseconds a step), while different layers at different steps
    are independent work of any size. The first exception a stage raises is re-raised here once
    every thread has stopped."""
    n, chunks = len(stages), len(edges) - 1
    done = [0] * n  # chunks finished, per stage
    busy = [False] * n
    failed: list[BaseException] = []
    ready = threading.Condition()

    def take():
        """The stage to run next and its chunk, or None when the chain is finished."""
        with ready:
            while True:
                if failed or done[-1] == chunks:
                    return None
                for s in range(n):
                    c = done[s]
                    if not busy[s] and c < chunks and (s == 0 or done[s - 1] > c):
                        busy[s] = True
                        return s, c
                ready.wait()

    def worker(_):
        while (job := take()) is not None:
            s, c = job
            try:
                stages[s](edges[c], edges[c + 1])
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                with ready:
                    failed.append(e)
                    ready.notify_all()
                return
            with ready:
                done[s] += 1
                busy[s] = False
                ready.notify_all()

    run_parts(worker, max(1, min(threads, engine_threads())))
    if failed:
        raise failed[0]


def split(n: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` near-equal ranges over ``n`` items."""
    return [n * i // parts for i in range(parts + 1)]


def gemm(a, b, out) -> None:
    """``out = a @ b``; row blocks on the engine's threads when the product is large."""
    import numpy as np

    threads = engine_threads()
    rows = a.shape[0]
    if threads == 1 or in_part() or rows < 2 * threads or rows * a.shape[1] * b.shape[1] < \
            PARALLEL_GEMM_MIN_MACS:
        np.matmul(a, b, out=out)
        return
    bounds = split(rows, threads)
    run_parts(lambda i: np.matmul(a[bounds[i]:bounds[i + 1]], b,
                                  out=out[bounds[i]:bounds[i + 1]]), threads)


# --- memory the kernels stream through ---------------------------------------------------------

CACHE_LINE = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a cache line (64 bytes).

    numpy's allocator aligns to 16 bytes, so a row read with 64-byte vector loads (a weight row
    of an event, a membrane block) could straddle two cache lines at every load: the int8
    gather of SPS2, SPS3 and RPE ran 1.3-1.4x slower on weights 16 or 48 bytes past a line
    than on weights starting on one, and which one a run got was chance."""
    import numpy as np

    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + CACHE_LINE, np.uint8)
    skip = -raw.ctypes.data % CACHE_LINE
    return raw[skip:skip + size].view(dtype).reshape(shape)


def cache_aligned(a, dtype=None) -> np.ndarray:
    """A C-contiguous copy of ``a`` (as ``dtype``) starting on a cache line
    (:func:`aligned_empty`)."""
    import numpy as np

    a = np.asarray(a, dtype)
    out = aligned_empty(a.shape, a.dtype)
    out[...] = a
    return out


def kernels_cached(arithmetic: str = "float32") -> bool:
    """Whether Numba's on-disk cache already holds the engine's kernels for ``arithmetic``
    (float32, float64, int16, int8) on this machine, so that start-up is a load, not a compile.

    Probed through the LIF kernel of that arithmetic (the step into flags, of which the other
    steps are made), which every Spikformer run calls: its cache index (Numba's, beside the
    sources or under NUMBA_CACHE_DIR; one index holds every LIF rule's entries) must hold a
    signature of the arithmetic's dtype compiled for this CPU. A cache that holds it may
    still lack a kernel (or a LIF rule) no run has used before; that one compiles on its first
    call."""
    try:
        from .kernels import lif_fixed_kernels, lif_kernels

        fixed = arithmetic in ("int16", "int8")
        rule = lif_fixed_kernels(True, True, 1) if fixed else lif_kernels(True, True)
        want = "int32" if fixed else arithmetic
        here = rule.step_flags.targetctx.codegen().magic_tuple()
        # an index key is (argument types, this machine's CPU and features, code hash and
        # closure cells); the first argument is the membrane array, of the arithmetic's dtype
        return any(key[1] == here and str(getattr(key[0][0], "dtype", "")) == want
                   for key in rule.step_flags._cache._cache_file._load_index())
    except (AttributeError, OSError, TypeError, ValueError, EOFError, IndexError):
        return True  # unknown: say nothing rather than something wrong


def start_kernels() -> None:
    """Numba's one-time set-up in this process (typing and target contexts, LLVM's JIT: about
    half a second), done now by calling one small kernel (the residual merge, which every
    Spikformer run calls; loaded from the cache, compiled if absent), so that it is not booked
    to the first input's time when kernels load lazily."""
    import numpy as np

    from .kernels import merge_add

    one = np.zeros(1, np.int32)
    merge_add(one, one + 1, one + 1, one + 1)
