"""The int8 GEMM on AMX tiles (kernels.amx) against VNNI (kernels.igemm) and float32 BLAS.

    python benchmarks/amx_gemm.py [--repeat 31] [--density 0.2]

For the full-size Spikformer-DVS, every synaptic layer's GEMM shape as benchmarks/int_gemm.py
lists them (SPS0-3, RPE, q, fc1, fc2; per step, and T = 16 steps stacked for the layers the
offline engine batches), on one thread, three ways, interleaved, median of ``--repeat``:

- AMX: :func:`eventformer.kernels.amx.amx_gemm` on uint8 rows, int8 weights packed by
  ``pack_amx``, int32 out;
- VNNI: :func:`eventformer.kernels.int_gemm` on the same rows, ``pack_igemm(W, int8)``;
- float32 BLAS: ``np.matmul`` on the same rows as float32 (exact here: every sum stays below
  2^24), BLAS pinned to one thread; the GEMM alone, without the cast the layers add.

Rows are random spikes (0/1) at ``--density``; weights random int8. The three results are
checked equal before timing. ``VNNI/AMX`` and ``BLAS/AMX`` above 1: AMX is faster. SPS0 runs
in float64 in the engine's int8 mode (its inputs are raw event counts); its shape is timed here
on uint8 rows all the same. Other benchmarks share this machine: the script waits while an
``eventformer bench`` runs, and prints the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.kernels import int_gemm
from eventformer.kernels.amx import AMX, AMX_REASON, amx_gemm, pack_amx
from eventformer.kernels.igemm import VNNI, pack_igemm
from eventformer.layers.synapses import BATCH_ROWS_BELOW
from eventformer.models import SpikformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int_gemm import STEPS, layers_of  # noqa: E402 - the shape list of the int8 GEMM benchmark

NO_BIAS = np.empty(0, np.int32)  # int_gemm's bias argument: none


def model_shapes() -> list:
    """(layer, label, m, k, n) of every synaptic GEMM of the full-size model in int8 mode."""
    shapes = []
    for layer in layers_of(random_model(SpikformerConfig(), seed=0), "int8", False):
        shapes.append((layer.name, "step", layer.rows, layer.k_dim, layer.cout))
        if layer.rows < BATCH_ROWS_BELOW:
            shapes.append((layer.name, f"T={STEPS} batch", STEPS * layer.rows, layer.k_dim,
                           layer.cout))
    return shapes


def wait_for_other_benchmarks(poll_s: float = 10.0) -> None:
    """Block while another ``eventformer bench`` runs: timings taken beside it mean nothing."""
    announced = False
    while True:
        found = subprocess.run(["pgrep", "-f", "eventformer bench"], capture_output=True,
                               text=True).stdout.split()
        if not found:
            return
        if not announced:
            print(f"waiting: eventformer bench runs (pid {', '.join(found)})", flush=True)
            announced = True
        time.sleep(poll_s)


def _median_ms(fns: dict, repeat: int) -> dict:
    """Interleaved: each round calls every function once; the median per function, in ms."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=31, help="timed rounds per shape (default 31)")
    ap.add_argument("--density", type=float, default=0.2,
                    help="fraction of rows' entries that are 1 (default 0.2)")
    args = ap.parse_args()
    if args.repeat < 1 or not 0 <= args.density <= 1:
        ap.error("--repeat must be at least 1 and --density within [0, 1]")
    if not AMX:
        sys.exit(f"no AMX here: {AMX_REASON}")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    wait_for_other_benchmarks()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} on {os.cpu_count()} cores; 1 thread; "
          f"AVX512-VNNI: {VNNI}; AMX: {AMX}; spike density {args.density}")
    print(f"{'layer':28s} {'shape':>11s} {'m x k x n':>17s} {'AMX ms':>8s} {'VNNI ms':>8s} "
          f"{'BLAS ms':>8s} {'VNNI/AMX':>9s} {'BLAS/AMX':>9s} {'AMX GMAC/s':>10s}")
    rng = np.random.default_rng(0)
    for name, label, m, k, n in model_shapes():
        rows = (rng.random((m, k)) < args.density).astype(np.uint8)
        weight = rng.integers(-127, 128, (k, n))
        packed_amx, packed_vnni = pack_amx(weight), pack_igemm(weight, np.int8)
        rows_f, weight_f = rows.astype(np.float32), weight.astype(np.float32)
        outs = {kind: np.empty((m, n), np.int32) for kind in ("amx", "vnni")}
        out_f = np.empty((m, n), np.float32)
        fns = {"amx": lambda: amx_gemm(rows, packed_amx, outs["amx"]),
               "vnni": lambda: int_gemm(rows, packed_vnni, outs["vnni"], NO_BIAS),
               "blas": lambda: np.matmul(rows_f, weight_f, out=out_f)}
        for fn in fns.values():
            fn()  # warm-up: compile, fault in the buffers
        if not (np.array_equal(outs["amx"], outs["vnni"])
                and np.array_equal(outs["amx"], out_f.astype(np.int32))):
            sys.exit(f"{name} {m}x{k}x{n}: AMX, VNNI and BLAS disagree")
        ms = _median_ms(fns, args.repeat)
        print(f"{name:28s} {label:>11s} {f'{m}x{k}x{n}':>17s} {ms['amx']:8.3f} "
              f"{ms['vnni']:8.3f} {ms['blas']:8.3f} {ms['vnni'] / ms['amx']:9.2f} "
              f"{ms['blas'] / ms['amx']:9.2f} {m * k * n / ms['amx'] / 1e6:10.1f}", flush=True)


if __name__ == "__main__":
    main()
