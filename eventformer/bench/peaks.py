"""Each synaptic kernel's peak on this machine: what ``bench --profile`` holds the engine against.

Three access patterns make a synaptic current, and each has its own best rate here:

- **scatter** (input-stationary): one event adds its weight rows into scattered output rows,
  ``out[o:o+C] += w[r:r+C]`` (:mod:`.roofline`'s bare loop, one thread, at the model's widths);
- **gather** (output-stationary): one output site sums the weight rows of its active inputs in an
  accumulator and stores it once (:func:`_gather_rows` below: a bare loop over precomputed row
  lists, no decoding, one thread, half of the inputs active, at the gather layers' widths);
- **GEMM**: each GEMM shape's own layer product (``_gemm``: float BLAS through ``runtime.gemm``,
  or in an integer mode the integer GEMM (VNNI or AVX2); rows split over the engine's threads,
  as the layers run it) on a step's rows of spikes, in the GEMM's dtype.

The scatter and gather loops run in the arithmetic's own types (float32 or float64 weights and
currents; int8 or int16 weights into int32 currents), one weight-row add of C channels counting
C accumulates, as the engine's counters book them (SPEC §5). They are bare loops, not the
engine's kernels: a kernel that vectorises better than the loop (int8 into int16 lanes, say) can
exceed its "peak"; the profile prints the ratio and says so.
"""

from __future__ import annotations

import time

import numpy as np

from ..jit import kernel
from ..runtime import engine_threads, limit_blas_threads
from .roofline import _scatter_rows

# (weight dtype, current dtype) of the event-driven paths, by the engine's arithmetic
EVENT_DTYPES = {"float32": (np.float32, np.float32), "float64": (np.float64, np.float64),
                "int16": (np.int16, np.int32), "int8": (np.int8, np.int32)}
MIN_SECONDS = 0.05  # each measurement repeats its call until at least this long (best kept)


@kernel
def _gather_rows(rows, starts, weight, out):
    """For each output site o: ``out[o] = sum of weight[rows[starts[o]:starts[o+1]]]``."""
    cout = weight.shape[1]
    acc = np.zeros(cout, out.dtype)
    for o in range(starts.shape[0] - 1):
        acc[:] = 0
        for e in range(starts[o], starts[o + 1]):
            w = weight[rows[e]]
            for c in range(cout):
                acc[c] += w[c]
        base = o * cout
        for c in range(cout):
            out[base + c] = acc[c]


def _best_rate(call, work: float, repeats: int = 3) -> float:
    """``work`` per second of ``call`` at its best, after one warm-up call."""
    call()
    best = float("inf")
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while True:
            call()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= MIN_SECONDS:
                break
        best = min(best, elapsed / n)
    return work / best


def _weights(rng, shape, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-100, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def scatter_peak(cout: int, arithmetic: str = "float32", adds: int = 4_000_000) -> float:
    """Accumulates/s of the bare scatter at row width ``cout`` (one thread)."""
    wdt, odt = EVENT_DTYPES[arithmetic]
    rng = np.random.default_rng(0)
    n_rows, n_out = 288, max(16, 262_144 // cout)  # a 1 MB float32 output map
    events = max(1000, adds // cout)
    weight = _weights(rng, (n_rows, cout), wdt)
    out = np.zeros(n_out * cout, odt)
    rows = rng.integers(0, n_rows, events).astype(np.int32)
    targets = np.sort(rng.integers(0, n_out, events)).astype(np.int32)
    return _best_rate(lambda: _scatter_rows(rows, targets, weight, out), events * cout)


def gather_peak(cin: int, cout: int, arithmetic: str = "float32", k: int = 3, side: int = 32,
                density: float = 0.5) -> float:
    """Accumulates/s of the bare output-stationary gather of a k x k conv with ``cin`` input
    channels, ``density`` of the inputs active (one thread)."""
    wdt, odt = EVENT_DTYPES[arithmetic]
    rng = np.random.default_rng(0)
    fan_in = k * k * cin
    weight = _weights(rng, (fan_in, cout), wdt)
    per_site = rng.binomial(fan_in, density, side * side)
    starts = np.zeros(side * side + 1, np.int64)
    np.cumsum(per_site, out=starts[1:])
    rows = np.concatenate([np.sort(rng.choice(fan_in, n, replace=False)) for n in per_site]
                          ).astype(np.int32)
    out = np.zeros(side * side * cout, odt)
    return _best_rate(lambda: _gather_rows(rows, starts, weight, out), rows.shape[0] * cout)


def layer_gemm_peak(layer) -> float:
    """Multiply-accumulates/s of ``layer``'s own dense product (its ``_gemm``: float BLAS, or
    in an integer mode the integer GEMM where the layer uses it) on one step's rows of spikes,
    on the engine's threads."""
    rng = np.random.default_rng(0)
    rows = (rng.random((layer.rows, layer.k_dim)) < 0.5).astype(layer.gemm_dtype)
    out = np.empty((layer.rows, layer.cout), layer.current.dtype)
    return _best_rate(lambda: layer._gemm(rows, out), float(layer.rows) * layer.k_dim * layer.cout)


def kernel_peaks(engine, arithmetic: str | None = None) -> dict:
    """The scatter, gather and GEMM peaks for ``engine``'s layers and arithmetic:
    ``{"scatter": {...}, "gather": {...}, "gemm": {...}}``, each with ``ops_per_s`` (the best
    over the model's shapes), ``unit``, ``threads`` and what it was measured on."""
    arithmetic = arithmetic or engine.arithmetic
    limit_blas_threads()  # as the engine runs BLAS: one thread, rows split by runtime.gemm
    layers = list(engine.layers)
    widths = sorted({int(layer.cout) for layer in layers if hasattr(layer, "cout")})
    # a gathering layer's (Cin, Cout, kernel side): linear layers gather as 1x1 convolutions
    gathers = sorted({(int(layer.cin), int(layer.cout), int(layer._gather_shape[3]))
                      for layer in layers if getattr(layer, "can_gather", False)})
    # one layer per GEMM shape and dtype, timed through its own product
    shapes = {}
    for layer in layers:
        if hasattr(layer, "gemm_weight") and hasattr(layer, "k_dim"):
            key = (int(layer.rows), int(layer.k_dim), int(layer.cout),
                   np.dtype(layer.gemm_dtype).name)
            shapes.setdefault(key, layer)
    out = {}
    if widths:
        by = {c: scatter_peak(c, arithmetic) for c in widths}
        out["scatter"] = {"ops_per_s": max(by.values()), "unit": "AC", "threads": 1,
                          "by_width": by, "measured": "bare row adds at scattered outputs"}
    if gathers:
        by = {f"{k}x{k}x{cin}->{cout}": gather_peak(cin, cout, arithmetic, k)
              for cin, cout, k in gathers}
        out["gather"] = {"ops_per_s": max(by.values()), "unit": "AC", "threads": 1,
                         "by_shape": by, "measured": "bare output-stationary row sums, 50% "
                                                     "of inputs active"}
    if shapes:
        by = {f"{m}x{k}x{n} {dt}": layer_gemm_peak(layer)
              for (m, k, n, dt), layer in sorted(shapes.items(), key=lambda kv: kv[0])}
        out["gemm"] = {"ops_per_s": max(by.values()), "unit": "MAC",
                       "threads": engine_threads(), "by_shape": by,
                       "measured": "the layers' own GEMM (float BLAS, or the integer GEMM) at "
                                   "the model's GEMM shapes"}
    return out
