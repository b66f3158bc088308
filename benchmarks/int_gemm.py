"""The integer modes' dense step: the integer GEMM (kernels.igemm, VNNI) against float BLAS.

    python benchmarks/int_gemm.py [--threads 1,2] [--repeat 9] [--no-steps] [--crossover]

For the full-size Spikformer-DVS (random weights quantised per output channel at load, as
``--dtype int8`` / ``int16`` does), every synaptic layer's GEMM shape (SPS0-3, RPE, q, fc1, fc2):
per step (rows = the layer's output pixels or tokens), and for the layers the offline engine
batches (fewer rows than ``BATCH_ROWS_BELOW``) the T = 16 steps stacked into one GEMM. Each shape
is timed two ways, interleaved, median of ``--repeat``:

- float: what the layer did before the integer GEMM: float BLAS on float rows (float32, or
  float64 where the layer's worst-case sum can pass 2^24), through ``runtime.gemm``, then the
  cast to int32;
- int: ``kernels.int_gemm`` on uint8 rows (int8) or int16 rows (int16), rows split over the
  engine's threads as ``runtime.gemm`` splits, int32 out.

``float/int`` above 1: the integer GEMM is faster. Then (unless ``--no-steps``) the whole dense
step of each layer (densify + im2col or scatter into rows, GEMM, bias) through the engine's own
layer objects, built with and without the integer GEMM, on random inputs at 20% density.
BLAS runs on one thread, as in the engine; the machine's load is printed first.

``--crossover``: the integer modes' gather against their dense step on the integer GEMM, per
gather-capable layer (SPS1-3, RPE, q, fc1) at random i.i.d. input densities: where, if anywhere,
the dense step overtakes the gather (``GATHER_BAND`` in eventformer/layers/base.py). Whole
synaptic steps of the engine's layers, median ms, gather/dense above 1: dense faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from eventformer.bench.calibrate import random_model
from eventformer.kernels.igemm import AVX2_DOT, INTEGER_DOT, VNNI
from eventformer.layers import PathPolicy, synapses
from eventformer.layers.synapses import BATCH_ROWS_BELOW
from eventformer.models import Spikformer, SpikformerConfig
from eventformer.runtime import gemm, limit_blas_threads, set_engine_threads

STEPS = 16


def layers_of(model, dtype: str, integer: bool) -> list:
    """The synaptic layers of interest, built with (``integer``) or without the integer GEMM."""
    before = synapses.INT_GEMM
    synapses.INT_GEMM = integer  # without VNNI: the kernel's portable form
    try:
        engine = Spikformer(model, dtype=dtype, policy=PathPolicy(mode="dense"))
    finally:
        synapses.INT_GEMM = before
    block = engine.blocks[0]
    return engine.sps + [engine.rpe, block.attn.q, block.fc1, block.fc2]


def _median_ms(fns: dict, repeat: int) -> dict:
    """Interleaved: each round calls every function once; the median per function, in ms."""
    for fn in fns.values():
        fn()  # warm-up: compile, allocate
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def gemm_cases(float_layer, int_layer, rng, density=0.2) -> list:
    """(label, float call, int call) for the layer's per-step GEMM and, if batched, T steps."""
    out = []
    sizes = [("step", float_layer.rows)]
    if float_layer.rows < BATCH_ROWS_BELOW:
        sizes.append((f"T={STEPS} batch", STEPS * float_layer.rows))
    k, n = float_layer.k_dim, float_layer.cout
    for label, m in sizes:
        spikes = rng.random((m, k)) < density
        f_rows = spikes.astype(float_layer.gemm_dtype)
        f_out = np.empty((m, n), float_layer.gemm_dtype)
        cur = np.empty((m, n), np.int32)

        def float_gemm(r=f_rows, w=float_layer.gemm_weight, o=f_out, c=cur):
            gemm(r, w, o)
            np.copyto(c, o, casting="unsafe")

        if int_layer.gemm_dtype.kind == "f":
            int_gemm = None
        else:
            i_rows = spikes.astype(int_layer.gemm_dtype)
            i_out = np.empty((m, n), np.int32)

            def int_gemm(r=i_rows, w=int_layer.gemm_weight, o=i_out):
                int_layer._gemm(r, o)

        out.append((label, m, float_gemm, int_gemm, f_rows.dtype, None if int_gemm is None
                    else i_rows.dtype))
    return out


def gemm_table(model, threads: int, repeat: int) -> None:
    print(f"\nGEMM alone, {threads} engine thread(s): median ms (float BLAS + cast | integer "
          "GEMM), float/int")
    print(f"{'mode':5s} {'layer':28s} {'shape':>11s} {'m x k x n':>18s} {'float':>8s} "
          f"{'':8s} {'int':>8s} {'':6s} {'float/int':>9s}")
    rng = np.random.default_rng(0)
    for dtype in ("int8", "int16"):
        pairs = zip(layers_of(model, dtype, False), layers_of(model, dtype, True))
        for f_layer, i_layer in pairs:
            for label, m, f_fn, i_fn, fdt, idt in gemm_cases(f_layer, i_layer, rng):
                fns = {"float": f_fn} if i_fn is None else {"float": f_fn, "int": i_fn}
                ms = _median_ms(fns, repeat)
                shape = f"{m}x{f_layer.k_dim}x{f_layer.cout}"
                if i_fn is None:
                    int_cell, ratio = f"{'-':>8s} {'float':6s}", f"{'-':>9s}"
                else:
                    int_cell = f"{ms['int']:8.3f} {np.dtype(idt).name:6s}"
                    ratio = f"{ms['float'] / ms['int']:9.2f}"
                print(f"{dtype:5s} {f_layer.name:28s} {label:>11s} {shape:>18s} "
                      f"{ms['float']:8.3f} {np.dtype(fdt).name:8s} {int_cell} {ratio}",
                      flush=True)


def step_table(model, threads: int, repeat: int) -> None:
    print(f"\nwhole dense step (rows + GEMM + bias), {threads} engine thread(s), 20% input "
          "density: median ms, float BLAS layer | integer GEMM layer")
    rng = np.random.default_rng(1)
    for dtype in ("int8", "int16"):
        for f_layer, i_layer in zip(layers_of(model, dtype, False), layers_of(model, dtype, True)):
            n = int(0.2 * f_layer.in_sites)
            idx = np.sort(rng.choice(f_layer.in_sites, n, replace=False)).astype(np.int32)
            cnt = np.ones(n, np.int32)
            ms = _median_ms({"float": lambda: f_layer.synapse(idx, cnt),
                             "int": lambda: i_layer.synapse(idx, cnt)}, repeat)
            print(f"{dtype:5s} {f_layer.name:28s} {ms['float']:8.3f} "
                  f"{np.dtype(f_layer.gemm_dtype).name:8s} {ms['int']:8.3f} "
                  f"{np.dtype(i_layer.gemm_dtype).name:8s} {ms['float'] / ms['int']:6.2f}x",
                  flush=True)


CROSS_DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8)


def crossover_table(model, threads: int, repeat: int) -> None:
    print(f"\ngather vs dense step on the integer GEMM, {threads} engine thread(s), random "
          "inputs: median ms gather/dense [gather/dense] per input density")
    print(f"{'mode':5s} {'layer':28s} " + " ".join(f"{d:>20.2f}" for d in CROSS_DENSITIES))
    rng = np.random.default_rng(2)
    for dtype in ("int8", "int16"):
        for layer in layers_of(model, dtype, True):
            if not layer.can_gather:
                continue
            cells = []
            for d in CROSS_DENSITIES:
                n = int(d * layer.in_sites)
                idx = np.sort(rng.choice(layer.in_sites, n, replace=False)).astype(np.int32)
                cnt = np.ones(n, np.int32)
                gather, dense = PathPolicy(mode="gather"), PathPolicy(mode="dense")

                def run(policy, i=idx, c=cnt):
                    layer.policy = policy
                    layer.synapse(i, c)

                ms = _median_ms({"gather": lambda: run(gather), "dense": lambda: run(dense)},
                                repeat)
                cells.append(f"{ms['gather']:6.3f}/{ms['dense']:6.3f}"
                             f"[{ms['gather'] / ms['dense']:4.2f}]")
            print(f"{dtype:5s} {layer.name:28s} " + " ".join(f"{c:>20s}" for c in cells),
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2",
                    help="engine thread counts to measure, comma-separated (default 1,2)")
    ap.add_argument("--repeat", type=int, default=9, help="timed rounds per case (default 9)")
    ap.add_argument("--no-steps", action="store_true", help="skip the whole-dense-step table")
    ap.add_argument("--crossover", action="store_true",
                    help="only the gather-vs-dense table of the integer modes")
    args = ap.parse_args()
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        ap.error(f"--threads takes integers such as 1,2, got {args.threads!r}")
    if args.repeat < 1 or any(t < 1 for t in threads):
        ap.error("--repeat and --threads must be at least 1")
    limit_blas_threads()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on "
          f"{os.cpu_count()} cores; AVX512-VNNI: {VNNI}; AVX2 dot products: {AVX2_DOT}")
    if not INTEGER_DOT:
        print("this CPU has neither AVX512-VNNI nor AVX2: the engine keeps float BLAS; the "
              "integer GEMM below runs its portable form")
        synapses.INT_GEMM = True
    model = random_model(SpikformerConfig(), seed=0)
    for t in threads:
        set_engine_threads(t)
        if args.crossover:
            crossover_table(model, t, args.repeat)
            continue
        gemm_table(model, t, args.repeat)
        if not args.no_steps:
            step_table(model, t, args.repeat)


if __name__ == "__main__":
    main()
