"""Scatter-add roofline: how fast this machine adds weight rows into output rows at all.

The event-driven kernels' inner loop is ``out[o:o+C] += w[r:r+C]`` at scattered o. Timing that
loop alone, with random rows and no decoding, gives the accumulates per second the engine can
reach at best on this machine; the bench prints achieved rates beside it. Wider rows add faster
(measured on the 2-core Zen 4: 5.9 G/s at 64 floats, 9.5 G/s at 256), so the roofline is taken at
every row width the model's sparse layers use and the best is kept. One thread: the engine's
scatter kernels run on one.
"""

from __future__ import annotations

import time

import numpy as np

from ..jit import kernel


@kernel
def _scatter_rows(rows, targets, weight, out):
    cout = weight.shape[1]
    for e in range(rows.shape[0]):
        w = weight[rows[e]]
        o = out[targets[e] * cout:(targets[e] + 1) * cout]
        for c in range(cout):
            o[c] += w[c]


def scatter_add_roofline(cout: int = 64, n_out: int = 4096, n_rows: int = 288,
                         events: int = 200_000, repeats: int = 5) -> float:
    """Accumulates per second of a bare scatter-add (best of ``repeats``)."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n_rows, cout)).astype(np.float32)
    out = np.zeros(n_out * cout, np.float32)
    rows = rng.integers(0, n_rows, events).astype(np.int32)
    targets = np.sort(rng.integers(0, n_out, events)).astype(np.int32)
    _scatter_rows(rows[:10], targets[:10], weight, out)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _scatter_rows(rows, targets, weight, out)
        best = min(best, time.perf_counter() - start)
    return events * cout / best


def scatter_roofline_by_width(widths=(64, 256, 1024), adds: int = 12_800_000,
                              repeats: int = 5) -> dict[int, float]:
    """:func:`scatter_add_roofline` at each row width: the same number of adds and a 1 MB output
    map (256 K floats, the size of a full-size SPS layer's output) at every width."""
    return {int(c): scatter_add_roofline(cout=int(c), n_out=max(16, 262_144 // int(c)),
                                         events=max(1000, adds // int(c)), repeats=repeats)
            for c in sorted(set(widths))}
